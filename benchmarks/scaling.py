"""Data-parallel scaling: tokens/s of N GPUs against N x one GPU (weak scaling: 16K tokens per
GPU per step at every world size, so each GPU runs the same step and only the gradient
reduction is added), GPT-2 small with our kernel, through train.py under torchrun.

    python -m benchmarks.scaling OUT_DIR [--gpus 2] [--contexts 1024 4096] [--parallel ddp]
                                 [--micro-batches 1] [--set data.num_proc=16 ...]

--micro-batches K: each GPU accumulates K micro-batches of 16K tokens per step, so gradients
are reduced once per K forward/backward passes (1: the worst case for communication; GPT-2's
0.5M-token batch on 8 GPUs is K = 4).

Throughput is the median tokens/s of the logged intervals after the first two (compilation,
autotuning and DDP's first bucket rebuild: benchmarks/harness.py steady_tokens_per_s);
efficiency = tokens/s(N) / (N x tokens/s(1)). Writes OUT_DIR/scaling.json,
scaling.md and scaling.png, with the runs under OUT_DIR/runs.
"""

import argparse
import platform
import statistics
from pathlib import Path

import torch

from benchmarks import harness

PER_GPU_TOKENS = 16384
WARMUP_INTERVALS = 2


def throughput(run_dir):
    rows = [r for r in harness.metrics(run_dir) if "tokens_per_s" in r]
    return {"tokens_per_s": harness.steady_tokens_per_s(rows, skip=WARMUP_INTERVALS),
            "intervals": len(rows[WARMUP_INTERVALS:]),
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
            harness.train(run_dir, ["experiment=scaling", *overrides, *a.set], nproc=gpus)
            results.append({"context": n, "gpus": gpus, **throughput(run_dir)})
            print(results[-1], flush=True)
    for r in results:
        one = next(o for o in results if o["context"] == r["context"] and o["gpus"] == 1)
        r["efficiency"] = r["tokens_per_s"] / (r["gpus"] * one["tokens_per_s"])
    meta = harness.metadata(argv, device=f"{a.gpus} x {torch.cuda.get_device_name()}", host=platform.node(),
                            parallel=a.parallel, micro_batch_tokens=PER_GPU_TOKENS, micro_batches_per_gpu=a.micro_batches)
    text = (f"{a.micro_batches} micro-batch{'es' if a.micro_batches > 1 else ''} of {PER_GPU_TOKENS} tokens per GPU "
            f"per step; median tokens/s of the intervals after the first {WARMUP_INTERVALS}; efficiency = tokens/s "
            "of N GPUs / (N x one GPU's).\n\n" + harness.md_table(
                ["context", "GPUs", "tokens/s", "efficiency", "MFU", "peak memory (rank 0)"],
                [[r["context"], r["gpus"], f"{r['tokens_per_s']:,.0f}", f"{r['efficiency']:.3f}",
                  f"{r['mfu']:.1%}" if r["mfu"] is not None else "-", f"{r['peak_mem_gb']:.1f} GB"] for r in results]))
    harness.write(a.out, "scaling", meta, results, text, f"Data-parallel scaling ({a.parallel}), GPT-2 small, attention=flash")
    plot(results, a.gpus, a.out / "scaling.png")
    print(text)


if __name__ == "__main__":
    main()
