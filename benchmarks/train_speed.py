"""End-to-end training speed, side by side in one process on one GPU: our trainer's step
(training.loop.Trainer, the step train.py runs) in several settings, against a
minimal nanoGPT-style reference (benchmarks/nanogpt_ref.py, compiled) and transformers'
GPT2LMHeadModel (eager; SDPA or its own attention), GPT-2 small, the same tokens per step.

    python -m benchmarks.train_speed --contexts 1024,4096 --out benchmarks/results/h200/train-speed

The compiled variants of a context are built and warmed up first (compilation, autotuning),
then timed in interleaved rounds (A B C A B C ...), each a window of --seconds of steps, after
--settle seconds of load: an H100 reaches its power cap within a second of full load and lowers
its clock, so windows taken at once after a cold start, or one variant long after another, are
not comparable. transformers' eager models (23-39 GB each) are timed after them, one at a time.
tokens/s = steps x tokens per step / GPU time of the window (CUDA events), the median over the
rounds (min and max beside it); the window's median SM clock and power are recorded, and the
host's median lead over the GPU at a step's end, with the share of steps at whose end the GPU
had caught up with the host (lead under 1 ms: launch-bound there). Peak memory is a variant's
own torch.cuda.max_memory_allocated over two steps (weights, optimizer state and activations).
MFU uses one formula for every variant: the FLOPs per token of our GPT-2 at that context (6 N +
12 L H d T, N the parameters without the position table or the vocabulary padding; the
attention term counts the full T x T scores, as PaLM and nanoGPT do) over the GPU's dense bf16
peak (model/gpt.py). After timing, three more steps run under torch.profiler (CUDA activity
only): GPU time per step by kernel category, GPU busy (those steps' kernel time over the
windows' step time), and the attention kernels actually launched (which one SDPA picked).
Rows are merged into OUT/train_speed.json (a rerun replaces its rows), then
OUT/train_speed.md and OUT/train_speed.png are redrawn from all rows.
"""

import argparse
import gc
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from benchmarks.harness import ROOT
from benchmarks.nanogpt_ref import NanoGPT
from model import peak_flops

# name -> (kind, train.py overrides[, micro-batch tokens of a reference model]).
# "flash" is train.py's recommended (default) setting.
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
    "flash-unpacked": ("ours", ["attention=flash", "model.qkv_packed=false"]),  # q, k, v apart (before 2026-11-23)
    "flash-max-autotune": ("ours", ["attention=flash", "train.compile_mode=max-autotune-no-cudagraphs"]),
    "flash-cudagraphs": ("ours", ["attention=flash", "train.compile_mode=reduce-overhead"]),
    "flash-chunk8k": ("ours", ["attention=flash", "model.xent_chunk=8192"]),
    "flash-chunk16k": ("ours", ["attention=flash", "model.xent_chunk=16384"]),
    "flash-mb8k": ("ours", ["attention=flash", "train.micro_batch_tokens=8192"]),  # 2 micro-batches
    "flash-mb4k": ("ours", ["attention=flash", "train.micro_batch_tokens=4096"]),  # 4 micro-batches
    # the Gluon kernels for Hopper (attention/hopper.py, issue 25): its one-kernel backward, and with its forward
    "flash-gluon-bwd": ("ours", ["attention=flash", "attention.options.gluon_backward=true"]),
    "flash-gluon-all": ("ours", ["attention=flash", "attention.options.gluon=plain", "attention.options.gluon_backward=true"]),
    # masks beyond causal (issue 24): what each token sees, at the same tokens per step
    "flash-documents": ("ours", ["attention=flash", "model.documents=true"]),
    "flash-window1k": ("ours", ["attention=flash", "model.window=1024"]),
    "flash-butterfly": ("ours", ["attention=flash", "model.block_sparse=butterfly"]),
    # transformers' attention in micro-batches of 4096 tokens: 16K at once does not fit at 4096 on 80 GB
    "hf-eager-attn-mb4k": ("hf", ["eager"], 4096),
}
CATEGORIES = [  # (category, substrings of kernel names), first match wins
    ("attention", ("flash", "fmha", "cudnn", "attn", "attention")),
    ("cross-entropy", ("xent", "log_softmax", "nll", "cross_entropy")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "sm90_", "sm80_", "matmul", "mm_")),
    ("other", ("layer_norm",)),  # before "optimizer": LayerNorm is not the clip's norm
    ("optimizer", ("adam", "multi_tensor", "foreach", "lpnorm")),
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


