"""Side-by-side summary of training runs from their metrics.jsonl files (markdown)."""

import json
import statistics
import sys
from pathlib import Path


def load(run):
    rows = [json.loads(l) for l in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "train/loss" in r}, {r["step"]: r for r in rows if "val/loss" in r}


def main(runs):
    loaded = {Path(r).name: load(r) for r in runs
              if (Path(r) / "metrics.jsonl").is_file() and (Path(r) / "metrics.jsonl").stat().st_size}
    base_name, (base, _) = next(iter(loaded.items()))
    print("| run | tokens/s (median) | MFU | peak mem GB | final train loss | val loss (last) | max abs loss diff vs "
          f"{base_name} |\n|---|---|---|---|---|---|---|")
    for name, (train, val) in loaded.items():
        steps = sorted(train)[1:]  # the first interval includes compilation and autotuning
        tps = statistics.median(train[s]["tokens_per_s"] for s in steps)
        mfu = statistics.median(train[s].get("mfu", float("nan")) for s in steps)
        mem = max(train[s].get("peak_mem_gb", 0) for s in steps)
        diff = max(abs(train[s]["train/loss"] - base[s]["train/loss"]) for s in train if s in base)
        last = train[max(train)]
        v = val[max(val)]["val/loss"] if val else float("nan")
        print(f"| {name} | {tps:,.0f} | {mfu:.1%} | {mem:.2f} | {last['train/loss']:.4f} | {v:.4f} | {diff:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
