"""Reproduce the FlashAttention paper's GPT-2 experiments and figures, then write a report.

    python -m benchmarks.reproduce OUT_DIR [--only table2,table2-medium,table4,figures,kernels,sweeps] [--budget toy|small|paper]
                                   [--set data.num_proc=16 ...] [--steps-per-run N]

- table2: GPT-2 small at context 1024 trained by train.py with transformers' GPT-2 (eager, the
  paper's HuggingFace baseline), standard attention eager and compiled (the "Megatron-LM" role:
  standard attention with its softmax fused by torch.compile), SDPA, and our flash kernel eager
  and compiled; same data, batch, schedule and seed (conf/experiment/table2*.yaml).
- table2-medium: the same runs with GPT-2 medium (conf/experiment/table2-medium*.yaml), the
  paper's second model size.
- table4: GPT-2 small with flash at three contexts and standard attention at the first, the same
  tokens per step and steps, on the Gutenberg books, evaluated on the same validation books;
  plus the validation loss at each position of the window (conf/experiment/table4*.yaml).
- figures: the paper's Figure 3 (fwd+bwd runtime and memory of flash and standard attention
  against sequence length, 128 to 65536, OOM marked), from benchmarks/bench_attention.py.
- kernels: the seed lab reports' sequence-length tables (N 512-16384 at 16K tokens a batch, d=64
  and d=128, causal and not: ours, FA1, standard attention, SDPA's FA2 and cuDNN, Flex), and the
  speedup, FA1-vs-FA2 and forward-vs-backward figures drawn from them.
- sweeps: the seed reports' batch, heads, embedding-dim, head-dim, causal, heatmap and
  forward-only sweeps at their settings (--sweeps picks some).

Finished runs are reused (a run directory whose metrics reach its last step); a run cut short
(e.g. by --steps-per-run on a time-limited machine) resumes from its checkpoint on the next call.
Budgets: toy (CPU, seconds: sdpa stands in for flash without a GPU), small (one GPU, minutes),
paper (the paper's scale: days on several GPUs). OUT_DIR/report.md gets the tables beside the
paper's numbers and the figures, with device, date and commands.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import harness, kernel_figures
from benchmarks.compare_runs import _num, compare, load_dir
from benchmarks.harness import ROOT, finished, progress

TABLE2 = [  # name, overrides; the first is the baseline
    ("hf-eager", ["model.impl=hf", "attention=naive", "train.compile=false"]),
    ("standard-eager", ["attention=naive", "train.compile=false"]),
    ("standard-compiled", ["attention=naive", "train.compile=auto"]),
    ("sdpa", ["attention=sdpa"]),
    ("flash-eager", ["attention=flash", "train.compile=false"]),
    ("flash", ["attention=flash"]),
]
# Table 2's model sizes: experiment (conf/experiment/NAME[-BUDGET].yaml) -> the paper's row label.
TABLE2_SIZES = {"table2": "GPT-2 small", "table2-medium": "GPT-2 medium"}
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


def train(run_dir, experiment, overrides, extra=(), steps_per_run=None):
    """One run of a table (harness.train); without a GPU, sdpa stands in for our kernel (the
    interpreter would take hours; config.json says so)."""
    if not torch.cuda.is_available() and "attention=flash" in overrides:
        overrides = [o.replace("attention=flash", "attention=sdpa") for o in overrides]
    harness.train(run_dir, [f"experiment={experiment}", *overrides, *extra], steps_per_run=steps_per_run)


def run_table(out, table, runs, budget, extra, steps_per_run, run=True):
    experiment = table if budget == "small" else f"{table}-{budget}"
    dirs = {name: out / "runs" / table / name for name, _ in runs}
    if run:
        (out / table).mkdir(parents=True, exist_ok=True)
        (out / table / "meta.json").write_text(json.dumps(harness.metadata(), indent=1))
        for name, o in runs:
            train(dirs[name], experiment, o, extra, steps_per_run)
    status = [f"{name}: {progress(d)}" for name, d in dirs.items()]
    done = [d for d in dirs.values() if finished(d)]
    shown = [d for d in dirs.values() if (d / "metrics.jsonl").is_file()]
    if not done:
        return status, None
    # The paper's speed is time to a perplexity: here the validation loss every finished run reaches.
    target = round(round(max(load_dir(d)["val"][-1]["val/loss"] for d in done), 3) + 0.0005, 4)
    text, rows = compare([load_dir(d) for d in shown], target_loss=target, out=out / table)
    meta_file = out / table / "meta.json"
    if meta_file.is_file():
        m = json.loads(meta_file.read_text())
        status.insert(0, f"measured on {m['device']}, {m['date']}, torch {m['torch']}: `{m['command']}`")
    config = load_dir(shown[0])["config"]
    data, model = config["data"], config["model"]
    t = config["train"]
    status.insert(1, f"model: `{model['name']}` ({model['n_layer']} layers, {model['n_embd']} wide, {model['n_head']} heads), "
                     f"context {config['context']}, {t['batch_tokens']:,} tokens a step in micro-batches of "
                     f"{t['micro_batch_tokens']:,}")
    files = data.get("train_files") or data.get("dataset") or "see its config"
    status.insert(2, f"data: `data={data['name']}` ({', '.join(files) if isinstance(files, list) else files}); "
                     "val ppl is on its validation split, not on OpenWebText as in the paper's tables")
    status.append(f"`tokens/s vs {rows[0]['run']}` is the throughput ratio (each run's median logged interval); "
                  f"the time to validation loss {target} also counts how far each run's loss falls per token and its "
                  "first interval; `train time s` excludes evaluation")
    return status, (text, rows)


def elsewhere(out, part, data):
    """Where OUT lacks a part, the other GPU folders' reports that hold it (results/<gpu>/paper):
    one current answer, found from either report."""
    if (out / part / data).is_file():
        return []
    found = [p / part for p in _other_reports(out, part, data)]
    return [f"- measured for another GPU's report: {', '.join(f'[{os.path.relpath(p, out)}]({os.path.relpath(p, out)})' for p in found)}", ""] \
        if found else []


def table2_claims(rows, ours="flash", sdpa="sdpa", megatron="standard-compiled", eager="standard-eager"):
    """Table 2's reading, computed from its rows (compare_runs.summarize's; the first is the
    baseline): throughput ratios with the intervals' noise, the wall time to the common loss and
    why it differs from the throughput ratio, memory, and how closely the curves agree."""
    by = {r["run"]: r for r in rows}
    base = rows[0]
    if ours not in by or not base["tokens_per_s"]:
        return []
    lines = []
    rate = {n: r["tokens_per_s"] / base["tokens_per_s"] for n, r in by.items() if r["tokens_per_s"]}
    lines.append(f"- throughput over {base['run']}: " + ", ".join(f"{n} {rate[n]:.2f}x" for n in by if n in rate and n != base["run"])
                 + f" (the paper's speedups: FlashAttention 3.5x / 3.0x, Megatron-LM 2.0x / 1.8x for small / medium; "
                 f"{megatron} plays Megatron-LM's part)")
    if sdpa in by and by[sdpa]["tokens_per_s"]:
        r, s = by[ours], by[sdpa]
        overlap = r.get("tokens_per_s_p10_p90") and s.get("tokens_per_s_p10_p90") and \
            r["tokens_per_s_p10_p90"][0] <= s["tokens_per_s_p10_p90"][1] and s["tokens_per_s_p10_p90"][0] <= r["tokens_per_s_p10_p90"][1]
        lines.append(f"- {ours} over {sdpa}: {r['tokens_per_s'] / s['tokens_per_s']:.2f}x the tokens/s"
                     + (" (their intervals' 10th-90th percentiles overlap: within this host's noise; benchmarks.train_speed "
                        "interleaves sustained windows for that question)" if overlap else ""))
    timed = [r for r in rows if r.get("time_to_target_s")]
    if base.get("time_to_target_s") and len(timed) > 1:
        lines.append("- wall time to the common validation loss over " + base["run"] + "'s: " + ", ".join(
            f"{r['run']} {base['time_to_target_s'] / r['time_to_target_s']:.2f}x" for r in timed if r is not base)
            + "; it counts each run's first logged interval, which holds compilation and autotuning ("
            + ", ".join(f"{r['run']} {r['first_interval_s']:.0f} s" for r in rows if r.get("first_interval_s") is not None)
            + "), a fixed cost that a run of the paper's length would not notice"
            + ("; it puts the runs in another order than their throughput does" if
               sorted(timed, key=lambda r: r["time_to_target_s"]) != sorted(timed, key=lambda r: -r["tokens_per_s"]) else ""))
    if by[ours].get("peak_mem_gb") and base.get("peak_mem_gb"):
        lines.append(f"- peak memory: {ours} {by[ours]['peak_mem_gb']:.1f} GB against {base['run']} {base['peak_mem_gb']:.1f} GB"
                     + (f" and {eager} {by[eager]['peak_mem_gb']:.1f} GB" if by.get(eager, {}).get("peak_mem_gb") else ""))
    diffs = [r["max_loss_diff"] for r in rows if r is not base and r.get("max_loss_diff") is not None]
    if diffs:
        lines.append(f"- the same curve: every run's train loss within {max(diffs):.3f} of {base['run']}'s at every "
                     f"logged step (same seed, data and schedule), final val loss "
                     f"{harness.span([r['val_loss'] for r in rows if r.get('val_loss') is not None], '{:.3f}')}")
    return lines


def table4_protocols(folder):
    """Table 4 from benchmarks/table4.py's summary.json (the protocols scored on shared targets):
    where and how, both tables, the figure, and each configuration's ratio to its paired 1K run."""
    from benchmarks import table4
    summ = json.loads((folder / "summary.json").read_text())
    m = summ["meta"]
    lines = [f"Measured on {m.get('device', '?')}, {m.get('date', '?')}; {m.get('data', '')}", "",
             *[f"    {c}" for c in m.get("commands", [])], "", table4.table(summ), "", "![Table 4](table4/table4.png)", ""]
    for c in summ["by_config"]:
        if c["ratio_to_baseline"]:
            lines.append(f"- {c['config']}: val ppl {', '.join(f'{v:.2f}' for v in c['val_ppl'])} (seed"
                         f"{'s' if len(c['seeds']) > 1 else ''} {', '.join(map(str, c['seeds']))}); over "
                         f"{c['baseline']} of the same seed and tokens: {table4.paired_ratios(c)}")
        elif c["baseline"]:
            lines.append(f"- {c['config']}: val ppl {', '.join(f'{v:.2f}' for v in c['val_ppl'])}; not paired yet "
                         f"({c['baseline']} of the same seed and tokens not run)")
    lines += [f"- {n}" for n in m.get("notes", [])]
    return "\n".join(lines) + "\n"


