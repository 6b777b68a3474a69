"""Data-parallel scaling: tokens/s of N GPUs against N x one GPU (weak scaling: 16K tokens per
GPU per step at every world size, so each GPU runs the same step and only the gradient
reduction is added), GPT-2 small with our kernel, through train.py under torchrun.

    python -m benchmarks.scaling OUT_DIR [--gpus 2] [--contexts 1024 4096] [--parallel ddp]
                                 [--micro-batches 1] [--set data.num_proc=16 ...]

--micro-batches K: each GPU accumulates K micro-batches of 16K tokens per step, so gradients
are reduced once per K forward/backward passes (1: the worst case for communication; GPT-2's
0.5M-token batch on 8 GPUs is K = 4).

Throughput is the median tokens/s of the logged intervals after the first two (compilation
and autotuning); efficiency = tokens/s(N) / (N x tokens/s(1)). Writes OUT_DIR/scaling.json,
scaling.md and scaling.png, with the runs under OUT_DIR/runs.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.reproduce import train  # noqa: E402

PER_GPU_TOKENS = 16384
WARMUP_INTERVALS = 2


def throughput(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_s" in r]
    rates = [r["tokens_per_s"] for r in rows][WARMUP_INTERVALS:]
    return {"tokens_per_s": statistics.median(rates), "intervals": len(rates),
            "mfu": statistics.median(r["mfu"] for r in rows[WARMUP_INTERVALS:]) if "mfu" in rows[-1] else None,
            "peak_mem_gb": max(r.get("peak_mem_gb", 0) for r in rows)}


def plot(results, gpus, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    contexts = sorted({r["context"] for r in results})
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.38
    for i, n in enumerate(contexts):
        one = next(r for r in results if r["context"] == n and r["gpus"] == 1)["tokens_per_s"]
        many = next(r for r in results if r["context"] == n and r["gpus"] == gpus)
        ax.bar(i - width / 2, gpus * one / 1e3, width, color="0.75", label=f"{gpus} x one GPU" if i == 0 else None)
        ax.bar(i + width / 2, many["tokens_per_s"] / 1e3, width, color="C0", label=f"{gpus} GPUs" if i == 0 else None)
        ax.text(i + width / 2, many["tokens_per_s"] / 1e3, f"{many['efficiency']:.2f}", ha="center", va="bottom")
    ax.set_xticks(range(len(contexts)), [f"context {n}" for n in contexts])
    ax.set_ylabel("training tokens/s (thousands)")
    ax.set_title(f"GPT-2 small, attention=flash: {gpus} GPUs vs {gpus} x one\n(bar label: scaling efficiency)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--parallel", default="ddp", choices=["ddp", "fsdp"])
    p.add_argument("--micro-batches", type=int, default=1)
    p.add_argument("--set", nargs="*", default=[], help="extra train.py overrides")
    a = p.parse_args(argv)
    if torch.cuda.device_count() < a.gpus:
        raise SystemExit(f"--gpus {a.gpus} but {torch.cuda.device_count()} CUDA GPUs are visible")
    results = []
    for n in a.contexts:
        for gpus in (1, a.gpus):
            run_dir = a.out / "runs" / f"ctx{n}-{gpus}gpu"
            overrides = [f"context={n}", f"train.batch_tokens={PER_GPU_TOKENS * a.micro_batches * gpus}", f"train.parallel={a.parallel}"]
            train(run_dir, "scaling", overrides, a.set, nproc=gpus)
            results.append({"context": n, "gpus": gpus, **throughput(run_dir)})
            print(results[-1], flush=True)
    for r in results:
        one = next(o for o in results if o["context"] == r["context"] and o["gpus"] == 1)
        r["efficiency"] = r["tokens_per_s"] / (r["gpus"] * one["tokens_per_s"])
    meta = {"device": f"{a.gpus} x {torch.cuda.get_device_name()}", "date": time.strftime("%Y-%m-%d"),
            "torch": torch.__version__, "host": platform.node(), "parallel": a.parallel,
            "micro_batch_tokens": PER_GPU_TOKENS, "micro_batches_per_gpu": a.micro_batches,
            "command": "python -m benchmarks.scaling " + " ".join(argv if argv is not None else sys.argv[1:])}
    (a.out / "scaling.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = [f"# Data-parallel scaling ({a.parallel}), GPT-2 small, attention=flash", "",
             f"{meta['device']}, torch {meta['torch']}, {meta['date']}. `{meta['command']}`", "",
             f"{a.micro_batches} micro-batch{'es' if a.micro_batches > 1 else ''} of {PER_GPU_TOKENS} tokens per GPU "
             f"per step; median tokens/s of the intervals after the first "
             f"{WARMUP_INTERVALS}; efficiency = tokens/s of N GPUs / (N x one GPU's).", "",
             "| context | GPUs | tokens/s | efficiency | MFU | peak memory (rank 0) |", "|---|---|---|---|---|---|"]
    for r in results:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        lines.append(f"| {r['context']} | {r['gpus']} | {r['tokens_per_s']:,.0f} | {r['efficiency']:.3f} | {mfu} | "
                     f"{r['peak_mem_gb']:.1f} GB |")
    (a.out / "scaling.md").write_text("\n".join(lines) + "\n")
    plot(results, a.gpus, a.out / "scaling.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