def build(kind, overrides, context, batch_tokens, tokens, micro_tokens=None):
    """A step() closure doing one optimizer step on batch_tokens tokens, and a description."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    if kind == "ours":
        from training.distributed import Dist
        from training.loop import Trainer
        cfg = compose([f"context={context}", f"train.batch_tokens={batch_tokens}",
                       f"train.micro_batch_tokens={batch_tokens}", *overrides])  # a variant's overrides win
        trainer = Trainer(cfg, Dist(device="cuda"), tokens)  # train.py's own model, optimizer, batches and step
        trainer.start_batches()

        def step():
            return trainer.step()[0]
        t, mc = cfg.train, trainer.model.cfg
        return step, (f"train.py {' '.join(overrides)}: {trainer.how}, cross-entropy {mc.cross_entropy}, "
                      f"vocab {mc.padded_vocab}, clip {t.grad_clip}, prefetch {t.prefetch}, "
                      f"{trainer.accum} micro-batch{'es' if trainer.accum > 1 else ''} of {trainer.micro_batch} x {context}")
    micro_tokens = micro_tokens or batch_tokens
    accum = batch_tokens // micro_tokens
    x = torch.randint(0, 50257, (micro_tokens // context, context + 1), device="cuda")
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
    if accum > 1:
        how += f", {accum} micro-batches of {micro_tokens // context} x {context}"
    optimizer = optimizer_for(model)

    def step():
        for _ in range(accum):
            with autocast:
                loss = loss_fn()
            (loss / accum).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step, how


class Sampler:
    """Median SM clock (MHz) and power (W) over a window, sampled every 0.1 s on a thread (None
    where NVML is missing). Under sustained load an H100 reaches its power cap within a second
    and lowers its clock: tokens/s depend on when a window is taken, so each is reported."""

    def __enter__(self):
        import threading
        self.clock, self.power, self.stop = [], [], threading.Event()

        def sample():
            while not self.stop.wait(0.1):
                try:
                    self.clock.append(torch.cuda.clock_rate())
                    self.power.append(torch.cuda.power_draw() / 1000)
                except Exception:  # no pynvml: the rows say None
                    return
        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def medians(self):
        return (float(np.median(self.clock)) if self.clock else None,
                float(np.median(self.power)) if self.power else None)


def window(step, seconds):
    """Steps for `seconds` of wall clock: (steps, GPU seconds from the first step's start to the
    last one's end, the host's leads over the GPU at each step's end in ms, past the first three
    steps, which start from an idle GPU). A lead near 0 means the GPU had run out of work when
    the host finished enqueueing the step (launch-bound there); a large one, that it had not."""
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    start.record()
    t0, marks = time.perf_counter(), []
    while not marks or marks[-1][0] < seconds:
        step()
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        marks.append((time.perf_counter() - t0, end))
    torch.cuda.synchronize()
    leads = [start.elapsed_time(e) - 1000 * h for h, e in marks[3:] or marks]
    return len(marks), start.elapsed_time(marks[-1][1]) / 1000, leads


def kernel_profile(step, step_ms, steps=3):
    """GPU ms per step by kernel category, the top kernels, the attention kernels, and GPU busy:
    the kernels' time per step over the timed windows' step time (both at the sustained clock).
    The traced steps start and end with a synchronisation, so the trace holds exactly their
    kernels; the profiler slows the host, but not the kernels, so their durations stand while
    the gaps between them in the trace would not (they are not used)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    by_cat, by_kernel, busy = {}, {}, 0.0
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us <= 0 or e.key.startswith(("ProfilerStep", "cudaDevice")):
            continue
        ms = us / 1000 / steps
        busy += ms
        if "Memcpy" in e.key or "Memset" in e.key:
            continue
        by_cat[category(e.key)] = by_cat.get(category(e.key), 0.0) + ms
        by_kernel[e.key[:90]] = by_kernel.get(e.key[:90], 0.0) + ms
    top = sorted(((round(ms, 3), k) for k, ms in by_kernel.items()), reverse=True)[:12]
    attention = sorted(k for k in by_kernel if category(k) == "attention")
    return {k: round(v, 3) for k, v in by_cat.items()}, top, attention, busy / step_ms


