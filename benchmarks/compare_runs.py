"""Compare training runs side by side: a Markdown table and plots.

    python -m benchmarks.compare_runs RUN [RUN ...] [--baseline NAME] [--target-loss X] [--out DIR]
    python -m benchmarks.compare_runs --wandb-group ENTITY/PROJECT/GROUP [--out DIR]

RUN is a run directory (train.py writes config.json and metrics.jsonl into each) or, online, a
wandb run path ENTITY/PROJECT/RUN_ID. Per run: implementation, attention, context, tokens/s
(benchmarks/harness.py steady_tokens_per_s),
the 10th-90th percentile of its logged intervals' tokens/s (the host's noise), speedup against
the baseline (the first run unless --baseline names one), MFU, peak memory,
final validation loss and perplexity, training time (evaluation excluded) until the validation
loss first reaches --target-loss, the first logged interval's time (compilation and autotuning
land there), and the largest train-loss difference from the baseline at
the same step (equal-seed runs: bf16 noise against a real change). Writes DIR/compare.md,
DIR/val_ppl.png (against tokens and against training time), DIR/tokens_per_s.png and, when runs
recorded it, DIR/loss_by_position.png.
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from benchmarks.harness import metrics, steady_tokens_per_s


def _run(name, config, rows, by_position=None):
    return {"name": name, "config": config, "by_position": by_position,
            "train": [r for r in rows if "train/loss" in r], "val": [r for r in rows if "val/loss" in r]}


def load_dir(path):
    path = Path(path)
    for f in ("config.json", "metrics.jsonl"):
        if not (path / f).is_file():
            raise FileNotFoundError(f"{path / f} is missing: RUN must be a train.py run directory "
                                    "(config.json and metrics.jsonl) or a wandb run path ENTITY/PROJECT/RUN_ID")
    rows = metrics(path)
    rows = list({r["step"]: r for r in rows if "train/loss" in r}.values()) + \
        list({r["step"]: r for r in rows if "val/loss" in r}.values())  # a resumed run may repeat steps: last wins
    pos = path / "loss_by_position.json"
    return _run(path.name, json.loads((path / "config.json").read_text()), sorted(rows, key=lambda r: r["step"]),
                json.loads(pos.read_text())["loss"] if pos.is_file() else None)


def load_wandb(runs=(), group=None):
    """Runs from wandb (online): paths ENTITY/PROJECT/RUN_ID, or every run of a group."""
    import wandb
    api = wandb.Api()
    found = [api.run(p) for p in runs]
    if group:
        entity, project, name = group.split("/", 2)
        found += list(api.runs(f"{entity}/{project}", filters={"group": name}))
    return [_run(r.name, dict(r.config), [{"step": h.get("_step"), **{k: v for k, v in h.items() if v is not None}}
                                          for h in r.scan_history()]) for r in found]


def compile_setting(t):
    """train.compile as it acted: auto means on for CUDA, off on the CPU."""
    c = t.get("compile", "?")
    return ("on" if str(t.get("device", "")).startswith("cuda") else "off") if c == "auto" else \
        {True: "on", False: "off"}.get(c, str(c))


def interval_spread(train, skip=1):
    """(10th, 90th percentile) of the logged intervals' tokens/s after the first `skip` (as
    steady_tokens_per_s): how much a run's median could move on a noisy host; None with fewer
    than 5 intervals."""
    rates = [r["tokens_per_s"] for r in train[skip:] if "tokens_per_s" in r]
    if len(rates) < 5:
        return None
    deciles = statistics.quantiles(rates, n=10)
    return deciles[0], deciles[-1]


def summarize(run, base, target_loss):
    c, train, val = run["config"], run["train"], run["val"]
    median = lambda key: statistics.median(r[key] for r in train[1:] or train) if train and key in train[-1] else None  # noqa: E731
    reached = next((r for r in val if r["val/loss"] <= target_loss), None) if target_loss else None
    base_loss = {r["step"]: r["train/loss"] for r in base["train"]}
    diffs = [abs(r["train/loss"] - base_loss[r["step"]]) for r in train if r["step"] in base_loss]
    env = c.get("env", {})
    return {"run": run["name"], "device": env.get("device") or c.get("train", {}).get("device", "?"),
            "world": env.get("world", 1), "steps": train[-1]["step"] if train else 0,
            "impl": c.get("model", {}).get("impl", "ours"),
            "attention": c.get("attention", {}).get("name", "?"),
            "compile": compile_setting(c.get("train", {})), "context": c.get("context"),
            "tokens_per_s": steady_tokens_per_s(train), "tokens_per_s_p10_p90": interval_spread(train),
            "first_interval_s": train[0].get("train_time_s") if train else None,
            "mfu": median("mfu"), "peak_mem_gb": max((r["peak_mem_gb"] for r in train if "peak_mem_gb" in r), default=None),
            "tokens": train[-1]["tokens_seen"] if train else 0,
            "val_loss": val[-1]["val/loss"] if val else None,
            "train_time_s": train[-1].get("train_time_s") if train else None,
            "time_to_target_s": reached.get("train_time_s") if reached else None,
            "max_loss_diff": max(diffs) if diffs else None}


def _num(x, fmt):
    return "-" if x is None or math.isnan(x) else fmt.format(x)


def markdown(rows, baseline, target_loss):
    base = next(r for r in rows if r["run"] == baseline)
    head = ["run", "device", "impl", "attention", "compile", "context", "steps", "tokens/s", "intervals p10-p90",
            f"tokens/s vs {baseline}", "MFU", "peak GB", "tokens", "val loss", "val ppl", "train time s",
            "first interval s"]
    if target_loss:
        head.append(f"time to val loss {target_loss} (s)")
    head.append(f"max abs train-loss diff vs {baseline}")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        same = r["device"] == base["device"] and r["world"] == base["world"]
        ratio = r["tokens_per_s"] / base["tokens_per_s"] if r["tokens_per_s"] and base["tokens_per_s"] else None
        cells = [r["run"], r["device"] + (f" x{r['world']}" if r["world"] > 1 else ""), r["impl"], r["attention"],
                 r["compile"], str(r["context"]), str(r["steps"]), _num(r["tokens_per_s"], "{:,.0f}"),
                 "-" if not r.get("tokens_per_s_p10_p90") else "{:,.0f}-{:,.0f}".format(*r["tokens_per_s_p10_p90"]),
                 _num(ratio, "{:.2f}x") + ("" if same else " (other device)"), _num(r["mfu"], "{:.1%}"),
                 _num(r["peak_mem_gb"], "{:.2f}"), f"{r['tokens']:,}", _num(r["val_loss"], "{:.4f}"),
                 _num(None if r["val_loss"] is None else math.exp(r["val_loss"]), "{:.2f}"), _num(r["train_time_s"], "{:.0f}"),
                 _num(r.get("first_interval_s"), "{:.0f}")]
        if target_loss:
            cells.append("not reached" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.0f}")
        cells.append(_num(r["max_loss_diff"], "{:.4f}"))
        out.append("| " + " | ".join(cells) + " |")
    devices = sorted({(r["device"], r["world"]) for r in rows})
    if len(devices) > 1:
        out += ["", f"Runs on {len(devices)} different machines: their tokens/s ratios compare machines as well as code."]
    return "\n".join(out) + "\n"


def plot(runs, rows, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        val = [r for r in run["val"] if "tokens_seen" in r]
        ppl = [math.exp(r["val/loss"]) for r in val]
        axes[0].plot([r["tokens_seen"] / 1e6 for r in val], ppl, marker="o", ms=3, label=run["name"])
        if all("train_time_s" in r for r in val):
            axes[1].plot([r["train_time_s"] for r in val], ppl, marker="o", ms=3, label=run["name"])
    for ax, x in zip(axes, ("training tokens (millions)", "training time (s, evaluation excluded)")):
        ax.set_xlabel(x)
        ax.set_ylabel("validation perplexity")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "val_ppl.png", dpi=110)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows)), 3.8))
    ax.bar([r["run"] for r in rows], [r["tokens_per_s"] / 1e3 for r in rows])
    ax.set_ylabel("thousand tokens/s (median)")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(out / "tokens_per_s.png", dpi=110)
    with_pos = [r for r in runs if r["by_position"]]
    if with_pos:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for run in with_pos:
            loss, bucket = run["by_position"], max(1, len(run["by_position"]) // 64)
            means = [sum(loss[i:i + bucket]) / len(loss[i:i + bucket]) for i in range(0, len(loss), bucket)]
            ax.plot([i + bucket / 2 for i in range(0, len(loss), bucket)], means, label=run["name"])
        ax.set_xscale("log")
        ax.set_xlabel("position in the context window")
        ax.set_ylabel("validation loss")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "loss_by_position.png", dpi=110)


def compare(runs, baseline=None, target_loss=None, out=None):
    """The table (Markdown) for loaded runs; with out, also compare.md and the plots there."""
    if not runs:
        raise ValueError("no runs to compare")
    names = [r["name"] for r in runs]
    baseline = baseline or names[0]
    if baseline not in names:
        raise ValueError(f"--baseline {baseline!r} is not among the runs: {', '.join(names)}")
    base = runs[names.index(baseline)]
    rows = [summarize(r, base, target_loss) for r in runs]
    table = markdown(rows, baseline, target_loss)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(table)
        (out / "compare.json").write_text(json.dumps(rows, indent=1, allow_nan=False))  # missing values are null
        plot(runs, rows, out)
    return table, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="run directories or wandb run paths ENTITY/PROJECT/RUN_ID")
    p.add_argument("--wandb-group", help="every wandb run of ENTITY/PROJECT/GROUP")
    p.add_argument("--baseline", help="run name the speedups are against (default: the first)")
    p.add_argument("--target-loss", type=float, help="report the training time to reach this validation loss")
    p.add_argument("--out", type=Path, help="write compare.md, compare.json and the PNGs here")
    a = p.parse_args(argv)
    local = [r for r in a.runs if Path(r).exists()]
    remote = [r for r in a.runs if not Path(r).exists()]
    if remote and not all(r.count("/") == 2 for r in remote):
        p.error(f"not a run directory nor a wandb path ENTITY/PROJECT/RUN_ID: {', '.join(remote)}")
    runs = [load_dir(r) for r in local] + (load_wandb(remote, a.wandb_group) if remote or a.wandb_group else [])
    try:
        table, _ = compare(runs, a.baseline, a.target_loss, a.out)
    except ValueError as e:
        p.error(str(e))
    print(table)


if __name__ == "__main__":
    sys.exit(main())
