"""Figures of the attention benchmark, drawn from committed results tables (attention.json
rows of benchmarks/bench_attention.py), never from typed-in numbers.

- figure3: the paper's Figure 3, fwd+bwd time and memory against sequence length, OOM marked;
- speedup_bars: our fwd+bwd speedup over standard attention per sequence length;
- fa1_vs_fa2: FlashAttention-1 against -2 (ours), TFLOP/s against sequence length;
- fwd_vs_bwd: forward and backward TFLOP/s apart, ours against SDPA's kernels;
- sweep: time, TFLOP/s and memory against one swept dimension (batch, heads, embedding or
  head dim, sequence length; causal and non-causal as line styles); fwd_and_bwd: forward and
  backward time apart against one; heatmap: TFLOP/s over batch x sequence length;
- forward_table: the forward pass over a batch x N x heads grid, time, TFLOP/s and memory per
  provider, out-of-memory marked (Markdown).
"""

import json
from pathlib import Path


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def load(path):
    return json.loads(Path(path).read_text())["rows"]


def ok(rows, **match):
    return [r for r in rows if "error" not in r and all(r.get(k) == v for k, v in match.items())]


def providers(rows):
    return list(dict.fromkeys(r["provider"] for r in rows))


def figure3(rows, path, meta=None):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for prov in providers(ok(rows)):  # a provider that rejected every point is named in the report, not drawn
        pts = sorted((r["seqlen"], r["ms_fwd+bwd"], r["peak_mem_mb"]) for r in ok(rows, provider=prov))
        oom = sorted(r["seqlen"] for r in rows if r["provider"] == prov and r.get("error") == "OOM")
        for ax, i in ((axes[0], 1), (axes[1], 2)):
            line, = ax.plot([p[0] for p in pts], [p[i] for p in pts], marker="o", label=prov)
            for n in oom:
                ax.axvline(n, color=line.get_color(), ls=":", lw=1)
                ax.text(n, 0.95, "OOM", color=line.get_color(), fontsize=7, ha="center", transform=ax.get_xaxis_transform())
    meta = meta or {}
    r = ok(rows)[0]
    setting = ", ".join([f"batch x length = {meta.get('tokens', '?')} tokens", f"{r['heads']} heads", f"d={r['head_dim']}",
                         "causal" if r["causal"] else "non-causal"]
                        + ([f"dropout {meta['dropout']}"] if meta.get("dropout") else [])
                        + (["padding mask"] if meta.get("padding") else []))
    for ax, label in zip(axes, ("fwd+bwd time (ms)", "memory beyond the inputs (MB)")):
        ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel=label)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(setting, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _combos(rows):
    return sorted({(r["head_dim"], r["causal"]) for r in ok(rows)}, key=lambda c: (c[0], not c[1]))


def speedup_bars(rows, path, ours="flash", baseline="naive"):
    plt = _plt()
    combos = _combos(rows)
    fig, axes = plt.subplots(1, len(combos), figsize=(4 * len(combos), 3.5), squeeze=False)
    for ax, (d, causal) in zip(axes[0], combos):
        base = {r["seqlen"]: r["ms_fwd+bwd"] for r in ok(rows, provider=baseline, head_dim=d, causal=causal)}
        pts = sorted((r["seqlen"], base[r["seqlen"]] / r["ms_fwd+bwd"])
                     for r in ok(rows, provider=ours, head_dim=d, causal=causal) if r["seqlen"] in base)
        bars = ax.bar([str(n) for n, _ in pts], [s for _, s in pts])
        ax.bar_label(bars, fmt="%.1fx", fontsize=7)
        ax.set(title=f"d={d}, {'causal' if causal else 'non-causal'}", xlabel="sequence length",
               ylabel=f"fwd+bwd speedup over {baseline}")
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _lines(rows, path, series, ylabel):
    """One panel per (head dim, causal); series: (label, provider, column, style)."""
    plt = _plt()
    combos = _combos(rows)
    fig, axes = plt.subplots(1, len(combos), figsize=(4 * len(combos), 3.5), squeeze=False)
    for ax, (d, causal) in zip(axes[0], combos):
        for label, prov, col, style in series:
            pts = sorted((r["seqlen"], r[col]) for r in ok(rows, provider=prov, head_dim=d, causal=causal))
            if pts:
                ax.plot(*zip(*pts), style, marker="o", ms=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set(title=f"d={d}, {'causal' if causal else 'non-causal'}", xlabel="sequence length", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fa1_vs_fa2(rows, path):
    _lines(rows, path, [(f"{p} {m}", p, f"tflops_{m}", s) for p in ("flash", "flash1")
                        for m, s in (("fwd+bwd", "-"), ("fwd", "--"))], "TFLOP/s")


def fwd_vs_bwd(rows, path):
    _lines(rows, path, [(f"{p} {m}", p, f"tflops_{m}", s) for p in ("flash", "sdpa-flash", "sdpa-cudnn", "naive")
                        for m, s in (("fwd", "--"), ("bwd", "-"))], "TFLOP/s")


SWEEP_AXES = {"batch": ("batch", "batch size"), "heads": ("heads", "number of heads"),
              "embd": (None, "embedding dim (heads x head dim)"), "head_dim": ("head_dim", "head dim"),
              "seqlen": ("seqlen", "sequence length")}


def _axis(axis):
    key, label = SWEEP_AXES[axis]
    return ((lambda r: r["heads"] * r["head_dim"]) if key is None else (lambda r: r[key])), label


def sweep(rows, path, axis):
    """Time, TFLOP/s and memory against one swept dimension, per provider (fwd+bwd; causal and
    non-causal as separate line styles)."""
    plt = _plt()
    x, label = _axis(axis)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for prov in providers(rows):
        for causal, style in ((True, "-"), (False, "--")):
            pts = sorted((x(r), r["ms_fwd+bwd"], r["tflops_fwd+bwd"], r["peak_mem_mb"])
                         for r in ok(rows, provider=prov, causal=causal))
            for ax, i in zip(axes, (1, 2, 3)):
                if pts:
                    ax.plot([p[0] for p in pts], [p[i] for p in pts], style, marker="o", ms=3,
                            label=f"{prov}{'' if causal else ' non-causal'}")
    for ax, y in zip(axes, ("fwd+bwd time (ms)", "fwd+bwd TFLOP/s", "memory beyond the inputs (MB)")):
        ax.set_xscale("log", base=2)
        ax.set(xlabel=label, ylabel=y)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fwd_and_bwd(rows, path, axis, causal=True):
    """Forward and backward time apart against one swept dimension, per provider."""
    plt = _plt()
    x, label = _axis(axis)
    fig, ax = plt.subplots(figsize=(6, 4))
    for prov in providers(rows):
        for mode, style in (("fwd", "--"), ("bwd", "-")):
            pts = sorted((x(r), r[f"ms_{mode}"]) for r in ok(rows, provider=prov, causal=causal))
            if pts:
                ax.plot(*zip(*pts), style, marker="o", ms=3, label=f"{prov} {mode}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel=label, ylabel="time (ms)", title=f"forward and backward, {'causal' if causal else 'non-causal'}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def forward_table(rows):
    """Markdown: per (batch, N, heads, causal), each provider's forward ms / TFLOP/s / MB, or OOM."""
    provs = providers(rows)
    cell = {(r["provider"], r["batch"], r["seqlen"], r["heads"], r["causal"]): r for r in rows}
    lines = ["| batch | N | heads | causal | " + " | ".join(f"{p}: fwd ms / TFLOP/s / MB" for p in provs) + " |",
             "|---|---|---|---|" + "---|" * len(provs)]
    for b, n, h, c in sorted({k[1:] for k in cell}, key=lambda k: (k[0], k[1], k[2], not k[3])):
        row = []
        for p in provs:
            r = cell.get((p, b, n, h, c))
            row.append("-" if r is None else "OOM" if r.get("error") == "OOM" else
                       f"{r['ms_fwd']:.3f} / {r['tflops_fwd']:.0f} / {r['peak_mem_mb']:.0f}")
        lines.append(f"| {b} | {n} | {h} | {int(c)} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def heatmap(rows, path, provider="flash"):
    plt = _plt()
    pts = ok(rows, provider=provider)
    batches, seqlens = sorted({r["batch"] for r in pts}), sorted({r["seqlen"] for r in pts})
    grid = [[next((r["tflops_fwd+bwd"] for r in pts if r["batch"] == b and r["seqlen"] == n), float("nan"))
             for n in seqlens] for b in batches]
    fig, ax = plt.subplots(figsize=(1.1 * len(seqlens) + 2, 0.6 * len(batches) + 1.5))
    im = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="w", fontsize=7)
    ax.set_xticks(range(len(seqlens)), seqlens)
    ax.set_yticks(range(len(batches)), batches)
    ax.set(xlabel="sequence length", ylabel="batch", title=f"{provider} fwd+bwd TFLOP/s")
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