def build_variant(name, context, args, tokens):
    """(row, step or None): compiled and warmed up; row['peak_mem_gb'] is this variant's own
    peak (weights, optimizer state, activations) over warm-up steps, whatever else is alive."""
    kind, overrides, *micro = VARIANTS[name]
    row = {"variant": name, "kind": kind, "overrides": overrides, "context": context,
           "batch_tokens": args.batch_tokens}
    try:
        before = torch.cuda.memory_allocated()
        step, row["setting"] = build(kind, overrides, context, args.batch_tokens, tokens, *micro)
        start = time.perf_counter()
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        row["warmup_s"] = round(time.perf_counter() - start, 1)
        print(f"{name} at {context}: built and warmed up in {row['warmup_s']} s", flush=True)  # where a time limit went
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            step()
        torch.cuda.synchronize()
        # Under CUDA graphs the step's memory is a private pool set up at capture, during the
        # warm-up, and a replay allocates nothing: the peak above would miss it, so none is given.
        graphs = any("reduce-overhead" in o for o in overrides)
        row["peak_mem_gb"] = None if graphs else (torch.cuda.max_memory_allocated() - before) / 2**30
        return row, step
    except torch.OutOfMemoryError:
        row["error"] = "OOM"
    except Exception as e:  # one failing variant must not lose the others' numbers
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return row, None


def groups(names):
    """The variants timed together in interleaved rounds (the compiled ones, ~8 GB each), then
    each of the others alone (transformers' eager models, 23-39 GB, which would not fit beside
    them in 80 GB and whose ratios are 3-11x, far outside clock drift)."""
    together = [n for n in names if VARIANTS[n][0] != "hf"]
    return [together] * bool(together) + [[n] for n in names if VARIANTS[n][0] == "hf"]


def time_rounds(live, args):
    """Timed windows of every live (row, step) in `rounds` interleaved rounds, after `settle`
    seconds of load so that every window runs at the sustained clock; a variant that fails
    (out of memory) gets an error and leaves the rounds."""
    if live:
        window(live[0][1], args.settle)
    for _ in range(args.rounds):
        for row, step in list(live):
            try:
                with Sampler() as sampler:
                    steps, seconds, leads = window(step, args.seconds)
            except torch.OutOfMemoryError:
                row["error"] = "OOM"
                live.remove((row, step))
                continue
            clock, power = sampler.medians()
            for key, value in (("tokens_per_s_rounds", steps * args.batch_tokens / seconds), ("sm_clock_mhz_rounds", clock),
                               ("power_w_rounds", power), ("gpu_lead_ms_rounds", float(np.median(leads))),
                               ("steps_gpu_caught_up_rounds", sum(lead < 1.0 for lead in leads) / len(leads))):
                row.setdefault(key, []).append(value)
    for row, step in live:
        row["tokens_per_s"] = float(np.median(row["tokens_per_s_rounds"]))
        row["step_ms"] = 1000 * args.batch_tokens / row["tokens_per_s"]
        row["gpu_lead_ms"] = float(np.median(row["gpu_lead_ms_rounds"]))
        row["steps_gpu_caught_up"] = max(row["steps_gpu_caught_up_rounds"])
        clocks = [c for c in row["sm_clock_mhz_rounds"] if c is not None]
        row["sm_clock_mhz"] = float(np.median(clocks)) if clocks else None
        row["gpu_ms_by_category"], row["top_kernels"], row["attention_kernels"], row["gpu_busy"] = kernel_profile(step, row["step_ms"])


