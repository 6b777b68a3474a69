"""End-to-end training speed, side by side in one process on one GPU: our trainer's step
(train.py's build_model / compiled / TrainBatches / train_step) in several settings, against a
minimal nanoGPT-style reference (benchmarks/nanogpt_ref.py, compiled) and transformers'
GPT2LMHeadModel (eager, SDPA attention), GPT-2 small, the same tokens per step.

    python benchmarks/train_speed.py --contexts 1024,4096 --out benchmarks/results/h100/train-speed

Each variant: warm-up steps (compilation, autotuning), then timed steps (wall clock between two
device synchronisations); tokens/s = steps x tokens per step / time. Peak memory is
torch.cuda.max_memory_allocated over the timed steps (weights, optimizer state and
activations). MFU uses one formula for every variant: the FLOPs per token of our GPT-2 at that
context (6 N + 12 L H d T, N the parameters without the position table or the vocabulary
padding; the attention term counts the full T x T scores, as PaLM and nanoGPT do) over the
GPU's dense bf16 peak (model/gpt.py). After timing, two more steps run under torch.profiler:
GPU time per step by kernel category, and the attention kernels actually launched (which one
SDPA picked). Rows are merged into OUT/train_speed.json (a rerun replaces its rows), then
OUT/train_speed.md and OUT/train_speed.png are redrawn from all rows.
"""

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.nanogpt_ref import NanoGPT  # noqa: E402
from model import peak_flops  # noqa: E402

# name -> (kind, train.py overrides). "flash" is train.py's recommended (default) setting.
VARIANTS = {
    "nanogpt": ("nanogpt", []),  # SDPA chooses its kernel (cuDNN on Hopper under torch 2.11)
    "nanogpt-sdpa-flash": ("nanogpt", ["flash"]),  # SDPA pinned to its FlashAttention-2 kernel
    "hf-eager": ("hf", ["sdpa"]),
    "hf-eager-attn": ("hf", ["eager"]),  # transformers' own attention (scores in memory)
    "flash": ("ours", ["attention=flash"]),
    "sdpa": ("ours", ["attention=sdpa"]),
    "sdpa-flash": ("ours", ["attention=sdpa", "attention.options.kernel=flash"]),
    "sdpa-cudnn": ("ours", ["attention=sdpa", "attention.options.kernel=cudnn"]),
    "flash-eager": ("ours", ["attention=flash", "train.compile=false"]),
    # the changes one by one, from the previous default path (compiled) to the new one
    "flash-old": ("ours", ["attention=flash", "model.vocab_multiple=1", "model.cross_entropy=upcast",
                           "train.prefetch=false"]),
    "flash-pad": ("ours", ["attention=flash", "model.cross_entropy=upcast", "train.prefetch=false"]),
    "flash-pad-plain": ("ours", ["attention=flash", "model.cross_entropy=plain", "train.prefetch=false"]),
    "flash-pad-fused": ("ours", ["attention=flash", "model.cross_entropy=fused", "train.prefetch=false"]),
    "flash-plain": ("ours", ["attention=flash", "model.cross_entropy=plain"]),
    "flash-liger": ("ours", ["attention=flash", "model.cross_entropy=liger"]),
    "flash-noclip": ("ours", ["attention=flash", "train.grad_clip=0"]),
    "flash-max-autotune": ("ours", ["attention=flash", "train.compile_mode=max-autotune-no-cudagraphs"]),
    "flash-cudagraphs": ("ours", ["attention=flash", "train.compile_mode=reduce-overhead"]),
    "flash-chunk8k": ("ours", ["attention=flash", "model.xent_chunk=8192"]),
    "flash-chunk16k": ("ours", ["attention=flash", "model.xent_chunk=16384"]),
    "flash-mb8k": ("ours", ["attention=flash", "train.micro_batch_tokens=8192"]),  # 2 micro-batches
    "flash-mb4k": ("ours", ["attention=flash", "train.micro_batch_tokens=4096"]),  # 4 micro-batches
}
CATEGORIES = [  # (category, substrings of kernel names), first match wins
    ("attention", ("flash", "fmha", "cudnn", "attn", "attention")),
    ("cross-entropy", ("xent", "log_softmax", "nll", "cross_entropy")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "sm90_", "sm80_", "matmul", "mm_")),
    ("optimizer", ("adam", "multi_tensor", "foreach", "norm_")),
]


def category(kernel):
    k = kernel.lower()
    return next((c for c, keys in CATEGORIES if any(s in k for s in keys)), "other")


def compose(overrides):
    from hydra import compose as hydra_compose, initialize_config_dir
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides)


def optimizer_for(model):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                             lr=6e-4, betas=(0.9, 0.95), fused=True)


