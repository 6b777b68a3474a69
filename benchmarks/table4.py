"""Table 4 (longer context, better model): score trained runs on the same validation targets,
and collect the scores into summary.json.

Every model predicts the same targets, tokens 1 .. n x SPAN of the validation split (n whole
spans of the longest context; the paper's non-overlapping windows tile them exactly at 1K,
2K and 4K). Beside the mean loss: the loss by position bucket in the window, a model longer
than 1024 scored again with its context cut to 1024 windows (same weights: separates "uses
the far context" from "trained better"), and a 1024 model scored with a sliding window (each
target, after the first window, sees at least 512 tokens of context).

    python -m benchmarks.table4 score runs/table4/* --out OUT          # a GPU; one JSON a run
    python -m benchmarks.table4 summary OUT/*.json --out benchmarks/results/h200/paper/table4
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import metrics, span, steady_tokens_per_s

SPAN = 4096
CUT = 1024
BUCKETS = [(0, 64), (64, 256), (256, 512), (512, 1024), (1024, 2048), (2048, 4096)]
PROTOCOLS = {"table4-scratch": "scratch", "table4-staged": "staged", "table4-control": "control"}


@torch.no_grad()
def target_losses(model, data, context, n_targets, device, stride=None, batch_tokens=16384):
    """(loss, position in its window) of each target data[1 .. n_targets], float64 numpy arrays.
    stride None: non-overlapping windows of `context`; else windows advancing by `stride`,
    the first scored whole and each later one on its last `stride` targets."""
    stride = stride or context
    if n_targets < context or (n_targets - context) % stride:
        raise ValueError(f"{n_targets} targets are not tiled by windows of {context} advancing by {stride}")
    starts = list(range(0, n_targets - context + 1, stride))
    losses, positions = np.empty(n_targets), np.empty(n_targets)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    per_batch = max(1, batch_tokens // context)
    for i in range(0, len(starts), per_batch):
        chunk = starts[i:i + per_batch]
        xy = torch.from_numpy(np.stack([data[s:s + context + 1] for s in chunk]).astype(np.int64)).to(device)
        with autocast:
            logits = model(xy[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), xy[:, 1:], reduction="none")
        loss = loss.double().cpu().numpy()
        for s, row in zip(chunk, loss):
            first = 0 if s == 0 else context - stride  # positions of this window that are scored
            losses[s + first:s + context] = row[first:]
            positions[s + first:s + context] = np.arange(first, context)
    return losses, positions


def by_bucket(losses, positions, context):
    return {f"{lo}-{hi - 1}": float(losses[(positions >= lo) & (positions < hi)].mean())
            for lo, hi in BUCKETS if lo < context}


def run_facts(run_dir):
    """What a run directory says of itself: config, protocol, tokens trained (its parent's too), curve, speed."""
    from training import checkpoints
    cfg = json.loads((run_dir / "config.json").read_text())
    t = cfg["train"]
    rows = metrics(run_dir)
    parent_tokens = 0
    if t.get("init_from"):
        m = checkpoints.PATTERN.fullmatch(Path(t["init_from"]).name)
        parent_tokens = int(m.group(1)) * t["batch_tokens"] if m else None
    steps = max(r["step"] for r in rows)
    return {"run": run_dir.name, "device": cfg.get("env", {}).get("device"),
            "parent": Path(t["init_from"]).parent.name if t.get("init_from") else None,
            "protocol": PROTOCOLS.get(cfg["wandb"]["group"], cfg["wandb"]["group"]),
            "context": cfg["context"], "seed": t["seed"], "attention": cfg["attention"]["name"],
            "init_from": t.get("init_from"), "init_positions": t.get("init_positions") if t.get("init_from") else None,
            "train_tokens": (parent_tokens or 0) + steps * t["batch_tokens"], "parent_tokens": parent_tokens,
            "schedule_tokens": (parent_tokens or 0) + t["max_steps"] * t["batch_tokens"],
            "steps": steps, "tokens_per_s": steady_tokens_per_s(rows),
            "train_time_s": max((r.get("train_time_s", 0) for r in rows), default=None),
            "curve": [[(parent_tokens or 0) + r["tokens_seen"], r["val/ppl"]] for r in rows if "val/ppl" in r]}


def unscored(run_dir):
    """A run whose weights are gone (a machine handed back before its scoring): its own curve and
    speed only, nothing on the whole split. The table and the figure show it; no pairing uses it."""
    return {**run_facts(run_dir), "val_tokens": None, "val_loss": None, "val_ppl": None, "loss_by_position": {},
            "val_ppl_ctx1024": None, "val_ppl_sliding": None}


def score(run_dir, val, device, attention, parent=None):
    from training.weights import load_model
    facts = {**run_facts(run_dir), **({"parent": parent} if parent else {})}
    model, account = load_model(run_dir, attention=attention)
    model.to(device).eval()
    n = (len(val) - 1) // SPAN * SPAN
    context = facts["context"]
    losses, positions = target_losses(model, val, context, n, device)
    out = {**facts, "weights": account, "val_tokens": n, "val_loss": float(losses.mean()),
           "val_ppl": math.exp(losses.mean()), "loss_by_position": by_bucket(losses, positions, context),
           "val_ppl_ctx1024": None, "val_ppl_sliding": None}
    if context > CUT:
        cut, _ = target_losses(model, val, CUT, n, device)
        out["val_ppl_ctx1024"] = math.exp(cut.mean())
    else:
        slide, _ = target_losses(model, val, context, n, device, stride=context // 2)
        out["val_ppl_sliding"] = math.exp(slide.mean())
    return out


def summary(paths, meta, speed_runs=()):
    """speed_runs: run directories trained for their speed alone (standard attention at 1024),
    the baseline of the paper's speed claim (speed())."""
    runs = [{**json.loads(Path(p).read_text()), "run": Path(p).stem} for p in paths]  # a score is named after its run
    keys = ("protocol", "context", "seed", "init_positions", "parent", "device", "train_tokens", "schedule_tokens", "val_tokens", "val_ppl", "val_ppl_ctx1024",
            "val_ppl_sliding", "loss_by_position", "curve", "tokens_per_s", "train_time_s", "attention", "run")
    runs = sorted(({k: r.get(k) for k in keys} for r in runs),
                  key=lambda r: (r["protocol"], r["context"], r["init_positions"] or "", r["train_tokens"], r["seed"]))
    baselines = [{k: f[k] for k in ("run", "attention", "context", "device", "tokens_per_s", "steps")}
                 for f in map(run_facts, map(Path, speed_runs))]
    return {"meta": meta, "runs": runs, "by_config": by_config(runs), "speed_baselines": baselines}


def by_config(runs):
    """Runs of one configuration and budget over seeds: each seed's ppl, their spread, and each
    run's ratio to the 1K run it is paired with (pair())."""
    runs = [r for r in runs if r["val_ppl"] is not None]
    groups = {}
    for r in runs:
        groups.setdefault((label(r), r["train_tokens"]), []).append(r)
    out = []
    for (name, _), rs in groups.items():
        base = baseline(rs[0])
        pairs = [pair(r, runs) for r in rs]
        paired = base is not None and all(pairs)
        ppl = [r["val_ppl"] for r in rs]
        out.append({"config": name, "train_tokens": rs[0]["train_tokens"], "seeds": [r["seed"] for r in rs],
                    "parents": [r.get("parent") for r in rs], "val_ppl": ppl, "val_ppl_mean": statistics.fmean(ppl),
                    "val_ppl_spread": max(ppl) - min(ppl) if len(ppl) > 1 else None, "baseline": base,
                    "ratio_to_baseline": [r["val_ppl"] / b["val_ppl"] for r, (b, _) in zip(rs, pairs)] if paired else None,
                    "same_parent": [same for _, same in pairs] if paired else None})
    return out


def pair(r, runs):
    """(the 1K run r is compared with, whether it continues the same parent weights), or None.
    Same seed and training tokens; a scratch run pairs with scratch 1024, a staged run with the
    control that continues its parent, or, where that parent has no control, the control of
    another training of the same seed's parent (GPU training is not bitwise repeatable: such a
    pair carries that run-to-run spread too)."""
    base = baseline(r)
    if base is None:
        return None
    same = [b for b in runs if label(b) == base and b["seed"] == r["seed"] and b["train_tokens"] == r["train_tokens"]]
    if r["protocol"] != "staged":
        return (same[0], True) if same else None
    parent = [b for b in same if b.get("parent") == r.get("parent")]
    return (parent[0], True) if parent else (same[0], False) if same else None


def speed(summ):
    """The paper's speed half of Table 4 (FlashAttention at 4K trains faster than Megatron-LM at
    1K): our 4096 runs' tokens/s against each speed baseline on the same GPU, and the hours to
    the runs' tokens at both rates."""
    lines = []
    for b in summ.get("speed_baselines") or []:
        ours = [r for r in summ["runs"] if r["context"] == 4096 and r["attention"] == "flash" and r["tokens_per_s"]
                and r.get("device") == b["device"]]
        if not ours:
            continue
        rate, tokens = statistics.median(r["tokens_per_s"] for r in ours), max(r["train_tokens"] for r in ours)
        lines.append(f"Speed on {b['device']}: attention=flash at 4096 trains at {rate:,.0f} tokens/s (median of "
                     f"{len(ours)} runs), attention={b['attention']} at {b['context']} at {b['tokens_per_s']:,.0f} "
                     f"({b['run']}, {b['steps']} steps): {rate / b['tokens_per_s']:.2f}x; {tokens / 1e6:.0f}M tokens take "
                     f"{tokens / rate / 3600:.2f} h against {tokens / b['tokens_per_s'] / 3600:.2f} h (paper: "
                     "FlashAttention at 4K 3.6 days against Megatron-LM at 1K 4.7, 1.3x).")
    return lines


def ordering(summ, protocol):
    """A protocol's claim from the data: each context's paired ratios to its 1K run (staged: the
    position table copied), and whether the contexts' ranges are disjoint and in the paper's
    order (a longer context better at every run), the reverse, or overlapping."""
    ranges = {}
    for c in summ["by_config"]:
        name = c["config"].split()
        if c["ratio_to_baseline"] and name[0] == protocol and (protocol != "staged" or c["config"].endswith("(copy)")):
            ranges[int(name[1])] = (min(c["ratio_to_baseline"]), max(c["ratio_to_baseline"]), len(c["seeds"]))
    if not ranges:
        return None
    ranges[1024] = (1.0, 1.0, None)
    ctx = sorted(ranges)
    steps = list(zip(ctx, ctx[1:]))
    runs = lambda n: f"{n} run" + ("s" if n > 1 else "")
    parts = [f"{c}: {span(ranges[c][:2], '{:.3f}')}x ({runs(ranges[c][2])})" for c in ctx[:0:-1]]
    chain = lambda sign, order: f" {sign} ".join(f"ppl({c // 1024}K)" for c in order)
    if all(ranges[hi][1] < ranges[lo][0] for lo, hi in steps):
        verdict = f"every run of a longer context is below every run of a shorter one: {chain('<', ctx[::-1])}, the paper's order"
    elif all(ranges[hi][0] > ranges[lo][1] for lo, hi in steps):
        verdict = f"every run of a longer context is above every run of a shorter one: {chain('>', ctx[::-1])}, the reverse of the paper's order"
    else:
        verdict = "the ranges overlap: no order is shown outside the run-to-run spread"
    if any(ranges[c][2] == 1 for c in ctx[1:]):  # one run says nothing of the spread between runs
        verdict += " (one run of a context: its run-to-run spread is not measured)"
    what = {"staged": "staged (protocol b), position table copied", "scratch": "scratch (protocol a)"}.get(protocol, protocol)
    return f"{what}, ppl over the paired 1K run: " + "; ".join(parts) + f". {verdict[0].upper()}{verdict[1:]}."


def windows(summ, context=4096):
    """Where the staged runs' gain comes from, computed: each staged run at `context` (position
    table copied) scored with its context cut to 1024 against its paired control, its loss at
    positions past 1024 against the control's last bucket, and the controls scored with a
    sliding window (every target but the first window's sees 1023 tokens) against the staged
    runs. Longer-range use would show as a staged run ahead of its control on 1024-token
    windows too; fewer window starts, as a control with a sliding window catching up."""
    runs = [r for r in summ["runs"] if r["val_ppl"] is not None]
    staged = [r for r in runs if r["protocol"] == "staged" and r["context"] == context and r["init_positions"] == "copy"]
    pairs = [(r, p[0]) for r in staged if (p := pair(r, runs))]
    if not pairs:
        return None
    gains = [g for r, c in pairs if c["loss_by_position"]
             for b, g in position_gain(r, c).items() if int(b.split("-")[0]) >= 1024]
    ctrl = sorted({c["run"]: c for _, c in pairs}.values(), key=lambda c: c["seed"])
    sliding = [c["val_ppl_sliding"] for c in ctrl if c["val_ppl_sliding"] is not None]
    cut = [r["val_ppl_ctx1024"] for r, _ in pairs if r["val_ppl_ctx1024"] is not None]
    name = f"staged {context} (copy)"
    lines = [f"Where the gain comes from ({name}, {len(pairs)} run{'s' if len(pairs) > 1 else ''}, each against its paired control):"]
    if cut:
        worse = all(r["val_ppl_ctx1024"] > c["val_ppl"] for r, c in pairs)
        lines.append(f" cut to 1024-token windows it scores {span(cut)} against the controls' {span([c['val_ppl'] for c in ctrl])}"
                     + (" (worse: on the control's own windows it is not the better model)" if worse else ""))
    if gains:
        lines.append(f"; its loss at positions 1024-{context - 1} minus the control's at 512-1023 is "
                     f"{min(gains):+.3f} to {max(gains):+.3f} nats")
    if sliding:
        better = max(sliding) < min(r["val_ppl"] for r, _ in pairs)
        lines.append(f"; the controls scored with a sliding window reach {span(sliding)}, against its {span([r['val_ppl'] for r, _ in pairs])}"
                     + (": most of the gain is fewer window starts (targets without 1023 tokens before them), "
                        "not attention across more than 1024 tokens" if better else ""))
    return "".join(lines) + "."


def baseline(r):
    """The 1K configuration a run is paired with, or None for the baselines themselves."""
    if r["protocol"] == "staged":
        return "control 1024"
    if r["protocol"] == "scratch" and r["context"] != 1024:
        return "scratch 1024"
    return None


def data_paths(data):
    """The token files of a data config (conf/data/<data>.yaml), prepared as train.py prepares them."""
    import os
    from hydra import compose, initialize_config_dir
    from data.prepare import prepare
    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        d = compose("config", overrides=[f"data={data}"]).data
    d.cache_dir = os.path.abspath(os.path.expanduser(d.cache_dir))
    d.root = os.path.abspath(os.path.expanduser(d.root))
    return prepare(d)


def label(r):
    return {"scratch": f"scratch {r['context']}", "control": "control 1024",
            "staged": f"staged {r['context']} ({r['init_positions']})"}.get(r["protocol"], r["run"])


def table(summ):
    """Markdown: one row a run, ppl on the same targets, the truncated and sliding scorings, loss by position."""
    buckets = [f"{lo}-{hi - 1}" for lo, hi in BUCKETS]
    fmt = lambda v, f="{:.2f}": "" if v is None else f.format(v)
    lines = ["| run | seed | parent | train tokens | val ppl | ppl, context cut to 1024 | ppl, sliding window | "
             + " | ".join(f"loss {b}" for b in buckets) + " | tokens/s | GPU |",
             "|---|---|---|---|---|---|---|" + "---|" * len(buckets) + "---|---|"]
    for r in summ["runs"]:
        ppl = fmt(r["val_ppl"]) if r["val_ppl"] is not None else f"not scored ({stopped(r)})"
        lines.append(f"| {label(r)} | {r['seed']} | {r.get('parent') or ''} | {r['train_tokens'] / 1e6:.0f}M | {ppl} | "
                     f"{fmt(r['val_ppl_ctx1024'])} | {fmt(r['val_ppl_sliding'])} | "
                     + " | ".join(fmt(r["loss_by_position"].get(b), "{:.3f}") for b in buckets)
                     + f" | {fmt(r['tokens_per_s'], '{:,.0f}')} | {(r.get('device') or '').replace('NVIDIA ', '')} |")
    lines += ["", "| configuration | train tokens | seeds | val ppl, each seed | mean | spread | paired with | ppl / paired run's |",
              "|---|---|---|---|---|---|---|---|"]
    for c in summ["by_config"]:
        lines.append(f"| {c['config']} | {c['train_tokens'] / 1e6:.0f}M | {', '.join(map(str, c['seeds']))} | "
                     f"{', '.join(f'{v:.2f}' for v in c['val_ppl'])} | {c['val_ppl_mean']:.2f} | "
                     f"{fmt(c['val_ppl_spread'])} | {c['baseline'] or ''} | {paired_ratios(c)} |")
    if any(not all(c.get("same_parent") or [True]) for c in summ["by_config"]):
        lines += ["", "\\* paired with the control of another training of the same seed's parent, not its own."]
    verdicts = [v for v in (ordering(summ, "staged"), ordering(summ, "scratch"), windows(summ)) if v] + speed(summ)
    return "\n".join(lines + [x for v in verdicts for x in ("", v)])


def paired_ratios(c):
    """A configuration's ratios to its paired runs, "0.974, 0.978*" (*: another training of the
    parent's control), or "" when not paired."""
    marks = c.get("same_parent") or [True] * len(c["seeds"])
    return ", ".join(f"{x:.3f}" + ("" if same else "*") for x, same in zip(c["ratio_to_baseline"] or [], marks))


def stopped(r):
    """Where an unscored run's curve ends: its last evaluation, and its schedule's end when it
    stopped before it."""
    end = f"curve to {r['curve'][-1][0] / 1e6:.0f}M" if r["curve"] else "no curve"
    return end + (f" of {r['schedule_tokens'] / 1e6:.0f}M" if (r.get("schedule_tokens") or 0) > r["train_tokens"] else "")


def position_gain(r, control):
    """Loss by position of a staged run minus its control's, bucket by bucket; beyond the control's
    window, minus the control's last bucket (its best-informed positions)."""
    last = list(control["loss_by_position"].values())[-1]
    return {b: v - control["loss_by_position"].get(b, last) for b, v in r["loss_by_position"].items()}


def figures(summ, out):
    """Three panels: the training-time curves, loss by position, and protocol b's loss by position
    against its paired control. One colour a configuration, one line style a run of it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(19, 5))
    color = {c: f"C{i % 10}" for i, c in enumerate(dict.fromkeys(label(r) for r in summ["runs"]))}
    names = [f"{label(r)}, seed {r['seed']}, {r['train_tokens'] / 1e6:.0f}M" for r in summ["runs"]]
    scored = [r for r in summ["runs"] if r["val_ppl"] is not None]
    seen, ticks = {}, [f"{lo}-{hi - 1}" for lo, hi in BUCKETS]
    for r, name in zip(summ["runs"], names):
        seen[label(r)] = seen.get(label(r), -1) + 1   # the configuration's how-many-th run: its line style
        style = ["-", "--", ":", "-."][seen[label(r)] % 4]
        if names.count(name) > 1 or r["val_ppl"] is None:   # the same seed trained twice: say which
            name += f" ({r['run']})" if r["val_ppl"] is not None else ", not scored"
        kw = dict(marker="o", ms=3, ls=style, color=color[label(r)], label=name)
        t, ppl = zip(*r["curve"]) if r["curve"] else ((), ())
        ax[0].plot([x / 1e6 for x in t], ppl, **kw)
        b = r["loss_by_position"]
        if b:
            ax[1].plot([ticks.index(k) for k in b], list(b.values()), **kw)
        paired = pair(r, scored) if r in scored else None
        if r["protocol"] == "staged" and paired:
            gain = position_gain(r, paired[0])
            ax[2].plot([ticks.index(k) for k in gain], list(gain.values()), **kw)
    ax[0].set(xlabel="training tokens (M)", ylabel="validation ppl (training-time evaluation, 4M targets)",
              yscale="log", title="Validation perplexity against tokens seen")
    ax[1].set(xlabel="position in the window", ylabel="validation loss (nats)", title="Loss by position (whole split)")
    ax[2].axhline(0, color="0.3", lw=0.8)
    ax[2].set(xlabel="position in the window", ylabel="loss - the paired control's (nats)",
              title="Protocol b against its 1K control\n(beyond 1024: against the control's 512-1023)")
    for a in ax[1:]:
        a.set_xticks(range(len(BUCKETS)), ticks)
    for a in ax:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:   # a panel with runs in it
            a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "table4.png", dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="score run directories on the validation split (one JSON each)")
    s.add_argument("runs", nargs="+", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--data", default="gutenberg", help="the data config the runs trained on")
    s.add_argument("--attention", default="flash")
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--parent", help="the committed name of the run whose weights these runs start from "
                   "(default: the directory of train.init_from); pairs a staged run with its own control")
    u = sub.add_parser("unscored", help="the score file of a run whose weights are gone: its curve and speed only")
    u.add_argument("runs", nargs="+", type=Path)
    u.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("summary", help="summary.json from the scores")
    m.add_argument("scores", nargs="+", type=Path)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--meta", type=json.loads, default={}, help="JSON: device, date, commit, commands")
    m.add_argument("--speed", nargs="*", default=[], type=Path, help="run directories trained for speed alone "
                   "(standard attention at 1024): the baseline of the paper's speed claim")
    a = p.parse_args(argv)
    if a.cmd == "summary":
        a.out.mkdir(parents=True, exist_ok=True)
        summ = summary(a.scores, a.meta, a.speed)
        (a.out / "summary.json").write_text(json.dumps(summ, indent=1))
        (a.out / "table.md").write_text(table(summ) + "\n")
        figures(summ, a.out)
        print(table(summ))
        return
    if a.cmd == "unscored":
        a.out.mkdir(parents=True, exist_ok=True)
        for run in a.runs:
            (a.out / f"{run.name}.json").write_text(json.dumps(unscored(run), indent=1))
        return
    from data.batches import tokens
    val = tokens(data_paths(a.data)["val"])
    a.out.mkdir(parents=True, exist_ok=True)
    for run in a.runs:
        if not (run / "config.json").is_file():
            print(f"skipping {run}: not a run directory", file=sys.stderr)
            continue
        result = score(run, val, a.device, a.attention, a.parent)
        (a.out / f"{run.name}.json").write_text(json.dumps(result, indent=1))
        print(f"{run.name}: val ppl {result['val_ppl']:.2f} | ctx1024 {result['val_ppl_ctx1024']} | "
              f"sliding {result['val_ppl_sliding']} | {result['loss_by_position']}", flush=True)


if __name__ == "__main__":
    main()