def table4_summary(rows):
    base = rows[0]
    lines = ["| run | context | tokens trained | val ppl | tokens/s | tokens/s vs " + base["run"] + " | peak GB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['context']} | {r['tokens']:,} | {math.exp(r['val_loss']):.2f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {_num(r['peak_mem_gb'], '{:.2f}')} |")
    return "\n".join(lines) + "\n"


BENCH = [sys.executable, "-m", "benchmarks.bench_attention"]
# As the paper ran it: non-causal, dropout 0.1, a padding mask; the block-sparse line beside.
FIGURE3 = ["--providers", "flash,flash-butterfly,sdpa-flash,sdpa-cudnn,sdpa-efficient,naive", "--shapes", "64x12",
           "--causal", "0", "--dropout", "0.1", "--padding", "--tokens", "65536", "--naive-max-n", "65536"]
# The seed reports' sweeps, at the seeds' settings (the FA1 lab report: N 512, batch 16 unless
# swept; its Fig. 5 at 8 heads; the FA2 lab reports: the forward pass over batch 16/32/64 x N
# 512/1024/2048 x heads 8/16/32, and the embedding dim at 16 heads): flash1 and naive beside
# ours and SDPA's FA2. name -> (bench_attention arguments, figures drawn from them).
SWEEP_PROVIDERS = ["--providers", "flash,flash1,sdpa-flash,naive"]
SWEEPS = {
    "batch": (["--shapes", "64x12", "--seqlens", "512", "--batch", "1,2,4,8,16,32,64"], ("sweep", "fwd_and_bwd")),
    "heads": (["--shapes", "64x12", "--seqlens", "512", "--batch", "16", "--heads", "1,2,4,8,16,32,64"], ("sweep",)),
    "embd": (["--shapes", "64x12", "--seqlens", "512", "--batch", "16", "--embd", "64,128,256,512,1024,2048"],
             ("sweep",)),
    "embd-16-heads": (["--shapes", "64x16,128x16,256x16", "--seqlens", "1024", "--batch", "16"], ("sweep",)),
    "head_dim": (["--shapes", "16x48,32x24,64x12,128x6", "--seqlens", "512", "--batch", "16"], ("sweep",)),
    "causal": (["--shapes", "64x8", "--batch", "16", "--seqlens", "128,256,512,1024,2048,4096"], ("sweep", "fwd_and_bwd")),
    "grid": (["--shapes", "64x12", "--causal", "1", "--seqlens", "512,1024,2048,4096,8192", "--batch", "1,2,4,8,16,32",
              "--providers", "flash"], ("heatmap",)),
    "forward": (["--shapes", "64x8", "--heads", "8,16,32", "--seqlens", "512,1024,2048", "--batch", "16,32,64",
                 "--providers", "flash,flash1,naive", "--modes", "fwd"], ("forward_table",)),
}
# The FA1 lab report's sequence-length figures (time and TFLOP/s against N, speedup over PyTorch,
# FA1 against FA2, forward against backward) at 16K tokens a batch, GPT-2's d=64 and d=128:
# every provider the seeds compare, ours (flash), FA1 (flash1), standard attention (naive), and
# what a PyTorch user has (SDPA's FA2 and cuDNN, FlexAttention); ours also as the portable kernel
# alone (flash-portable), which on Hopper says what the Gluon path adds. name -> bench_attention arguments.
KERNEL_PROVIDERS = ["--providers", "flash,flash-portable,flash1,sdpa-flash,sdpa-cudnn,flex,naive"]
KERNELS = {"d64": ["--shapes", "64x12", "--seqlens", "512,1024,2048,4096,8192,16384"],
           "d128": ["--shapes", "128x16", "--seqlens", "512,1024,2048,4096,8192,16384"]}
