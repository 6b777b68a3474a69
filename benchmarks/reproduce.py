"""Reproduce the FlashAttention paper's GPT-2 experiments and figures, then write a report.

    python -m benchmarks.reproduce OUT_DIR [--only table2,table4,figures] [--budget toy|small|paper]
                                   [--set data.num_proc=16 ...] [--steps-per-run N]

- table2: GPT-2 small at context 1024 trained by train.py with transformers' GPT-2 (eager, the
  paper's HuggingFace baseline), standard attention eager and compiled (the "Megatron-LM" role:
  standard attention with its softmax fused by torch.compile), SDPA, and our flash kernel eager
  and compiled; same data, batch, schedule and seed (conf/experiment/table2*.yaml).
- table4: GPT-2 small with flash at three contexts and standard attention at the first, the same
  tokens per step and steps, on the Gutenberg books, evaluated on the same validation books;
  plus the validation loss at each position of the window (conf/experiment/table4*.yaml).
- figures: the paper's Figure 3 (fwd+bwd runtime and memory of flash and standard attention
  against sequence length, 128 to 65536, OOM marked), from benchmarks/bench_attention.py.

Finished runs are reused (a run directory whose metrics reach its last step); a run cut short
(e.g. by --steps-per-run on a time-limited machine) resumes from its checkpoint on the next call.
Budgets: toy (CPU, seconds: sdpa stands in for flash without a GPU), small (one GPU, minutes),
paper (the paper's scale: days on several GPUs). OUT_DIR/report.md gets the tables beside the
paper's numbers and the figures, with device, date and commands.
"""

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.compare_runs import compare, load_dir  # noqa: E402

TABLE2 = [  # name, overrides; the first is the baseline
    ("hf-eager", ["model.impl=hf", "attention=naive", "train.compile=false"]),
    ("standard-eager", ["attention=naive", "train.compile=false"]),
    ("standard-compiled", ["attention=naive", "train.compile=auto"]),
    ("sdpa", ["attention=sdpa"]),
    ("flash-eager", ["attention=flash", "train.compile=false"]),
    ("flash", ["attention=flash"]),
]
CONTEXTS = {"toy": (64, 128, 256), "small": (1024, 2048, 4096), "paper": (1024, 2048, 4096)}

# Quoted from the paper (Dao et al. 2022, FlashAttention, Tables 2 and 4; 8 x A100, OpenWebText).
PAPER_TABLE2 = """| model | implementation | OpenWebText ppl | training time (speedup) |
|---|---|---|---|
| GPT-2 small | HuggingFace | 18.2 | 9.5 days (1.0x) |
| GPT-2 small | Megatron-LM | 18.2 | 4.7 days (2.0x) |
| GPT-2 small | FlashAttention | 18.2 | 2.7 days (3.5x) |
| GPT-2 medium | HuggingFace | 14.2 | 21.0 days (1.0x) |
| GPT-2 medium | Megatron-LM | 14.3 | 11.5 days (1.8x) |
| GPT-2 medium | FlashAttention | 14.3 | 6.9 days (3.0x) |
"""
PAPER_TABLE4 = """| model | context | OpenWebText ppl | training time (speedup) |
|---|---|---|---|
| GPT-2 small, Megatron-LM | 1K | 18.2 | 4.7 days (1.0x) |
| GPT-2 small, FlashAttention | 1K | 18.2 | 2.7 days (1.7x) |
| GPT-2 small, FlashAttention | 2K | 17.6 | 3.0 days (1.6x) |
| GPT-2 small, FlashAttention | 4K | 17.5 | 3.6 days (1.3x) |
"""


def table4_runs(budget):
    c = CONTEXTS[budget]
    return [(f"standard-{c[0]}", ["attention=naive", f"context={c[0]}"])] + \
        [(f"flash-{n}", ["attention=flash", f"context={n}"]) for n in c]


def finished(run_dir):
    """The run's metrics reach its configured last step (with an evaluation there)."""
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return any(r["step"] == cfg["train"]["max_steps"] and "val/loss" in r for r in rows)


def train(run_dir, experiment, name, overrides, extra, steps_per_run):
    """One train.py run (resumed when a checkpoint is there); returns its status line."""
    if finished(run_dir):
        return f"{name}: reused {run_dir}"
    on_gpu = torch.cuda.is_available()
    if not on_gpu and "attention=flash" in overrides:  # the interpreter would take hours
        overrides = [o.replace("attention=flash", "attention=sdpa") for o in overrides]
        name += " (sdpa standing in for flash: no GPU)"
    cmd = [sys.executable, "train.py", f"experiment={experiment}", *overrides, *extra,
           f"hydra.run.dir={run_dir}", f"wandb.name={run_dir.parent.name}-{run_dir.name}"]
    if (run_dir / "ckpt.pt").is_file():
        cmd.append("train.resume=true")
    if steps_per_run:
        cmd.append(f"train.steps_per_run={steps_per_run}")
    print("$", " ".join(cmd[1:]), flush=True)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    (run_dir / "train.log").write_text(r.stdout + r.stderr) if run_dir.is_dir() else None
    if r.returncode != 0:
        raise RuntimeError(f"run {name} failed (exit {r.returncode}); its log: {run_dir / 'train.log'}\n"
                           + r.stderr[-2000:])
    return f"{name}: {'finished' if finished(run_dir) else 'stopped early (resume with the same command)'}"


