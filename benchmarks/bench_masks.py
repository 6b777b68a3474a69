"""Masked attention, ours against FlexAttention with the same masks, side by side in one run:
block-sparse layouts at densities 1/2 ... 1/16, packed documents, sliding windows (issue 24).

    python -m benchmarks.bench_masks --out OUT [--cases blocksparse,documents,window]

Each case runs our kernel with its mask (block_mask=, documents=, window=), FlexAttention
with a mask_mod that keeps exactly the same (query, key) pairs (its BlockMask built by
create_block_mask at our tile size, so both skip the same tiles), and, for the time bound, our
dense kernel without any mask. FLOPs count the visible (query, key) pairs only (4 d per pair
forward, 2.5x that backward), the same count for both providers; `visited` is the share of
tiles a kernel computes. Target: fwd+bwd time at most (visited + 0.1) x the dense non-causal
kernel's at N >= 4096, and ours at least Flex's speed in every cell.
"""

import argparse

import torch

from attention.masks import block_mask, document_bounds, random_blocks
from benchmarks import harness

BLOCK = 128


def blocksparse_case(n, density, heads, seed=0):
    """A random layout of BLOCK x BLOCK tiles at `density` (the diagonal kept, so no row is empty)."""
    nb = -(-n // BLOCK)
    layout = random_blocks(nb, nb, density, torch.Generator().manual_seed(seed)) | torch.eye(nb, dtype=torch.bool)
    return {"name": f"blocksparse 1/{round(1 / density)}", "n": n, "causal": False, "layout": layout}


def documents_case(n, mean_length, batch, seed=0):
    """Documents of exponentially distributed lengths (mean `mean_length`) packed into each row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.empty(batch, n, dtype=torch.int64)
    for b in range(batch):
        lengths = torch.distributions.Exponential(1.0 / mean_length).sample((4 * n // mean_length + 8,)).ceil().long()
        ids[b] = torch.repeat_interleave(torch.arange(len(lengths)), lengths.clamp(min=1))[:n]
    return {"name": f"documents, mean {mean_length}", "n": n, "causal": True, "doc_ids": ids}


def window_case(n, window):
    return {"name": f"window {window}", "n": n, "causal": True, "window": window}


def mask_mod(case, device):
    """The case as FlexAttention's mask_mod(b, h, q_idx, kv_idx)."""
    if "layout" in case:
        layout = case["layout"].to(device)
        return lambda b, h, i, j: layout[i // BLOCK, j // BLOCK]
    if "doc_ids" in case:
        ids = case["doc_ids"].to(device)
        return lambda b, h, i, j: (ids[b, i] == ids[b, j]) & (j <= i)
    w = case["window"]
    return lambda b, h, i, j: (j <= i) & (i - j < w)


def ours_kwargs(case, device):
    """Our kernel's arguments for the case."""
    if "layout" in case:
        return {"block_mask": block_mask(case["layout"].to(device), BLOCK, case["n"], case["n"])}
    if "doc_ids" in case:
        return {"documents": document_bounds(case["doc_ids"].to(device))}
    return {"window": case["window"]}


def visible_pairs(case, batch):
    """(visible (query, key) pairs over the batch, share of BLOCK x BLOCK tiles holding any),
    counted from the mask's structure (a 64K x 64K boolean would not fit)."""
    n = case["n"]
    nb = -(-n // BLOCK)
    if "layout" in case:
        sizes = torch.clamp(n - torch.arange(nb) * BLOCK, max=BLOCK)
        kept = case["layout"].to(torch.bool)
        return int((sizes[:, None] * sizes[None, :] * kept).sum()) * batch, kept.float().mean().item()
    i = torch.arange(n)
    if "doc_ids" in case:
        lo = document_bounds(case["doc_ids"])[0].long()  # each row sees [its document's start, itself]
    else:
        lo = torch.clamp(i - case["window"] + 1, min=0)[None].expand(batch, n)
    pairs = int((i[None] - lo + 1).sum())
    blocks = torch.arange(nb)
    rows = (blocks >= (lo // BLOCK)[..., None]) & (blocks <= (i // BLOCK)[None, :, None])  # (B, n, nb)
    tiles = rows.view(rows.shape[0], nb, -1, nb).any(2) if n % BLOCK == 0 else \
        torch.stack([rows[:, a * BLOCK:(a + 1) * BLOCK].any(1) for a in range(nb)], 1)
    return pairs, tiles.float().mean().item()


def flex_fn(case, heads, batch, device):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    compiled = torch.compile(flex_attention, dynamic=False)
    b = batch if "doc_ids" in case else None
    mask = create_block_mask(mask_mod(case, device), b, None, case["n"], case["n"], device=device, BLOCK_SIZE=BLOCK)

    def fn(q, k, v, causal=False):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        return compiled(q, k, v, block_mask=mask).transpose(1, 2)
    return fn


def cases(names, heads):
    out = []
    if "blocksparse" in names:
        out += [(blocksparse_case(n, rho, heads), 16384 // n) for n in (4096, 16384) for rho in (1 / 2, 1 / 4, 1 / 8, 1 / 16)]
    if "documents" in names:
        out += [(documents_case(8192, m, 2), 2) for m in (512, 2048)]
    if "window" in names:
        out += [(window_case(n, 1024), max(1, 16384 // n)) for n in (4096, 16384, 65536)]
    return out


def main(argv=None):
    from attention.flash import flash_attention
    from benchmarks.bench_attention import MODES, measure
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="blocksparse,documents,window")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--providers", default="ours,flex", help="ours and/or flex (ours alone: an A/B of our kernel)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    providers = a.providers.split(",")
    if not providers or set(providers) - {"ours", "flex"}:
        p.error(f"--providers {a.providers!r}: ours and/or flex, comma-separated")
    if not torch.cuda.is_available():
        p.error("measures kernels on a CUDA GPU and none is visible")
    meta = harness.metadata(argv, heads=a.heads, head_dim=a.head_dim, block=BLOCK, dtype="bfloat16")
    rows = []
    dense = {}
    for case, batch in cases(a.cases.split(","), a.heads):
        n, d = case["n"], a.head_dim
        pairs, visited = visible_pairs(case, batch)
        kw = ours_kwargs(case, "cuda")
        if (n, batch) not in dense:
            dense[n, batch], _, _ = measure(lambda q, k, v, causal: flash_attention(q, k, v), batch, a.heads, n, d, False)
        for name in providers:  # Flex's function compiles its mask: built only when asked for
            fn = flex_fn(case, a.heads, batch, "cuda") if name == "flex" else \
                (lambda q, k, v, causal, kw=kw, c=case["causal"]: flash_attention(q, k, v, causal=c, **kw))
            times, mem, spread = measure(fn, batch, a.heads, n, d, case["causal"])
            f = 4 * pairs * a.heads * d
            rows.append({"case": case["name"], "provider": name, "n": n, "batch": batch, "visited": visited,
                         "peak_mem_mb": mem / 2**20, **{f"ms_{m}": times[m] for m in MODES},
                         **{f"spread_{m}": spread[m] for m in MODES},
                         **{f"tflops_{m}": f * {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}[m] / times[m] / 1e9 for m in MODES},
                         "time_vs_dense": times["fwd+bwd"] / dense[n, batch]["fwd+bwd"]})
            print(rows[-1], flush=True)
            harness.write(a.out, "masks", meta, rows)
    harness.write(a.out, "masks", meta, rows, table(rows), "Masked attention: ours against FlexAttention")


def table(rows):
    """Markdown: per case, ours and Flex fwd+bwd TFLOP/s on visible pairs, ours / Flex, time against dense."""
    index = {(r["case"], r["n"], r["provider"]): r for r in rows}
    body = []
    for (case, n, prov), r in index.items():
        if prov != "ours":
            continue
        flex = index.get((case, n, "flex"))
        body.append([case, n, f"{r['visited']:.3f}", f"{r['tflops_fwd+bwd']:.0f}",
                     f"{flex['tflops_fwd+bwd']:.0f}" if flex else "-",
                     f"{r['tflops_fwd+bwd'] / flex['tflops_fwd+bwd']:.2f}x" if flex else "-",
                     f"{r['tflops_fwd']:.0f}", f"{r['time_vs_dense']:.3f} (bound {r['visited'] + 0.1:.3f})"])
    return harness.md_table(["case", "N", "tiles visited", "ours fwd+bwd TFLOP/s", "Flex", "ours / Flex",
                             "ours fwd TFLOP/s", "time / dense non-causal"], body)


if __name__ == "__main__":
    main()