def build(kind, overrides, context, batch_tokens, tokens):
    """A step() closure doing one optimizer step on batch_tokens tokens, and a description."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    micro = batch_tokens // context
    if kind == "ours":
        import train
        from data.batches import TrainBatches
        cfg = compose([f"context={context}", f"train.batch_tokens={batch_tokens}",
                       f"train.micro_batch_tokens={batch_tokens}", *overrides])  # a variant's overrides win
        t = cfg.train
        micro, accum = train.batch_shape(cfg)
        model = train.build_model(cfg).cuda()
        optimizer = model.optimizer(t.lr, t.weight_decay, t.betas, "cuda")
        scheduler = train.lr_schedule(optimizer, t)
        fwd, how = train.compiled(model, t, on_cuda=True)
        batches = TrainBatches(tokens, micro, context, torch.Generator().manual_seed(0), "cuda", prefetch=t.prefetch)

        def step():
            loss, _ = train.train_step(fwd, model, optimizer, batches, accum, t.grad_clip, autocast)
            scheduler.step()
            return loss
        mc = model.cfg
        return step, (f"train.py {' '.join(overrides)}: {how}, cross-entropy {mc.cross_entropy}, "
                      f"vocab {mc.padded_vocab}, clip {t.grad_clip}, prefetch {t.prefetch}, "
                      f"{accum} micro-batch{'es' if accum > 1 else ''} of {micro} x {context}")
    x = torch.randint(0, 50257, (micro, context + 1), device="cuda")
    x, y = x[:, :-1].contiguous(), x[:, 1:].contiguous()  # one batch held on the GPU
    if kind == "nanogpt":
        from torch.nn.attention import SDPBackend
        model = NanoGPT(context, sdpa_backend=SDPBackend.FLASH_ATTENTION if overrides == ["flash"] else None).cuda()
        fwd = torch.compile(model)
        loss_fn = lambda: fwd(x, y)  # noqa: E731
        how = (f"nanoGPT-style model, SDPA {'pinned to flash' if overrides else 'default kernel'}, torch.compile, "
               "fused AdamW, no clipping, batch held on the GPU")
    elif kind == "hf":
        from transformers import GPT2Config, GPT2LMHeadModel
        model = GPT2LMHeadModel(GPT2Config(n_positions=context, attn_implementation=overrides[0])).cuda()
        loss_fn = lambda: model(input_ids=x, labels=x).loss  # noqa: E731
        how = f"transformers GPT2LMHeadModel, eager, attn_implementation={overrides[0]}, fused AdamW, no clipping"
    else:
        raise ValueError(kind)
    optimizer = optimizer_for(model)

    def step():
        with autocast:
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step, how


def profile(step, steps=2):
    """GPU time per step by kernel category (ms), the top kernels, and the attention kernels."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    by_cat, kernels = {}, []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us <= 0 or e.key.startswith(("ProfilerStep", "cudaDevice")) or "Memcpy" in e.key or "Memset" in e.key:
            continue
        ms = us / 1000 / steps
        by_cat[category(e.key)] = by_cat.get(category(e.key), 0.0) + ms
        kernels.append((ms, e.key[:90]))
    kernels.sort(reverse=True)
    attention = sorted({k for _, k in kernels if category(k) == "attention"})
    return {k: round(v, 3) for k, v in by_cat.items()}, [(round(ms, 3), k) for ms, k in kernels[:12]], attention