def run_table(out, table, runs, budget, extra, steps_per_run):
    experiment = table if budget == "small" else f"{table}-{budget}"
    status = [train(out / "runs" / table / name, experiment, name, o, extra, steps_per_run) for name, o in runs]
    done = [out / "runs" / table / name for name, _ in runs if finished(out / "runs" / table / name)]
    if len(done) < len(runs):
        return status, None
    runs = [load_dir(d) for d in done]
    # The paper's speed is time to a perplexity: here the validation loss every run reaches.
    target = round(max(r["val"][-1]["val/loss"] for r in runs), 3) + 0.0005
    text, rows = compare(runs, target_loss=target, out=out / table)
    return status, (text, rows)


def table4_summary(rows):
    base = rows[0]
    lines = ["| run | context | val ppl | tokens/s | speedup vs " + base["run"] + " | peak GB |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['context']} | {math.exp(r['val_loss']):.2f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {r['peak_mem_gb']:.2f} |")
    return "\n".join(lines) + "\n"


def figures(out, budget):
    """Figure 3: fwd+bwd time and memory, flash vs standard attention, N = 128 ... 65536."""
    if not torch.cuda.is_available():
        return "Figure 3: needs a GPU (skipped).\n"
    fig = out / "figure3"
    seqlens = ",".join(str(2 ** k) for k in range(7, 17 if budget != "toy" else 11))
    cmd = [sys.executable, "benchmarks/bench_attention.py", "--providers", "flash,sdpa-flash,naive", "--shapes", "64x12",
           "--causal", "1", "--seqlens", seqlens, "--tokens", "65536", "--naive-max-n", "65536", "--out", str(fig)]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    draw_figure3(json.loads((fig / "attention.json").read_text())["rows"], fig / "figure3.png")
    return f"![Figure 3](figure3/figure3.png)\n\nCommand: `python {' '.join(cmd[1:])}`\n"


def draw_figure3(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for prov in dict.fromkeys(r["provider"] for r in rows):
        ok = sorted((r["seqlen"], r["ms_fwd+bwd"], r["peak_mem_mb"]) for r in rows if r["provider"] == prov and "error" not in r)
        oom = sorted(r["seqlen"] for r in rows if r["provider"] == prov and r.get("error") == "OOM")
        for ax, i in ((axes[0], 1), (axes[1], 2)):
            line, = ax.plot([p[0] for p in ok], [p[i] for p in ok], marker="o", label=prov)
            for n in oom:
                ax.annotate("OOM", (n, ax.get_ylim()[1] if ok else 1), color=line.get_color(), fontsize=8, ha="center")
    for ax, label in zip(axes, ("fwd+bwd time (ms)", "memory beyond the inputs (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (batch x length = 65536 tokens, 12 heads, d=64, causal)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--only", default="table2,table4,figures")
    p.add_argument("--budget", choices=("toy", "small", "paper"), default="small")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra train.py overrides for every run")
    p.add_argument("--steps-per-run", type=int, help="stop each run after this many steps (resume on the next call)")
    a = p.parse_args(argv)
    parts = a.only.split(",")
    unknown = set(parts) - {"table2", "table4", "figures"}
    if unknown:
        p.error(f"unknown --only parts {sorted(unknown)}: table2, table4, figures")
    a.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'unknown'})"
    report = [f"# FlashAttention paper reproduction ({a.budget} budget)", "",
              f"{device}, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}. Command: "
              f"`python -m benchmarks.reproduce {' '.join(sys.argv[1:] if argv is None else argv)}`", ""]
    if "table2" in parts:
        status, result = run_table(a.out, "table2", TABLE2, a.budget, a.set, a.steps_per_run)
        report += ["## Table 2: training speed, same model, same curve", "", *[f"- {s}" for s in status], ""]
        if result:
            report += [result[0], "![val ppl](table2/val_ppl.png) ![tokens/s](table2/tokens_per_s.png)", ""]
        report += ["The paper's Table 2 (quoted):", "", PAPER_TABLE2]
    if "table4" in parts:
        status, result = run_table(a.out, "table4", table4_runs(a.budget), a.budget, a.set, a.steps_per_run)
        report += ["## Table 4: longer context, better model", "", *[f"- {s}" for s in status], ""]
        if result:
            report += [table4_summary(result[1]), "![val ppl](table4/val_ppl.png)",
                       "![loss by position](table4/loss_by_position.png)", "", "All runs:", "", result[0]]
        report += ["The paper's Table 4 (quoted):", "", PAPER_TABLE4]
    if "figures" in parts:
        report += ["## Figure 3: runtime and memory against sequence length", "", figures(a.out, a.budget)]
    (a.out / "report.md").write_text("\n".join(report) + "\n")
    print(f"wrote {a.out / 'report.md'}")


if __name__ == "__main__":
    main()