def measure(names, context, args, tokens):
    """Rows for the variants at one context, group by group (groups()): a group's variants are
    all built first, then timed together (time_rounds); tokens/s is the median over the rounds."""
    rows = []
    for group in groups(names):
        built = [build_variant(name, context, args, tokens) for name in group]
        time_rounds([(row, step) for row, step in built if step is not None], args)
        rows += [row for row, _ in built]
        del built
        gc.collect()
        torch.cuda.empty_cache()
        torch._dynamo.reset()
    return rows


def add_mfu(rows):
    from model import GPT, GPTConfig
    peak = peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    with torch.device("meta"):  # the FLOP count needs the shapes only
        fpt = {c: GPT(GPTConfig(context=c)).flops_per_token(c) for c in {r["context"] for r in rows}}
    for r in rows:
        # A sliding window or a block mask skips most of the T x T scores that the count takes as
        # done: no MFU for those rows (the dense count would put them above 100%).
        if any(o.startswith(("model.window=", "model.block_sparse=")) for o in VARIANTS.get(r["variant"], ("", []))[1]):
            r.pop("mfu", None)
            continue
        if peak and "tokens_per_s" in r:
            r["flops_per_token"] = fpt[r["context"]]
            r["mfu"] = fpt[r["context"]] * r["tokens_per_s"] / peak
    return rows


def save(out, old_rows, new_rows, meta):
    """Merges new_rows into the stored ones (a rerun replaces its rows) and rewrites the JSON."""
    keys = {(r["variant"], r["context"]) for r in new_rows}
    rows = add_mfu([r for r in old_rows if (r["variant"], r["context"]) not in keys] + new_rows)
    rows.sort(key=lambda r: (r["context"], list(VARIANTS).index(r["variant"])))
    harness.write(out, "train_speed", meta, rows)
    return rows


def ratio(row, base):
    """(tokens/s ratio of the medians, "(lo-hi)" of the per-round ratios when both rows were
    timed in the same interleaved rounds, else "")."""
    if base is None:
        return float("nan"), ""
    mine, theirs = row.get("tokens_per_s_rounds"), base.get("tokens_per_s_rounds")
    paired = (mine and theirs and len(mine) == len(theirs) > 1 and row.get("command") == base.get("command")
              and row is not base)
    per_round = [a / b for a, b in zip(mine, theirs)] if paired else []
    return row["tokens_per_s"] / base["tokens_per_s"], (f"({min(per_round):.2f}-{max(per_round):.2f})" if per_round else "")


def _num(x, fmt):
    return "" if x is None else fmt.format(x)