def measure(name, context, args, tokens):
    kind, overrides = VARIANTS[name]
    row = {"variant": name, "kind": kind, "overrides": overrides, "context": context,
           "batch_tokens": args.batch_tokens}
    try:
        step, row["setting"] = build(kind, overrides, context, args.batch_tokens, tokens)
        start = time.perf_counter()
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        row["warmup_s"] = round(time.perf_counter() - start, 1)
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        loss.item()  # waits for the GPU
        elapsed = time.perf_counter() - start
        row["step_ms"] = 1000 * elapsed / args.steps
        row["tokens_per_s"] = args.steps * args.batch_tokens / elapsed
        row["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        row["loss"] = loss.item()
        row["gpu_ms_by_category"], row["top_kernels"], row["attention_kernels"] = profile(step)
        row["gpu_busy"] = sum(row["gpu_ms_by_category"].values()) / row["step_ms"]
    except torch.OutOfMemoryError:
        row["error"] = "OOM"
    except Exception as e:  # one failing variant must not lose the others' numbers
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    gc.collect()
    torch.cuda.empty_cache()
    torch._dynamo.reset()
    return row


def add_mfu(rows):
    from model import GPT, GPTConfig
    peak = peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    with torch.device("meta"):  # the FLOP count needs the shapes only
        fpt = {c: GPT(GPTConfig(context=c)).flops_per_token(c) for c in {r["context"] for r in rows}}
    for r in rows:
        if peak and "tokens_per_s" in r:
            r["flops_per_token"] = fpt[r["context"]]
            r["mfu"] = fpt[r["context"]] * r["tokens_per_s"] / peak
    return rows


def save(out, old_rows, new_rows, meta):
    """Merges new_rows into the stored ones (a rerun replaces its rows) and rewrites the JSON."""
    keys = {(r["variant"], r["context"]) for r in new_rows}
    rows = add_mfu([r for r in old_rows if (r["variant"], r["context"]) not in keys] + new_rows)
    rows.sort(key=lambda r: (r["context"], list(VARIANTS).index(r["variant"])))
    (out / "train_speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return rows


def markdown(rows, meta):
    lines = [f"# Training speed, GPT-2 small, {meta['device']}", "",
             f"torch {meta['torch']}, Triton {meta['triton']}. Rows are merged from the runs listed at the end; "
             "ratios are against the nanoGPT / HF row of the same run where it has one.", "",
             "Tokens per step " + ", ".join(sorted({str(r['batch_tokens']) for r in rows})) +
             "; MFU = FLOPs per token (our GPT-2, 6N + 12 L H d T) x tokens/s / dense bf16 peak.", ""]
    for ctx in sorted({r["context"] for r in rows}):
        group = [r for r in rows if r["context"] == ctx]
        def base(variant, row):  # the same run's row if it measured one, else any run's
            same = [r for r in group if r["variant"] == variant and r.get("command") == row.get("command")]
            return next((r.get("tokens_per_s") for r in same or [r for r in group if r["variant"] == variant]), None)
        lines += [f"## Context {ctx}", "",
                  "| variant | tokens/s | vs nanoGPT | vs HF eager | MFU | peak GB | step ms | GPU busy | "
                  "attention ms | matmul ms | xent ms | optim ms | other ms | attention kernels |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in group:
            if "error" in r:
                lines.append(f"| {r['variant']} | {r['error']} |" + " |" * 12)
                continue
            c = r["gpu_ms_by_category"]
            tps, ref, hf = r["tokens_per_s"], base("nanogpt", r), base("hf-eager", r)
            lines.append(
                f"| {r['variant']} | {tps:,.0f} | {tps / ref if ref else float('nan'):.2f}x | "
                f"{tps / hf if hf else float('nan'):.1f}x | {r.get('mfu', float('nan')):.1%} | {r['peak_mem_gb']:.1f} | "
                f"{r['step_ms']:.1f} | {r['gpu_busy']:.0%} | " +
                " | ".join(f"{c.get(k, 0):.1f}" for k in ("attention", "matmul", "cross-entropy", "optimizer", "other")) +
                f" | {'; '.join(k[:40] for k in r['attention_kernels'][:3])} |")
        lines.append("")
    lines += ["## Settings", ""] + sorted({f"- {r['variant']}: {r['setting']}" for r in rows if "setting" in r}) + [""]
    lines += ["## Runs", ""]
    for cmd in dict.fromkeys(r.get("command", "?") for r in rows):
        done = ", ".join(f"{r['variant']}@{r['context']}" for r in rows if r.get("command", "?") == cmd)
        lines.append(f"- {next(r.get('date', '?') for r in rows if r.get('command', '?') == cmd)}: `{cmd}`: {done}")
    lines.append("")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ctxs = sorted({r["context"] for r in rows})
    names = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(names) * len(ctxs) / 2), 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [next((r.get("tokens_per_s", 0) / 1e3 for r in rows if r["variant"] == name and r["context"] == c), 0)
                for c in ctxs]
        ax.bar([j + i * width for j in range(len(ctxs))], vals, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ctxs))], [f"context {c}" for c in ctxs])
    ax.set_ylabel("thousand tokens/s (training)")
    ax.set_title("GPT-2 small training throughput, one GPU")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", default="1024,4096")
    p.add_argument("--variants", default="nanogpt,hf-eager,flash,sdpa,sdpa-flash,sdpa-cudnn,flash-eager")
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--redraw", action="store_true", help="only redraw the Markdown and PNG from OUT's JSON")
    args = p.parse_args()
    if args.redraw:
        stored = json.loads((args.out / "train_speed.json").read_text())
        (args.out / "train_speed.md").write_text(markdown(stored["rows"], stored["meta"]))
        return plot(stored["rows"], args.out / "train_speed.png")
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; available: {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "train_speed.json"
    old = json.loads(store.read_text()) if store.is_file() else {"rows": []}
    tokens = np.random.default_rng(0).integers(0, 50257, 50_000_000, dtype=np.uint16)
    meta = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "host": platform.node(),
            "command": "python benchmarks/train_speed.py " + " ".join(sys.argv[1:])}
    new = []
    for context in map(int, args.contexts.split(",")):
        for name in args.variants.split(","):
            row = {**measure(name, context, args, tokens), "command": meta["command"], "date": meta["date"]}
            new.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("top_kernels", "overrides")}), flush=True)
            rows = save(args.out, old["rows"], new, meta)  # after each row: a time-out loses nothing
    (args.out / "train_speed.md").write_text(markdown(rows, meta))
    plot(rows, args.out / "train_speed.png")
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