SWEEP_X = {"batch": "batch", "heads": "heads", "embd": "embd", "embd-16-heads": "embd", "head_dim": "head_dim",
           "causal": "seqlen"}
# Each seed figure, its setting, and the figure of ours that answers it (under OUT_DIR).
SEED_FIGURES = [
    ("FA1 lab report (T4)", "time against N", "batch x N = 16K, d 64 / 128", "kernels/d64/attention.png, kernels/d128/attention.png"),
    ("FA1 lab report (T4)", "TFLOP/s against N", "batch x N = 16K", "kernels/d64/attention.png, kernels/d128/attention.png"),
    ("FA1 lab report (T4)", "batch 1-64", "N 512", "sweeps/batch.png"),
    ("FA1 lab report (T4)", "speedup over PyTorch, bars", "per N", "kernels/speedup_bars.png"),
    ("FA1 lab report (T4)", "Fig. 5: causal against non-causal time", "heads 8, batch 16, N 128-4096", "sweeps/causal.png"),
    ("FA1 lab report (T4)", "heads up to 64", "N 512, batch 16", "sweeps/heads.png"),
    ("FA1 lab report (T4)", "embedding dim 64-2048", "head dim 64, N 512, batch 16", "sweeps/embd.png"),
    ("FA1 lab report (T4)", "memory against N", "batch x N = 64K", "figure3/figure3.png"),
    ("FA1 lab report (T4)", "Fig. 9: forward against backward time", "by batch (N 512) and by N (batch 16)",
     "sweeps/batch-fwd_and_bwd.png, sweeps/causal-fwd_and_bwd.png"),
    ("FA1 lab report (T4)", "head dim 16-64+", "N 512, batch 16", "sweeps/head_dim.png"),
    ("FA1 lab report (T4)", "heatmap batch x N", "causal, d 64", "sweeps/grid.png"),
    ("FA1 lab report (T4)", "Fig. 12: forward / backward TFLOP/s summary against PyTorch", "batch x N = 16K",
     "kernels/fwd_vs_bwd.png"),
    ("FA2 lab reports", "forward: time, TFLOP/s, peak memory, PyTorch OOM", "batch 16/32/64 x N 512/1024/2048 x "
     "heads 8/16/32, causal on / off", "sweeps/forward.md"),
    ("FA2 lab reports", "embedding dim 1024/2048/4096", "16 heads (head dim 64/128/256), N 1024, batch 16",
     "sweeps/embd-16-heads.png"),
    ("FA2 lab reports", "FA1 against FA2", "batch x N = 16K", "kernels/fa1_vs_fa2.png"),
]


