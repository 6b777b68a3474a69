"""Attention kernel benchmark: ours (flash = FA2, flash1 = FA1) against torch SDPA pinned to
its flash and cuDNN kernels, FlexAttention and naive attention, side by side in one run.

Each shape keeps batch x N = tokens (16K by default). FLOPs count the two matmuls of the
forward (4 B H N^2 d) and the five of the backward (2.5x), halved under causal masking. A
time is the median of --repeats timings, each the median of triton.testing.do_bench's
window; its spread (max / min - 1) is recorded, and a point whose timings disagree by more
than 5% is timed up to twice more, then marked unstable (* in the table). Memory is the peak
allocated during one fwd+bwd above what the inputs already hold.

The paper's Figure 3 setting: `--causal 0 --dropout 0.1 --padding`, a padding mask of each
row's real length drawn from [N - 20, N) (as flash-attention's own benchmark script draws it),
given to every provider as documents (attention.padding_documents: SDPA and naive take it as a
boolean mask; providers that take no mask or no dropout report an error and are skipped).
`flash-butterfly`: block-sparse FlashAttention (Section 3.3) on the butterfly layout of 128 x
128 tiles (its density recorded); a block mask does not combine with the padding mask, so it
runs without it. FLOPs count the dense N x N in every case. `flash-gluon` (`-overlap`, `-specialized`, `-pingpong`):
flash with the Hopper forward written in Gluon (attention/hopper.py's variants, experimental)
where it applies, flash.py's otherwise; `flash-gluon-bwd` its one-kernel backward with flash.py's
forward (dQ added as hopper.DQ_BY_TMA says; `-atomics`, `-tma`: always by atomics, by TMA
reduce-adds), `flash-gluon-all` both (the plain forward). `flash` runs the launch options in
force (the defaults, or FLASH_*); `flash-portable` is flash.py's kernels alone, `flash-gluon-auto`
the Gluon forward where `gluon=auto` picks it.

`--switch MODULE.NAME=A,B` times every provider with that module attribute set to each value in
turn, one right after the other at each point (e.g. attention.hopper.BWD_OVERLAP=False,True: a
kernel's two orders, side by side in one process); a provider the switch does not touch gives
the run's noise.

    python -m benchmarks.bench_attention --out benchmarks/results/h200/attention
"""

import argparse
import ast
import contextlib
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import triton

from attention import get_attention
from attention.masks import block_mask, butterfly, padding_documents
from benchmarks import harness

MODES = ("fwd", "bwd", "fwd+bwd")


def flex_attention_fn():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    torch._dynamo.config.recompile_limit = 256  # one compile per shape; past the limit flex runs unfused
    compiled = torch.compile(flex_attention, dynamic=False)
    masks = {}

    def fn(q, k, v, causal=False, dropout_p=0.0, scale=None):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        mask = None
        if causal:
            key = (q.shape[2], k.shape[2])
            if key not in masks:
                masks[key] = create_block_mask(lambda b, h, i, j: i >= j, None, None, *key, device=q.device)
            mask = masks[key]
        return compiled(q, k, v, block_mask=mask, scale=scale).transpose(1, 2)
    return fn


BUTTERFLY_BLOCK = 128