def markdown(rows, meta):
    lines = [f"# Training speed, GPT-2 small, {meta['device']}", "",
             f"torch {meta['torch']}, Triton {meta['triton']}. Rows are merged from the runs listed at the end; "
             "ratios are against the nanoGPT / HF row of the same run where it has one. The nanoGPT-style "
             "reference runs twice: with SDPA's default kernel (cuDNN on Hopper under torch.compile) and pinned "
             "to SDPA's FlashAttention-2.", "",
             "Tokens per step " + ", ".join(sorted({str(r['batch_tokens']) for r in rows})) +
             "; MFU = FLOPs per token (our GPT-2, 6N + 12 L H d T) x tokens/s / dense bf16 peak, not given for a "
             "sliding window or block-sparse attention (the count takes every score as computed).", ""]
    for ctx in sorted({r["context"] for r in rows}):
        group = [r for r in rows if r["context"] == ctx and "error" not in r]
        def base(variant, row):  # the same run's row if it measured one, else any run's
            same = [r for r in group if r["variant"] == variant and r.get("command") == row.get("command")]
            return next(iter(same or [r for r in group if r["variant"] == variant]), None)
        lines += [f"## Context {ctx}", "",
                  "| variant | tokens/s (rounds min-max) | vs nanoGPT, SDPA default (rounds) | vs nanoGPT, SDPA FA2 (rounds) | "
                  "vs HF eager: sdpa / eager attention | MFU | "
                  "peak GB | step ms | SM MHz | host lead ms (GPU caught up) | GPU busy | attention ms | matmul ms | xent ms | "
                  "optim ms | other ms | attention kernels |",
                  "|" + "---|" * 17]
        for r in [r for r in rows if r["context"] == ctx]:
            if "error" in r:
                lines.append(f"| {r['variant']} | {r['error']} |" + " |" * 15)
                continue
            c = r["gpu_ms_by_category"]
            rounds = r.get("tokens_per_s_rounds", [r["tokens_per_s"]])
            hf = " / ".join(f"{ratio(r, base(v, r))[0]:.1f}x" for v in ("hf-eager", "hf-eager-attn", "hf-eager-attn-mb4k")
                            if base(v, r))
            refs = " | ".join("{:.2f}x {}".format(*ratio(r, base(v, r))) if base(v, r) else "" for v in ("nanogpt", "nanogpt-sdpa-flash"))
            clock = r.get("sm_clock_mhz")
            lead = (f"{r['gpu_lead_ms']:.0f} ({r['steps_gpu_caught_up']:.0%})"  # rows of 2026-11-23 on
                    if "steps_gpu_caught_up" in r else "")
            lines.append(
                f"| {r['variant']} | {r['tokens_per_s']:,.0f} ({min(rounds) / 1e3:.0f}K-{max(rounds) / 1e3:.0f}K) | "
                f"{refs} | {hf} | {_num(r.get('mfu'), '{:.1%}')} | {_num(r['peak_mem_gb'], '{:.1f}')} | "
                f"{r['step_ms']:.1f} | {f'{clock:.0f}' if clock else ''} | {lead} | "
                f"{r['gpu_busy']:.0%} | " +
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
    p.add_argument("--variants", default="flash,nanogpt,nanogpt-sdpa-flash,sdpa,sdpa-flash,flash-eager,hf-eager,"
                                         "hf-eager-attn-mb4k")
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--warmup", type=int, default=8, help="steps per variant before any timing (compilation, autotuning)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds of load before the first window")
    p.add_argument("--seconds", type=float, default=6.0, help="length of one timed window")
    p.add_argument("--rounds", type=int, default=3, help="timed windows per variant, interleaved")
    p.add_argument("--out", type=Path, default=Path("runs/train_speed"), help="where the table goes (default: %(default)s)")
    p.add_argument("--redraw", action="store_true", help="only redraw the Markdown and PNG from OUT's JSON")
    args = p.parse_args()
    if args.redraw:
        stored = json.loads((args.out / "train_speed.json").read_text())
        (args.out / "train_speed.md").write_text(markdown(stored["rows"], stored["meta"]))
        return plot(stored["rows"], args.out / "train_speed.png")
    if not torch.cuda.is_available():
        p.error("measures training on a CUDA GPU and none is visible (--redraw works without one)")
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; available: {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "train_speed.json"
    old = json.loads(store.read_text()) if store.is_file() else {"rows": []}
    tokens = np.random.default_rng(0).integers(0, 50257, 50_000_000, dtype=np.uint16)
    meta = harness.metadata(host=platform.node())
    new = []
    for context in map(int, args.contexts.split(",")):
        for row in measure(args.variants.split(","), context, args, tokens):
            new.append({**row, "command": meta["command"], "date": meta["date"]})
            print(json.dumps({k: v for k, v in row.items() if k not in ("top_kernels", "overrides")}), flush=True)
        rows = save(args.out, old["rows"], new, meta)  # after each context: a time-out loses nothing
    (args.out / "train_speed.md").write_text(markdown(rows, meta))
    plot(rows, args.out / "train_speed.png")
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