def bench(out_dir, args, run):
    """bench_attention.py into out_dir (when `run` and a GPU is there; the points that an earlier
    call of the same command measured there are kept); its rows, or None."""
    if run and torch.cuda.is_available():
        cmd = [*BENCH, *args, "--out", str(out_dir), "--resume"]  # a call cut by a time limit goes on from there
        print("$ python", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    path = out_dir / "attention.json"
    if not path.is_file():
        return None, None
    data = json.loads(path.read_text())  # the command that measured these rows, not today's
    recorded = data["meta"].get("command")
    return data, f"`{harness.typed(recorded) if recorded else 'python ' + ' '.join(BENCH[1:] + args)}`"


def measured(meta):
    return f"{meta['device']}, {meta['date']}, torch {meta['torch']}, triton {meta['triton']}"


def figures(out, budget, run):
    """Figure 3: fwd+bwd time and memory, flash vs standard attention, N = 128 ... 65536."""
    seqlens = ",".join(str(2 ** k) for k in range(7, 17 if budget != "toy" else 11))
    data, cmd = bench(out / "figure3", [*FIGURE3, "--seqlens", seqlens], run)
    if data is None:
        return "Figure 3: not measured (needs a GPU: `--only figures`).\n", None
    kernel_figures.figure3(data["rows"], out / "figure3" / "figure3.png", data["meta"])
    rejected = {r["provider"]: r["error"] for r in data["rows"] if r.get("error", "OOM") != "OOM"}
    notes = figure3_claims(data["rows"]) + [f"- {p} did not run this setting: {e}" for p, e in rejected.items()]
    if not data["meta"].get("padding"):
        notes.append("- an earlier setting than the paper's (causal, no dropout, no padding mask): "
                     "`--only figures` measures it again as the paper ran it")
    text = "\n".join([f"![Figure 3](figure3/figure3.png)\n\nMeasured on {measured(data['meta'])}: {cmd}\n", *notes, ""])
    return text, ("Figure 3", _where(data["meta"]), notes)


def figure3_claims(rows, ours="flash", standard="naive", sparse="flash-butterfly", from_n=4096):
    """Figure 3's reading, computed from its rows: ours against standard attention (time, memory,
    where standard attention runs out of memory), against every other dense provider, and
    block-sparse time against its density."""
    ok = {(r["provider"], r["seqlen"]): r for r in rows if "error" not in r}
    mine = {n: r for (p, n), r in ok.items() if p == ours}
    if not mine:
        return []
    lines = [f"- {ours}: memory beyond the inputs {harness.span([r['peak_mem_mb'] for r in mine.values()], '{:.0f}')} MB "
             f"at N = {harness.span(mine, '{}')}"]
    both = [n for n in mine if (standard, n) in ok]
    oom = sorted(r["seqlen"] for r in rows if r["provider"] == standard and r.get("error") == "OOM")
    if both:
        t = [ok[standard, n]["ms_fwd+bwd"] / mine[n]["ms_fwd+bwd"] for n in both]
        m = [ok[standard, n]["peak_mem_mb"] / mine[n]["peak_mem_mb"] for n in both]
        lines.append(f"- against standard attention ({standard}), N = {harness.span(both, '{}')}: {harness.span(t, '{:.1f}')}x faster "
                     f"fwd+bwd, {harness.span(m, '{:.1f}')}x less memory" + (f"; {standard} runs out of memory from N = {oom[0]}" if oom else ""))
    for prov in dict.fromkeys(p for p, _ in ok):
        shared = [n for n in mine if (prov, n) in ok]
        if prov in (ours, standard, sparse) or not shared:
            continue
        ratio = [mine[n]["ms_fwd+bwd"] / ok[prov, n]["ms_fwd+bwd"] for n in shared]
        lines.append(f"- {ours}'s fwd+bwd time / {prov}'s: {harness.span(ratio)} (N = {harness.span(shared, '{}')}; below 1: ours faster)")
    long = [n for n in mine if (sparse, n) in ok and n >= from_n and "density" in ok[sparse, n]]
    if long:
        extra = [ok[sparse, n]["ms_fwd+bwd"] / mine[n]["ms_fwd+bwd"] - ok[sparse, n]["density"] for n in long]
        lines.append(f"- {sparse}: at density rho it takes rho + ({harness.span(extra, '{:.3f}')}) of {ours}'s fwd+bwd time "
                     f"(N = {harness.span(long, '{}')})")
    return lines


def _sweep_args(name):
    args, _ = SWEEPS[name]
    return args if "--providers" in args else [*SWEEP_PROVIDERS, *args]


def _current(data, name):
    """Whether a sweep's committed data were measured at today's setting of it."""
    return " ".join(_sweep_args(name)) in data["meta"]["command"]


def sweeps(out, run, only=None):
    """The seed reports' kernel sweeps at their settings, their figures and the forward table;
    `only`: the names of the sweeps to measure (the others are reported from what OUT holds)."""
    lines = []
    for name, (_, drawn) in SWEEPS.items():
        data, cmd = bench(out / "sweeps" / name, _sweep_args(name), run and (only is None or name in only))
        if data is None:
            lines.append(f"- {name}: not measured (needs a GPU: `--only sweeps`)")
            continue
        shown = []
        for kind in drawn:
            if kind == "forward_table":
                (out / "sweeps" / f"{name}.md").write_text(kernel_figures.forward_table(data["rows"]))
                shown.append(f"[{name} table](sweeps/{name}.md)")
                continue
            png = f"{name}.png" if kind in ("sweep", "heatmap") else f"{name}-{kind}.png"
            if kind == "heatmap":
                kernel_figures.heatmap(data["rows"], out / "sweeps" / png)
            else:
                getattr(kernel_figures, kind)(data["rows"], out / "sweeps" / png, SWEEP_X[name])
            shown.append(f"![{name}](sweeps/{png})")
        when = "" if _current(data, name) else " (an earlier setting than today's; `--only sweeps` measures it again)"
        lines.append(f"- {name}: {' '.join(shown)} measured on {measured(data['meta'])}: `{harness.typed(data['meta']['command'])}`{when}")
    return "\n".join(lines) + "\n"


# Figures drawn from the sequence-length tables: title, and the provider they compare ours
# with (a figure is drawn, and answers its seed figure, only where the tables hold it).
FROM_TABLES = {"kernels/speedup_bars.png": ("speedup over standard attention", "naive"),
               "kernels/fa1_vs_fa2.png": ("FA1 vs FA2", "flash1"),
               "kernels/fwd_vs_bwd.png": ("forward vs backward", "naive")}


def _data_of(out, figure, tables):
    """The committed data a figure of ours is drawn from (paths relative to out)."""
    f = Path(figure)
    if figure in FROM_TABLES:
        return [Path(os.path.relpath(t / "attention.json", out)) for t in tables]
    if f.parts[0] == "sweeps":
        return [Path("sweeps") / f.stem.split("-fwd_and_bwd")[0] / "attention.json"]
    return [f.parent / "attention.json"]


def seed_map(out, tables=()):
    """Markdown: each seed report's figure, its setting, ours, the data it is drawn from, and
    whether it is drawn here at that setting (`tables`: the sequence-length tables)."""
    def providers_in(t):
        data = t / "attention.json"
        return {r["provider"] for r in json.loads(data.read_text())["rows"] if "error" not in r} if data.is_file() else set()
    def state(ours):
        for f in (x.strip() for x in ours.split(",")):
            if f in FROM_TABLES and any((t / "attention.json").is_file() for t in tables) \
                    and not any(FROM_TABLES[f][1] in providers_in(t) for t in tables):
                return f"without {FROM_TABLES[f][1]} (its tables lack it: `--only kernels`)"
            if not (out / f).is_file():
                return "not yet"
            name = Path(f).stem.split("-fwd_and_bwd")[0]
            data = out / "sweeps" / name / "attention.json"
            if f.startswith("sweeps/") and data.is_file() and not _current(json.loads(data.read_text()), name):
                return "at an earlier setting"
        return "yes"
    rows = [[seed, figure, setting, ours,
             ", ".join(str(d) for f in ours.split(",") for d in _data_of(out, f.strip(), tables)), state(ours)]
            for seed, figure, setting, ours in SEED_FIGURES]
    counts = {}
    for row in rows:
        key = row[-1].split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    drawn = (f"{counts.pop('yes', 0)} of {len(rows)} drawn at the seed's setting from committed data"
             + "".join(f"; {n} {state}" for state, n in counts.items()))
    return harness.md_table(["seed report", "figure", "setting", "ours (in this folder)", "data", "drawn"], rows) + "\n", drawn


def kernel_tables(out, run):
    """The sequence-length tables of the seed figures: OUT/kernels/d64 and d128, measured here
    when `run` (resumable, as the sweeps); where OUT has none, the GPU folder's attention/d64
    and d128 beside it (measured before this part existed, without flash1 and naive)."""
    own = [out / "kernels" / name for name in KERNELS]
    for name, args in KERNELS.items():
        bench(out / "kernels" / name, [*KERNEL_PROVIDERS, *args], run)
    older = [out.parent / "attention" / name for name in KERNELS]
    if any((t / "attention.json").is_file() for t in own) or not any((t / "attention.json").is_file() for t in older):
        return own
    return older


def kernel_claims(rows, ours="flash"):
    """The sequence-length tables' reading, computed: ours over each other provider in fwd+bwd and
    forward TFLOP/s (the span over N and causal, per head dim), and standard attention's memory
    against ours; points whose repeats spread over 5% counted."""
    ok = {(r["provider"], r["head_dim"], r["causal"], r["seqlen"]): r for r in rows if "error" not in r}
    mine = {k[1:]: r for k, r in ok.items() if k[0] == ours}
    lines = []
    for prov in dict.fromkeys(k[0] for k in ok):
        if prov == ours:
            continue
        spans, shaky, both = {"fwd+bwd": [], "fwd": []}, 0, True
        for d in sorted({k[0] for k in mine}):
            shared = [k for k in mine if k[0] == d and (prov, *k) in ok]
            if not shared:
                continue
            causal = {k[1] for k in shared}  # a table cut short may hold one of the two
            both &= len(causal) == 2
            label = "" if len(causal) == 2 else " (causal)" if True in causal else " (non-causal)"
            for mode, s in spans.items():
                s.append(f"d={d}{label} " + harness.span([mine[k][f"tflops_{mode}"] / ok[prov, *k][f"tflops_{mode}"]
                                                          for k in shared]) + "x")
            shaky += sum(bool(mine[k].get("unstable") or ok[prov, *k].get("unstable")) for k in shared)
        if spans["fwd+bwd"]:
            ns = sorted({k[3] for k in ok if k[0] == prov})
            lines.append(f"- {ours} over {prov}, TFLOP/s fwd+bwd: {', '.join(spans['fwd+bwd'])}; forward: "
                         f"{', '.join(spans['fwd'])} (N = {harness.span(ns, '{}')}" + (", causal and not" if both else "")
                         + (f"; {shaky} points with a repeat spread over 5%" if shaky else "") + ")")
    naive = [(k, r) for k, r in ok.items() if k[0] == "naive" and k[1:] in mine]
    if naive:
        lines.append(f"- memory beyond the inputs: naive {harness.span([r['peak_mem_mb'] for _, r in naive], '{:.0f}')} MB, "
                     f"{ours} {harness.span([mine[k[1:]]['peak_mem_mb'] for k, _ in naive], '{:.0f}')} MB at the same points")
    return lines


def seed_figures(out, tables):
    """Speedup over standard attention, FA1 vs FA2, forward vs backward, from the committed
    sequence-length tables (OUT/kernels/d64, d128, or the GPU folder's attention/d64, d128). A
    figure whose comparison its tables lack (no naive rows for the speedup, no flash1 for FA1
    against FA2) is not drawn, and a stale one is removed: the report says what is missing."""
    rows, sources = [], []
    for t in tables:
        if (t / "attention.json").is_file():
            data = json.loads((t / "attention.json").read_text())
            rows += data["rows"]
            link = os.path.relpath(t / "attention.md", out)
            sources.append(f"[{t.name}]({link}) ({measured(data['meta'])}: `{harness.typed(data['meta']['command'])}`)")
    if not rows:
        return "Sequence-length tables: not measured (needs a GPU: `--only kernels`).\n", None
    present = {r["provider"] for r in rows if "error" not in r}
    fig = out / "kernels"
    fig.mkdir(parents=True, exist_ok=True)
    lines = []
    for figure, (title, needs) in FROM_TABLES.items():
        name = Path(figure).stem
        if needs in present:
            getattr(kernel_figures, name)(rows, out / figure)
            lines.append(f"![{title}]({figure})")
        else:
            (out / figure).unlink(missing_ok=True)
            lines.append(f"- {title}: not drawn, these tables have no {needs} rows (`--only kernels` measures them with it)")
    claims = kernel_claims(rows)
    if "flash-portable" in present:
        lines.append("flash-portable is flash.py's kernels alone; flash, the default, takes the Gluon forward on Hopper only "
                     "at the shapes attention/hopper.py's AUTO names, and elsewhere runs the same kernels: its ratio there is "
                     "the run's noise.")
    where = "; ".join(sorted({_where(json.loads((t / "attention.json").read_text())["meta"]) for t in tables
                              if (t / "attention.json").is_file()}))
    return "\n\n".join(lines) + "\n\n" + "\n".join(claims) + "\n\nFrom " + "; ".join(sources) + "\n", \
        ("Kernels, the sequence-length tables", where, claims)


def _where(meta):
    return f"{meta['device']}, {meta['date']}"


def _other_reports(out, part, data):
    """The other GPU folders' report folders (results/<gpu>/paper) whose `part` holds `data`."""
    return sorted(p for p in out.parent.parent.glob(f"*/{out.name}") if p.parent != out.parent and (p / part / data).is_file())


def _not_here(out, part, data):
    """A part OUT lacks: the other GPU reports that hold it, linked, or not measured."""
    links = [f"[{p.parent.name}'s report]({_rel(p / 'report.md', out)})" for p in _other_reports(out, part, data)]
    return [f"- in {' and '.join(links)}" if links else "- not measured yet"]


def table4_item(folder):
    """Table 4's summary item from benchmarks/table4.py's summary.json: the protocols' orders,
    where the gain comes from, and the speed claim, as computed there."""
    from benchmarks import table4
    summ = json.loads((folder / "summary.json").read_text())
    gpus = sorted({r["device"] for r in summ["runs"] if r.get("device")})
    claims = [table4.ordering(summ, "staged"), table4.ordering(summ, "scratch"), table4.windows(summ), *table4.speed(summ)]
    return "Table 4", " and ".join(gpus) or None, [f"- {c}" for c in claims if c]


SUMMARY = "## Summary"
# The README carries each GPU report's summary between these lines (`--readme`); tests check it.
README_BLOCK = ("<!-- summary of {} (python -m benchmarks.reproduce OUT_DIR --report-only --readme README.md) -->",
                "<!-- end of summary -->")


def summary_lines(items):
    lines = []
    for title, where, claims in items:
        claims = claims or ["- measured: its part below has the table (no reading computed for it)"]
        head = f"- {title}" + (f" ({where})" if where else "") + ":"
        lines += [f"{head} {claims[0][2:]}"] if len(claims) == 1 else [head, *(f"  {c}" for c in claims)]
    return lines


def _rel(path, start):
    return Path(os.path.relpath(path, start)).as_posix()


def readme_block(report, readme_dir):
    """A report's summary section, its relative links made relative to the README's folder."""
    text = report.read_text()
    body = text.split(f"\n{SUMMARY}\n", 1)[1].split("\n## ", 1)[0]
    body = body[body.index("\n- ") + 1:].rstrip("\n")  # the claims, without the report's own lead-in
    rebase = lambda m: f"]({_rel(report.parent / m.group(1), readme_dir)})"
    return re.sub(r"\]\((?![a-z]+:|#)([^)]+)\)", rebase, body)


def write_readme(readme, report):
    """Replaces the README's block for this report by the report's summary."""
    text = readme.read_text()
    start = README_BLOCK[0].format(_rel(report, readme.parent))
    head, rest = text.split(start, 1)
    tail = rest.split(README_BLOCK[1], 1)[1]
    readme.write_text(f"{head}{start}\n{readme_block(report, readme.parent)}\n{README_BLOCK[1]}{tail}")


NOT_TESTED = """The paper also claims, and this project does not test:
- BERT-large pretraining speed against the MLPerf 1.1 record (Table 1);
- Long-Range Arena (Table 3), with block-sparse FlashAttention against approximate attention;
- long-document classification on MIMIC-III and ECtHR (Table 5), and Path-X / Path-256 (Table 6);
- Megatron-LM's own fused attention kernels (here standard attention compiled by torch.compile
  stands in for its role in Table 2);
- the approximate and sparse baselines of Figure 3 (Linformer, Performer, Reformer, Local
  Attention, Longformer, BigBird, ...): Figure 3 here has flash, block-sparse flash (butterfly),
  SDPA and standard attention;
- the 8 x A100 scale of every GPT-2 run (one GPU here; the configs for 8 GPUs exist:
  `conf/experiment/table2-paper.yaml`, `table4-paper.yaml`).
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--only", default="table2,table2-medium,table4,figures,kernels,sweeps", help="parts to run")
    p.add_argument("--report-only", action="store_true", help="run nothing: the report from what OUT_DIR holds")
    p.add_argument("--budget", choices=("toy", "small", "paper"), default="small")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra train.py overrides for every run")
    p.add_argument("--steps-per-run", type=int, help="stop each run after this many steps (resume on the next call)")
    p.add_argument("--sweeps", help=f"with --only sweeps, the sweeps to measure (default all: {','.join(SWEEPS)}); "
                   "a machine with a time limit measures them over several calls")
    p.add_argument("--kernel-tables", nargs="*", type=Path, help="sequence-length tables of bench_attention.py for "
                   "the seed-report figures (default: OUT_DIR/kernels/d64 and d128, which `--only kernels` measures; "
                   "without them attention/d64 and attention/d128 beside OUT_DIR)")
    p.add_argument("--readme", type=Path, help="also write the report's summary into this README, between the lines "
                   f"{README_BLOCK[0].format('OUT_DIR/report.md')!r} and {README_BLOCK[1]!r}")
    a = p.parse_args(argv)
    if a.readme and (not a.readme.is_file() or README_BLOCK[0].format(_rel(a.out / "report.md", a.readme.parent))
                     not in a.readme.read_text()):
        p.error(f"{a.readme} has no line {README_BLOCK[0].format(_rel(a.out / 'report.md', a.readme.parent))!r} "
                f"(and {README_BLOCK[1]!r} after it) to write this report's summary between")
    parts = set(a.only.split(",")) if not a.report_only else set()
    known = [*TABLE2_SIZES, "table4", "figures", "kernels", "sweeps"]
    unknown = parts - set(known)
    if unknown:
        p.error(f"unknown --only parts {sorted(unknown)}: {', '.join(known)}")
    only_sweeps = a.sweeps.split(",") if a.sweeps else None
    if only_sweeps and set(only_sweeps) - set(SWEEPS):
        p.error(f"unknown --sweeps {sorted(set(only_sweeps) - set(SWEEPS))}: {', '.join(SWEEPS)}")
    a.out.mkdir(parents=True, exist_ok=True)
    report = [f"# FlashAttention paper reproduction ({a.budget} budget)", "",
              f"Report written {time.strftime('%Y-%m-%d')} by `{harness.command(argv, 'benchmarks.reproduce')}`; each part says where and how it was measured. "
              "Every part present in OUT_DIR is reported; --only chooses what runs.", ""]
    summary = []  # (part, where it was measured, its computed claims)
    report += ["## Table 2: training speed, same model, same curve", ""]
    for table, size in TABLE2_SIZES.items():
        status, result = run_table(a.out, table, TABLE2, a.budget, a.set, a.steps_per_run, table in parts)
        report += [f"### {size}", "", *[f"- {s}" for s in status], "", *elsewhere(a.out, table, "compare.json")]
        if result:
            report += [result[0], *table2_claims(result[1]), "",
                       f"![val ppl]({table}/val_ppl.png) ![tokens/s]({table}/tokens_per_s.png)", ""]
            meta = a.out / table / "meta.json"
            summary.append((f"Table 2, {size}", _where(json.loads(meta.read_text())) if meta.is_file() else None,
                            table2_claims(result[1])))
        else:
            summary.append((f"Table 2, {size}", None, _not_here(a.out, table, "compare.json")))
    report += ["The paper's Table 2 (quoted):", "", PAPER_TABLE2]
    report += ["## Table 4: longer context, better model", ""]
    if (a.out / "table4" / "summary.json").is_file() and "table4" not in parts:
        report += [table4_protocols(a.out / "table4")]  # the protocols of benchmarks/table4.py, scored there
        summary.append(table4_item(a.out / "table4"))
    else:
        status, result = run_table(a.out, "table4", table4_runs(a.budget), a.budget, a.set, a.steps_per_run,
                                   "table4" in parts)
        report += [*[f"- {s}" for s in status], ""]
        if result:
            report += [table4_summary(result[1]), "![val ppl](table4/val_ppl.png)",
                       "![loss by position](table4/loss_by_position.png)", "", "All runs:", "", result[0]]
            summary.append(("Table 4", None, ["- val ppl: " + ", ".join(
                f"{r['run']} (context {r['context']}) {math.exp(r['val_loss']):.2f}" for r in result[1])]))
        else:
            summary.append(("Table 4", None, _not_here(a.out, "table4", "summary.json")))
    report += [*elsewhere(a.out, "table4", "summary.json"), "The paper's Table 4 (quoted):", "", PAPER_TABLE4]
    text, item = figures(a.out, a.budget, "figures" in parts)
    report += ["## Figure 3: runtime and memory against sequence length", "", text, *elsewhere(a.out, "figure3", "attention.json")]
    summary.append(item or ("Figure 3", None, _not_here(a.out, "figure3", "attention.json")))
    tables = a.kernel_tables if a.kernel_tables is not None else kernel_tables(a.out, "kernels" in parts)
    text, item = seed_figures(a.out, tables)
    summary.append(item or ("Kernels, the sequence-length tables", None, _not_here(a.out, "kernels", "d64/attention.json")))
    sweep_text = sweeps(a.out, "sweeps" in parts, only_sweeps)
    figure_map, drawn = seed_map(a.out, tables)  # after the figures above are drawn (or removed)
    report += ["## Kernel benchmarks of the seed reports", "", text, "",
               "### Sweeps: batch, heads, embedding dim, head dim; TFLOP/s heatmap", "", sweep_text,
               "### The seed reports' figures and ours", "", figure_map]
    summary.append(("The seed reports' figures", None, [f"- {drawn}"]))
    budget = a.out / "budget" / "budget.md"  # benchmarks/budget.py's, from the scaling runs' rates
    if budget.is_file():
        report += ["## The paper's training budgets at our measured rates", "",
                   budget.read_text().split("\n", 2)[2].strip(), ""]
    report += ["## Not tested here", "", NOT_TESTED]
    report[4:4] = [SUMMARY, "", "Computed from the parts below, which give the tables, commands and figures; README.md carries it.", "",
                   *summary_lines(summary), ""]
    (a.out / "report.md").write_text("\n".join(report) + "\n")
    print(f"wrote {a.out / 'report.md'}")
    if a.readme:
        write_readme(a.readme, a.out / "report.md")
        print(f"wrote its summary into {a.readme}")


if __name__ == "__main__":
    try:
        main()
    except harness.Stopped as e:  # a time limit's SIGTERM: the run checkpointed, the same command goes on
        sys.exit(str(e))
