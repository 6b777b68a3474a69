"""Data-parallel scaling: tokens/s of N GPUs against N x one GPU, GPT-2 with our kernel,
through train.py under torchrun.

    python -m benchmarks.scaling OUT_DIR [--gpus 1 2 4 8] [--contexts 1024 4096] [--model gpt2-small]
                                 [--parallel ddp|fsdp] [--batch-tokens 524288 | --micro-batches 1]
                                 [--set data.num_proc=16 ...]

Two ways to hold the work: --micro-batches K (weak scaling: each GPU accumulates K micro-batches
of 16K tokens a step at every world size, so only the gradient reduction is added; K = 1 is the
worst case for communication), or --batch-tokens B (the global batch fixed, as a training run
keeps it: each GPU accumulates B / (N x 16K) micro-batches, derived; the paper's 0.5M-token
batch is B = 524288, 32 micro-batches on one GPU and 4 on eight).

Throughput is the median tokens/s of the logged intervals after the first two (compilation,
autotuning and DDP's first bucket rebuild: benchmarks/harness.py steady_tokens_per_s);
efficiency = tokens/s(N) / (N x tokens/s(1)). Writes OUT_DIR/scaling.json, scaling.md and
scaling.png, with the runs under OUT_DIR/runs (a finished run is reused: a cut call resumes).
--device cpu runs the same on the CPU's gloo backend (tests: 2 ranks of gpt2-tiny).
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


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, n in enumerate(sorted({r["context"] for r in results})):
        rows = sorted((r for r in results if r["context"] == n), key=lambda r: r["gpus"])
        gpus = [r["gpus"] for r in rows]
        ax.plot(gpus, [g * rows[0]["tokens_per_s"] / 1e3 for g in gpus], ls="--", color=f"C{i}", alpha=0.5)
        ax.plot(gpus, [r["tokens_per_s"] / 1e3 for r in rows], marker="o", color=f"C{i}", label=f"context {n}")
        for r in rows[1:]:
            ax.annotate(f"{r['efficiency']:.2f}", (r["gpus"], r["tokens_per_s"] / 1e3), textcoords="offset points",
                        xytext=(4, -12), fontsize=8)
    ax.set_xticks(sorted({r["gpus"] for r in results}))
    ax.set(xlabel="GPUs", ylabel="training tokens/s (thousands)",
           title="Data-parallel scaling (dashed: N x one GPU; labels: efficiency)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def batch_tokens(a, gpus):
    """The global batch of a run on `gpus` ranks: fixed (--batch-tokens) or grown with the ranks
    (--micro-batches); a batch the ranks cannot split into whole micro-batches is refused."""
    if not a.batch_tokens:
        return a.micro_batch_tokens * a.micro_batches * gpus
    if a.batch_tokens % (gpus * a.micro_batch_tokens):
        raise SystemExit(f"--batch-tokens {a.batch_tokens} is not a whole number of {a.micro_batch_tokens}-token "
                         f"micro-batches on each of {gpus} GPUs")
    return a.batch_tokens


def overrides(a, context, gpus):
    """train.py's overrides for one run."""
    device = ["train.device=cpu"] if a.device == "cpu" else []
    return [f"context={context}", f"model={a.model}", f"train.batch_tokens={batch_tokens(a, gpus)}",
            f"train.micro_batch_tokens={a.micro_batch_tokens}", f"train.parallel={a.parallel}", *device, *a.set]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="world sizes (1, the baseline, is always run)")
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--model", default="gpt2-small", help="a conf/model size")
    p.add_argument("--parallel", default="ddp", choices=["ddp", "fsdp"])
    p.add_argument("--batch-tokens", type=int, help="global tokens a step, fixed at every world size")
    p.add_argument("--micro-batches", type=int, default=1, help="micro-batches per GPU a step (without --batch-tokens)")
    p.add_argument("--micro-batch-tokens", type=int, default=PER_GPU_TOKENS)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--set", nargs="*", default=[], help="extra train.py overrides")
    a = p.parse_args(argv)
    world = sorted({1, *a.gpus})
    if a.device == "cuda" and torch.cuda.device_count() < world[-1]:
        raise SystemExit(f"--gpus {world[-1]} but {torch.cuda.device_count()} CUDA GPUs are visible")
    for gpus in world:
        batch_tokens(a, gpus)   # every world size checked before the first run
    results = []
    for n in a.contexts:
        for gpus in world:
            run_dir = a.out / "runs" / f"ctx{n}-{gpus}gpu"
            harness.train(run_dir, ["experiment=scaling", *overrides(a, n, gpus)], nproc=gpus)
            batch = batch_tokens(a, gpus)
            results.append({"context": n, "gpus": gpus, "batch_tokens": batch,
                            "micro_batches_per_gpu": batch // (gpus * a.micro_batch_tokens), **throughput(run_dir)})
            print(results[-1], flush=True)
    for r in results:
        one = next(o for o in results if o["context"] == r["context"] and o["gpus"] == 1)
        r["efficiency"] = r["tokens_per_s"] / (r["gpus"] * one["tokens_per_s"])
    name = torch.cuda.get_device_name() if a.device == "cuda" else "CPU (gloo)"
    meta = harness.metadata(argv, device=f"up to {world[-1]} x {name}", host=platform.node(), model=a.model,
                            parallel=a.parallel, micro_batch_tokens=a.micro_batch_tokens, batch_tokens=a.batch_tokens,
                            micro_batches_per_gpu=None if a.batch_tokens else a.micro_batches)
    hold = (f"{a.batch_tokens:,} tokens a step at every world size (micro-batches per GPU derived)" if a.batch_tokens
            else f"{a.micro_batches} micro-batch{'es' if a.micro_batches > 1 else ''} of {a.micro_batch_tokens} tokens "
                 "per GPU per step")
    text = (f"{a.model}, {a.parallel}, {hold}; median tokens/s of the intervals after the first {WARMUP_INTERVALS}; "
            "efficiency = tokens/s of N GPUs / (N x one GPU's).\n\n" + harness.md_table(
                ["context", "GPUs", "micro-batches per GPU", "tokens/s", "efficiency", "MFU", "peak memory (rank 0)"],
                [[r["context"], r["gpus"], r["micro_batches_per_gpu"], f"{r['tokens_per_s']:,.0f}", f"{r['efficiency']:.3f}",
                  f"{r['mfu']:.1%}" if r["mfu"] is not None else "-", f"{r['peak_mem_gb']:.1f} GB"] for r in results]))
    harness.write(a.out, "scaling", meta, results, text, f"Data-parallel scaling ({a.parallel}), {a.model}, attention=flash")
    plot(results, a.out / "scaling.png")
    print(text)


if __name__ == "__main__":
    main()