def butterfly_layout(n, causal, device):
    nb = -(-n // BUTTERFLY_BLOCK)
    return block_mask(butterfly(nb).to(device), BUTTERFLY_BLOCK, n, n, causal)


def flash_butterfly_fn():
    flash, masks = get_attention("flash"), {}

    def fn(q, k, v, causal=False, dropout_p=0.0, scale=None, documents=None):
        key = (q.shape[1], causal)
        if key not in masks:
            masks[key] = butterfly_layout(q.shape[1], causal, q.device)
        return flash(q, k, v, causal=causal, dropout_p=dropout_p, scale=scale, block_mask=masks[key])
    return fn


class _SetOptions(torch.autograd.Function):
    """The identity, whose backward sets flash's launch options: placed after a call, it sets
    them before the call's own backward runs; placed before it (on the inputs), after."""

    @staticmethod
    def forward(ctx, options, *xs):
        ctx.options = options
        return tuple(x.view_as(x) for x in xs)

    @staticmethod
    def backward(ctx, *grads):
        from attention import flash as kernels
        kernels.options.update(ctx.options)
        return (None, *grads)


def flash_gluon_fn(variant="off", backward=False):
    """flash with its Hopper forward variant and/or its one-kernel backward in Gluon
    (attention/hopper.py) where those apply: the launch options set around the call and, through
    _SetOptions, around its backward, so that `flash` in the same run keeps the portable kernels
    (the options select kernels; no compiled kernel depends on them)."""
    from attention import flash as kernels
    flash = get_attention("flash")
    on = dict(gluon=variant, gluon_backward=backward)

    def fn(q, k, v, **kwargs):
        before = {key: kernels.options[key] for key in on}  # what the other providers run under
        q, k, v = _SetOptions.apply(before, q, k, v)
        kernels.options.update(on)
        try:
            o = flash(q, k, v, **kwargs)
        finally:
            kernels.options.update(before)
        return _SetOptions.apply(on, o)[0]
    return fn


def padding_kwargs(padding, batch, n, device, seed=0):
    """The keyword arguments of a padding mask (documents), or none."""
    if not padding:
        return {}
    lengths = torch.randint(max(1, n - 20), n, (batch,), generator=torch.Generator().manual_seed(seed))
    return {"documents": tuple(t.to(device) for t in padding_documents(lengths, n))}


def providers(names):
    table = {
        "flash": lambda: get_attention("flash"),
        "flash-portable": lambda: flash_gluon_fn("off"),
        "flash-gluon-auto": lambda: flash_gluon_fn("auto"),
        "flash-butterfly": flash_butterfly_fn,
        "flash-gluon": lambda: flash_gluon_fn("plain"),
        "flash-gluon-overlap": lambda: flash_gluon_fn("overlap"),
        "flash-gluon-specialized": lambda: flash_gluon_fn("specialized"),
        "flash-gluon-pingpong": lambda: flash_gluon_fn("pingpong"),
        "flash-gluon-bwd": lambda: flash_gluon_fn(backward=True),
        "flash-gluon-bwd-atomics": lambda: flash_gluon_fn(backward="atomics"),
        "flash-gluon-bwd-tma": lambda: flash_gluon_fn(backward="tma"),
        "flash-gluon-all": lambda: flash_gluon_fn("plain", backward=True),
        "sdpa-efficient": lambda: get_attention("sdpa", kernel="efficient"),
        "flash1": lambda: get_attention("flash1"),
        "sdpa-flash": lambda: get_attention("sdpa", kernel="flash"),
        "sdpa-cudnn": lambda: get_attention("sdpa", kernel="cudnn"),
        "flex": flex_attention_fn,
        "naive": lambda: get_attention("naive"),
    }
    return {n: table[n]() for n in names}


def flops(batch, heads, n, d, causal, mode):
    f = 4 * batch * heads * n * n * d * (0.5 if causal else 1.0)
    return f * {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}[mode]


SPREAD = 0.05  # repeats of a point that disagree by more than this are measured again, then marked


def repeated(time_once, repeats=3, extra=2):
    """(median, spread, times) of `repeats` timings (each a median over do_bench's window),
    spread = max / min - 1; while the spread exceeds SPREAD, up to `extra` more timings."""
    times = [time_once() for _ in range(repeats)]
    while max(times) / min(times) - 1 > SPREAD and extra > 0:
        times.append(time_once())
        extra -= 1
    return statistics.median(times), max(times) / min(times) - 1, times


def measure(fn, batch, heads, n, d, causal, dtype=torch.bfloat16, repeats=3, dropout_p=0.0, padding=False, modes=MODES):
    """({mode: median ms}, peak extra memory in bytes, {mode: spread of the repeats}) for the
    modes asked. The memory is one fwd+bwd's, or one forward's (what autograd keeps for the
    backward included) when the forward alone is asked."""
    q, k, v = (torch.randn(batch, n, heads, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn(batch, n, heads, d, device="cuda", dtype=dtype)
    kw = dict(causal=causal, **({"dropout_p": dropout_p} if dropout_p else {}), **padding_kwargs(padding, batch, n, "cuda"))
    fwd = lambda: fn(q, k, v, **kw)  # noqa: E731
    backward = modes != ("fwd",)
    o = fwd()
    if backward:
        o.backward(do, retain_graph=True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    if backward:
        fwd().backward(do)
    else:
        fwd()
    torch.cuda.synchronize()
    mem = torch.cuda.max_memory_allocated() - base
    bench = {"fwd": lambda: triton.testing.do_bench(fwd, warmup=25, rep=100, return_mode="median"),
             "bwd": lambda: triton.testing.do_bench(lambda: o.backward(do, retain_graph=True), warmup=25, rep=100,
                                                    grad_to_none=[q, k, v], return_mode="median"),
             "fwd+bwd": lambda: triton.testing.do_bench(lambda: fwd().backward(do), warmup=25, rep=100,
                                                        grad_to_none=[q, k, v], return_mode="median")}
    results = {m: repeated(bench[m], repeats) for m in modes}
    return {m: r[0] for m, r in results.items()}, mem, {m: r[1] for m, r in results.items()}


def shapes(a):
    """(batch, heads, N, head_dim, causal) to measure: the product of the lists given."""
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    for shape in a.shapes.split(","):
        d, heads = map(int, shape.split("x"))
        head_counts = [e // d for e in ints(a.embd)] if a.embd else ints(a.heads) if a.heads else [heads]
        for causal in (c == "1" for c in a.causal.split(",")):
            for n in ints(a.seqlens):
                for h in head_counts:
                    for batch in (ints(a.batch) if a.batch else [max(1, a.tokens // n)]):
                        yield batch, h, n, d, causal


def parse_switch(text):
    """`MODULE.NAME=A,B` -> (module, name, [A, B]) with Python literals as values."""
    target, _, values = text.partition("=")
    module, _, name = target.rpartition(".")
    if not (module and name and values):
        raise ValueError(f"--switch {text}: MODULE.NAME=VALUE,VALUE (e.g. attention.hopper.BWD_OVERLAP=False,True)")
    module = importlib.import_module(module)
    if not hasattr(module, name):
        raise ValueError(f"--switch {text}: {module.__name__} has no {name}")
    return module, name, [ast.literal_eval(v) for v in values.split(",")]


@contextlib.contextmanager
def switched(module, name, value):
    before = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, before)


def point(row):
    return row["provider"], row["head_dim"], row["heads"], row["causal"], row["seqlen"], row["batch"]


def resumed(out, meta):
    """The rows of OUT/attention.json when the same command measured them on the same device
    with the same versions (the date aside); none otherwise."""
    path = out / "attention.json"
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    same = {k: v for k, v in old["meta"].items() if k != "date"} == {k: v for k, v in meta.items() if k != "date"}
    print(f"--resume: {len(old['rows']) if same else 0} points kept from {path}" +
          ("" if same else " (measured by another command, device or version: measuring all again)"), flush=True)
    return old["rows"] if same else []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--providers", default="flash,sdpa-flash,sdpa-cudnn,flex,naive,flash1")
    ap.add_argument("--seqlens", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--shapes", default="64x12,128x16", help="head_dim x heads, comma-separated")
    ap.add_argument("--causal", default="1,0")
    ap.add_argument("--tokens", type=int, default=16384, help="batch = tokens // N, unless --batch is given")
    ap.add_argument("--batch", default=None, help="batch sizes to sweep (comma-separated)")
    ap.add_argument("--heads", default=None, help="head counts to sweep, overriding the shapes' counts")
    ap.add_argument("--embd", default=None, help="embedding dims to sweep: heads = embd // head_dim")
    ap.add_argument("--naive-max-n", type=int, default=8192, help="naive's N x N scores get large")
    ap.add_argument("--flash1-max-n", type=int, default=4096, help="FA1's batch x heads parallelism is slow")
    ap.add_argument("--repeats", type=int, default=3, help="timings per point (each a do_bench median); "
                    "a point whose timings disagree by more than 5%% gets up to two more, then is marked")
    ap.add_argument("--modes", default=",".join(MODES), help="what to time: fwd, bwd, fwd+bwd (the forward alone: "
                    "--modes fwd, which also skips the backward's kernels and their tuning)")
    ap.add_argument("--dropout", type=float, default=0.0, help="attention dropout (the paper's Figure 3: 0.1)")
    ap.add_argument("--padding", action="store_true", help="a padding mask, real lengths in [N - 20, N) (non-causal)")
    ap.add_argument("--switch", default=None, help="MODULE.NAME=A,B: every provider timed with the module "
                    "attribute set to each value in turn (a kernel switch's two settings side by side)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--resume", action="store_true", help="keep the points OUT holds from this same command "
                    "on this same device and versions, measure the rest (a machine with a time limit measures "
                    "a long table over several calls)")
    args = ap.parse_args()
    if not torch.cuda.is_available():  # one line, not an error per point and an empty table
        ap.error("measures kernels on a CUDA GPU and none is visible")

    modes = tuple(m for m in MODES if m in args.modes.split(","))
    if not modes or len(modes) != len(args.modes.split(",")):
        ap.error(f"--modes {args.modes}: a comma-separated choice of {', '.join(MODES)}")
    fns = providers(args.providers.split(","))
    try:
        switch = parse_switch(args.switch) if args.switch else None
    except (ValueError, ImportError, SyntaxError) as e:
        ap.error(str(e))
    settings = [(f"{switch[1]}={v!r}", (switch[0], switch[1], v)) for v in switch[2]] if switch else [("", None)]
    if args.padding and "1" in args.causal.split(","):
        ap.error("--padding is the paper's (non-causal) padding mask: use it with --causal 0")
    meta = harness.metadata([a for a in sys.argv[1:] if a != "--resume"], tokens=args.tokens, dtype="bfloat16",
                            dropout=args.dropout, padding=args.padding)
    rows = resumed(args.out, meta) if args.resume and args.out else []
    done = {point(r) for r in rows}

    def save(markdown=None):  # after every row, so that a run cut short by a time limit keeps what it measured
        if args.out:
            harness.write(args.out, "attention", meta, rows, markdown, "Attention benchmark")

    for batch, heads, n, d, causal in shapes(args):
        for provider, fn, (setting, value) in ((p, f, s) for p, f in fns.items() for s in settings):
            name = f"{provider} {setting}".strip()
            if (provider == "naive" and n > args.naive_max_n) or (provider == "flash1" and n > args.flash1_max_n) \
                    or (name, d, heads, causal, n, batch) in done:
                continue
            t0 = time.time()
            try:
                with switched(*value) if value else contextlib.nullcontext():
                    times, mem, spread = measure(fn, batch, heads, n, d, causal, repeats=args.repeats,
                                                 dropout_p=args.dropout, padding=args.padding, modes=modes)
            except Exception as e:  # a provider that rejects a shape is reported, not fatal
                print(f"{name} d={d} causal={causal} N={n}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                error = "OOM" if isinstance(e, torch.OutOfMemoryError) else f"{type(e).__name__}: {str(e)[:160]}"
                rows.append(dict(provider=name, head_dim=d, heads=heads, causal=causal, seqlen=n, batch=batch,
                                 error=error))  # recorded: Figure 3 marks OOM, the report names the rest
                save()
                torch.cuda.empty_cache()
                continue
            row = dict(provider=name, head_dim=d, heads=heads, causal=causal, seqlen=n, batch=batch,
                       peak_mem_mb=mem / 2**20, **{f"ms_{m}": times[m] for m in modes},
                       **{f"spread_{m}": spread[m] for m in modes}, unstable=max(spread.values()) > SPREAD,
                       **{f"tflops_{m}": flops(batch, heads, n, d, causal, m) / times[m] / 1e9 for m in modes})
            if provider == "flash-butterfly":
                row["density"] = butterfly_layout(n, causal, "cpu").density
            rows.append(row)
            save()
            print(f"{name:11s} d={d:3d} causal={int(causal)} N={n:5d} B={batch:2d} "
                  + " ".join(f"{m}={row['tflops_' + m]:6.1f}" for m in modes)
                  + f" TFLOP/s  mem={row['peak_mem_mb']:8.1f}MB  ({time.time() - t0:.0f}s)", flush=True)
    table = switch_table(rows, [s for s, _ in settings], modes) if switch else ratio_table(rows, modes[-1])
    print(table)
    if args.out:
        save(table)
        plot(rows, args.out / "attention.png")


def ratio_table(rows, mode="fwd+bwd", against=("sdpa-flash", "sdpa-cudnn", "flex")):
    """Markdown: our TFLOP/s per shape and the ratio ours / each baseline."""
    index = {(r["provider"], r["head_dim"], r["causal"], r["seqlen"]): r for r in rows if "error" not in r}
    lines = [f"| d | causal | N | ours {mode} TFLOP/s | " + " | ".join(f"vs {a}" for a in against) + " | fwd vs sdpa-flash | bwd vs sdpa-flash |",
             "|---|---|---|---|" + "---|" * (len(against) + 2)]
    for (prov, d, causal, n), r in sorted(index.items(), key=lambda x: (x[0][1], not x[0][2], x[0][3])):
        if prov != "flash":
            continue
        def ratio(other, m=mode):
            o = index.get((other, d, causal, n))
            return f"{r['tflops_' + m] / o['tflops_' + m]:.2f}x" if o and f"tflops_{m}" in r else "-"  # a mode not timed: -
        mark = "*" if r.get("unstable") else ""
        lines.append(f"| {d} | {int(causal)} | {n} | {r['tflops_' + mode]:.0f}{mark} | " + " | ".join(ratio(a) for a in against)
                     + f" | {ratio('sdpa-flash', 'fwd')} | {ratio('sdpa-flash', 'bwd')} |")
    return "\n".join(lines)


def switch_table(rows, settings, modes):
    """Markdown: each provider's TFLOP/s under the first setting and the ratio of every other
    setting's to it, per point and mode."""
    index = {(r["provider"], r["head_dim"], r["causal"], r["seqlen"]): r for r in rows if "error" not in r}
    lines = [f"| provider | d | causal | N | mode | {settings[0]} TFLOP/s | "
             + " | ".join(f"{s} / {settings[0]}" for s in settings[1:]) + " |",
             "|---|---|---|---|---|---|" + "---|" * (len(settings) - 1)]
    mark = lambda r: "*" if r.get("unstable") else ""  # noqa: E731
    for (name, d, causal, n), first in sorted(index.items(), key=lambda x: (x[0][1], x[0][2], x[0][3], x[0][0])):
        provider, _, setting = name.rpartition(" ")
        if setting != settings[0]:
            continue
        for m in modes:
            others = [index.get((f"{provider} {s}", d, causal, n)) for s in settings[1:]]
            lines.append(f"| {provider} | {d} | {int(causal)} | {n} | {m} | {first['tflops_' + m]:.0f}{mark(first)} | "
                         + " | ".join(f"{o['tflops_' + m] / first['tflops_' + m]:.3f}{mark(o)}" if o else "-"
                                      for o in others) + " |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    combos = sorted({(r["head_dim"], r["causal"]) for r in rows})
    modes = [m for m in MODES if any(f"tflops_{m}" in r for r in rows)]
    fig, axes = plt.subplots(len(modes), len(combos), figsize=(4.5 * len(combos), 3.2 * len(modes)), squeeze=False)
    for col, (d, causal) in enumerate(combos):
        for row, mode in enumerate(modes):
            ax = axes[row][col]
            for prov in dict.fromkeys(r["provider"] for r in rows):
                pts = sorted((r["seqlen"], r["tflops_" + mode]) for r in rows
                             if r["provider"] == prov and r["head_dim"] == d and r["causal"] == causal and "error" not in r)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=prov)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{mode}, d={d}, {'causal' if causal else 'non-causal'}", fontsize=9)
            ax.set_xlabel("sequence length")
            ax.set_ylabel("TFLOP/s")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
