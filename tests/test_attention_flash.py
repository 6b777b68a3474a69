"""Our Triton kernels (flash = FA2, flash1 = FA1) against a float64 reference.

Criterion (the flash-attn test suite's): for O, dQ, dK, dV, the max error of ours against the
float64 reference is at most 2x the error of naive PyTorch attention run in the same low
precision, plus an absolute floor of 2 ulps of the dtype at the largest magnitude among the call's
out, dQ, dK, dV (FlashAttention's backward
uses D = rowsum(dO * O) with O rounded to the dtype, so where the exact gradient is 0, as for a
single key, ours leaves a residue of that size while autograd's is exactly 0). Inputs are fresh random draws; outputs are poisoned
(NaN) before the call so an unwritten element fails. On the GPU the full grid runs (>= 500
cases); on the CPU under TRITON_INTERPRET=1 a small subset does (fp16 only: the 3.6
interpreter's tl.dot mis-multiplies bf16).
"""

import itertools
import re
import zlib

import pytest
import torch

from attention import block_mask, document_bounds, get_attention
from attention.masks import butterfly, local_global, random_blocks
from attention.naive import reference_attention
from tests.conftest import GPU, gpu_only, triton_device

pytestmark = triton_device
DEVICE = "cuda" if GPU else "cpu"

if GPU:
    DTYPES = [torch.float16, torch.bfloat16]
    HEAD_DIMS = [16, 32, 64, 128, 256]
    LENGTHS = [(1, 1), (17, 17), (128, 128), (1000, 1000), (4097, 4097), (1, 300), (113, 517), (517, 113)]
    DROPOUT = [0.0, 0.17]
else:
    DTYPES = [torch.float16]
    HEAD_DIMS = [16, 32]
    LENGTHS = [(1, 1), (17, 17), (40, 23), (23, 40)]
    DROPOUT = [0.0, 0.17]

# Cases that share compiled kernels share an xdist group, so parallel workers compile apart.
CASES = [pytest.param(b, dt, d, c, n, p, marks=pytest.mark.xdist_group(f"{b}-{dt}-{d}"))
         for b, dt, d, c, n, p in
         itertools.product(["flash", "flash1"], DTYPES, HEAD_DIMS, [False, True], LENGTHS, DROPOUT)
         if not (b == "flash1" and d == 256)]


def _errors(backend, dtype, d, causal, n_q, n_k, p, batch=2, heads=3, layout=lambda t: t, window=None, docs=None,
            blocks=None, options=None, block=None):
    """docs: per batch row, the lengths of the documents packed into its N_k keys; blocks: a
    function (n_q blocks, n_k blocks, heads) -> the layout of a block mask of BLOCK x BLOCK tiles;
    options: the backend's options (get_attention applies them, the defaults where not given)."""
    g = torch.Generator(device=DEVICE).manual_seed(zlib.crc32(repr((backend, d, causal, n_q, n_k, p, window, docs)).encode()))
    q, k, v = (torch.randn(batch, n, heads, d, device=DEVICE, generator=g, dtype=dtype)
               for n in (n_q, n_k, n_k))
    do = torch.randn(batch, n_q, heads, d, device=DEVICE, generator=g, dtype=dtype)
    seed = torch.tensor([12345], device=DEVICE)
    keep = None
    if p > 0:
        from attention.flash import dropout_mask
        keep = dropout_mask(seed, batch, heads, n_q, n_k, p)

    def run(fn, dt, layout=lambda t: t, **kw):
        x = [t.detach().to(dt).requires_grad_() for t in (q, k, v)]
        o = fn(*map(layout, x), causal=causal, dropout_p=p, **kw)
        grads = torch.autograd.grad(o, x, do.to(dt))
        return [o, *grads]

    masks = {} if window is None else {"window": window}
    if docs is not None:
        ids = torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in docs], device=DEVICE)
        masks["documents"] = document_bounds(ids)
    if blocks is not None:
        block = block or BLOCK
        n_qb, n_kb = -(-n_q // block), -(-n_k // block)
        masks["block_mask"] = block_mask(blocks(n_qb, n_kb, heads).to(DEVICE), block, n_q, n_k, causal)
    ref = run(reference_attention, torch.float64, keep_mask=keep, **masks)
    low = run(reference_attention, dtype, keep_mask=keep, **masks)
    # Poison: fill and free blocks of the outputs' sizes, so the caching allocator hands
    # NaN-filled memory to the kernels' outputs and an unwritten element shows as NaN.
    for t in (q, k, v, q):
        torch.full_like(t, float("nan"))
    ours = run(get_attention(backend, **(options or {})), dtype, layout, seed=seed, **masks)
    scale = max(1.0, *(r.abs().max().item() for r in ref))
    floor = 2 * torch.finfo(dtype).eps * scale
    return [((a.double() - r).abs().max().item(), (b.double() - r).abs().max().item(), floor)
            for a, b, r in zip(ours, low, ref)]


@pytest.mark.parametrize("backend,dtype,d,causal,lengths,p", CASES,
                         ids=lambda x: str(x).replace("torch.", ""))
def test_matches_reference(backend, dtype, d, causal, lengths, p):
    for name, (ours, naive, floor) in zip(["out", "dq", "dk", "dv"],
                                   _errors(backend, dtype, d, causal, *lengths, p)):
        assert ours == ours, f"{name}: NaN"
        assert ours <= 2 * naive + floor, f"{name}: error {ours:.2e} > 2 x naive {naive:.2e} + {floor:.1e}"


if GPU:
    WINDOW_CASES = [(w, n, p) for w in (1, 5, 64, 127, 128, 129, 1000, 5000) for n in [(1000, 1000), (4097, 4097),
                    (113, 517), (517, 113), (1, 300)] for p in DROPOUT]
else:  # B_r = B_c = 16 under the interpreter: windows inside one block, across two, and wider than N
    WINDOW_CASES = [(1, (40, 40), 0.0), (5, (23, 40), 0.17), (17, (40, 40), 0.17), (17, (40, 23), 0.0),
                    (33, (23, 40), 0.0), (100, (40, 40), 0.0)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("window,lengths,p", WINDOW_CASES)
def test_sliding_window_matches_reference(dtype, window, lengths, p):
    """Each query sees its last `window` keys: output and gradients against the windowed
    reference, with the blocks outside every row's window skipped (windows of one key,
    within one block, across blocks, past the start of the sequence and wider than it;
    N_q != N_k both ways, so rows that see no key too)."""
    for name, (ours, naive, floor) in zip(["out", "dq", "dk", "dv"],
                                          _errors("flash", dtype, 16 if not GPU else 64, True, *lengths, p,
                                                  window=window)):
        assert ours == ours, f"{name}: NaN"
        assert ours <= 2 * naive + floor, f"{name}: error {ours:.2e} > 2 x naive {naive:.2e} + {floor:.1e}"


def test_windows_one_after_another():
    """One process, one shape, window after window: Triton compiles an integer argument equal
    to 1 into the kernel as a constant, so a launch that reused the kernel built for window=1
    at window=5 would mask the wrong keys (on the GPU, where launches reuse compiled kernels)."""
    n = 1000 if GPU else 40
    for window in (1, 5, 64 if GPU else 16, 3):
        for name, (ours, naive, floor) in zip(["out", "dq", "dk", "dv"],
                                              _errors("flash", torch.float16, 16, True, n, n, 0.0, window=window)):
            assert ours <= 2 * naive + floor, f"window {window}, {name}: error {ours:.2e} > 2 x naive {naive:.2e}"


if GPU:
    DOC_CASES = [([[1000], [1, 999]], (1000, 1000), None, 0.0), ([[7] * 585 + [2], [4097]], (4097, 4097), None, 0.17),
                 ([[300, 17, 700, 3000, 80], [64] * 64 + [1]], (4097, 4097), 129, 0.0),
                 ([[500, 17], [1] * 517], (113, 517), None, 0.17), ([[100, 200], [300]], (1, 300), None, 0.0)]
else:  # B_r = B_c = 16: documents inside one block, across blocks, of one token; with a window; N_q < N_k
    DOC_CASES = [([[40], [3, 1, 36]], (40, 40), None, 0.0), ([[5, 20, 15], [1] * 40], (40, 40), None, 0.17),
                 ([[17, 23], [16, 16, 8]], (40, 40), 7, 0.0), ([[30, 10], [2, 38]], (23, 40), None, 0.17)]


DOC_CASES = [(*case, True) for case in DOC_CASES] + [(docs, n, None, p, False) for docs, n, w, p in DOC_CASES if w is None]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("docs,lengths,window,p,causal", DOC_CASES)
def test_document_masking_matches_reference(dtype, docs, lengths, window, p, causal):
    """Documents packed into one sequence attend within themselves, causally or (key padding,
    packed encoders) to all their tokens, against the masked reference: documents shorter than a
    block, of one token, across block boundaries, with a sliding window on top; the queries the
    last N_q positions (a KV cache) too."""
    for name, (ours, naive, floor) in zip(["out", "dq", "dk", "dv"],
                                          _errors("flash", dtype, 16 if not GPU else 64, causal, *lengths, p,
                                                  window=window, docs=docs)):
        assert ours == ours, f"{name}: NaN"
        assert ours <= 2 * naive + floor, f"{name}: error {ours:.2e} > 2 x naive {naive:.2e} + {floor:.1e}"


BLOCK = 128 if GPU else 16
BLOCK_PATTERNS = {  # (n_q blocks, n_k blocks, heads) -> layout
    "butterfly": lambda nq, nk, h: butterfly(max(nq, nk))[:nq, :nk],
    "local-global": lambda nq, nk, h: local_global(nq, nk, local=2, global_=1),
    "random, empty rows": lambda nq, nk, h: random_blocks(nq, nk, 0.4, torch.Generator().manual_seed(nq * nk)),
    "per head": lambda nq, nk, h: torch.stack([random_blocks(nq, nk, 0.5, torch.Generator().manual_seed(i))
                                               for i in range(h)]),
    "dense": lambda nq, nk, h: torch.ones(nq, nk, dtype=torch.bool),
}
BLOCK_CASES = [(pattern, causal, lengths, p) for pattern in BLOCK_PATTERNS for causal in (False, True)
               for lengths, p in ([((1000, 1000), 0.0), ((4097, 4097), 0.17), ((300, 1000), 0.0)] if GPU else
                                  [((60, 60), 0.0), ((40, 57), 0.17)])]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pattern,causal,lengths,p", BLOCK_CASES)
def test_block_sparse_matches_reference(dtype, pattern, causal, lengths, p):
    """Block-sparse FlashAttention: only the mask's tiles are computed, against the reference
    masked to the same tiles: the paper's butterfly, local + global, random ones (rows with no
    tile come out 0), a layout per head, the dense layout; causal or not, ragged N."""
    for name, (ours, naive, floor) in zip(["out", "dq", "dk", "dv"],
                                          _errors("flash", dtype, 16 if not GPU else 64, causal, *lengths, p,
                                                  blocks=BLOCK_PATTERNS[pattern])):
        assert ours == ours, f"{name}: NaN"
        assert ours <= 2 * naive + floor, f"{name}: error {ours:.2e} > 2 x naive {naive:.2e} + {floor:.1e}"


@pytest.mark.parametrize("causal", [False, True])
def test_block_sparse_with_blocks_of_several_tiles(causal):
    """Blocks twice the kernels' tile (the interpreter's 16, the GPU's up to 128): one loop walks
    every tile of the listed blocks (attention/flash.py's _tile), so the second tile of each
    block must be the right one, forward and backward."""
    lengths = (1000, 1000) if GPU else (70, 70)
    for name, (ours, naive, floor) in zip(["out", "dq", "dk", "dv"],
                                          _errors("flash", DTYPES[0], 16 if not GPU else 64, causal, *lengths, 0.0,
                                                  blocks=BLOCK_PATTERNS["per head"], block=2 * BLOCK)):
        assert ours == ours, f"{name}: NaN"
        assert ours <= 2 * naive + floor, f"{name}: error {ours:.2e} > 2 x naive {naive:.2e} + {floor:.1e}"


def test_block_mask_lists_and_arguments():
    m = block_mask(butterfly(4), 16, 60, 60, causal=True)
    assert m.layout[0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 1]]
    assert m.kv[0, 3, :2].tolist() == [2, 1] and m.kv[0, 3, 2:4].tolist() == [1, 2] and m.kv[0, 3, 6] == 3
    assert m.q[0, 0, :2].tolist() == [2, 1] and m.density == 0.5  # column 0: rows 1, 2 whole, row 0 on the diagonal
    assert m.dense().shape == (1, 60, 60)
    with pytest.raises(ValueError, match=r"the layout must be \(n_q blocks, n_k blocks\) = \(4, 4\)"):
        block_mask(butterfly(8), 16, 60, 60)
    from attention.flash import flash_attention
    q = torch.randn(1, 60, 1, 16, device=DEVICE, dtype=torch.float16)
    with pytest.raises(ValueError, match="the block mask is for N_q=60, N_k=60, causal=True"):
        flash_attention(q, q, q, block_mask=m)


def test_document_bounds():
    start, end = document_bounds(torch.tensor([[0, 0, 1, 1, 1, 2], [5, 5, 5, 5, 5, 5], [0, 1, 0, 0, 2, 2]]))
    assert start.tolist() == [[0, 0, 2, 2, 2, 5], [0] * 6, [0, 1, 2, 2, 4, 4]]
    assert end.tolist() == [[2, 2, 5, 5, 5, 6], [6] * 6, [1, 2, 4, 4, 6, 6]]  # a document is a run of equal ids


def test_window_arguments_are_checked():
    from attention.flash import flash_attention
    q = torch.randn(1, 8, 1, 16, device=DEVICE, dtype=torch.float16)
    with pytest.raises(ValueError, match="a sliding window is causal"):
        flash_attention(q, q, q, window=4)
    with pytest.raises(ValueError, match="window must be a whole number >= 1"):
        flash_attention(q, q, q, causal=True, window=0)


LAYOUTS = {  # differentiable views of (B, N, H, d) inputs with other strides or alignment
    "contiguous": lambda t: t,
    "fused-qkv": lambda t: torch.cat([t, t, t], dim=2)[:, :, t.shape[2]:2 * t.shape[2]],
    "misaligned": lambda t: torch.cat([t.new_zeros(1), t.flatten()])[1:].view(t.shape),
}


@pytest.mark.parametrize("backend", ["flash", "flash1"])
def test_layouts_that_share_a_shape(backend):
    # Eager launches reuse one compiled kernel per argument signature (flash._launch): a call
    # with the same shape but other strides or a misaligned pointer must not reuse another's.
    for layout in ["contiguous", "fused-qkv", "misaligned", "contiguous"]:
        for name, (ours, naive, floor) in zip(["out", "dq", "dk", "dv"],
                                              _errors(backend, torch.float16, 16, True, 40, 40, 0.0,
                                                      layout=LAYOUTS[layout])):
            assert ours <= 2 * naive + floor, f"{layout} {name}: error {ours:.2e} > 2 x naive {naive:.2e} + {floor:.1e}"


def test_dropout_is_reproducible_and_unbiased():
    from attention.flash import dropout_mask
    seed = torch.tensor([7], device=DEVICE)
    a = dropout_mask(seed, 1, 2, 64, 64, 0.25)
    assert torch.equal(a, dropout_mask(seed, 1, 2, 64, 64, 0.25))
    assert not torch.equal(a, dropout_mask(seed + 1, 1, 2, 64, 64, 0.25))
    assert abs(a.float().mean().item() - 0.75) < 0.03
    # Eight keys share one Philox call: they must still be independent draws. Kept fraction,
    # and the agreement of keys 1 to 8 apart and of neighbouring queries (p^2 + (1-p)^2 if
    # independent), each within 5 sigma (sigma <= 0.001 here).
    m = dropout_mask(seed, 1, 4, 256, 256, 0.25).float()
    assert abs(m.mean().item() - 0.75) < 0.005
    for agree in [(m[..., d:] == m[..., :-d]).float().mean().item() for d in range(1, 9)] + \
            [(m[:, :, 1:] == m[:, :, :-1]).float().mean().item()]:
        assert abs(agree - 0.625) < 0.006, agree


def test_returned_lse_and_its_gradient():
    from attention.flash import flash_attention
    x = [torch.randn(1, 19, 2, 16, device=DEVICE, dtype=torch.float16, requires_grad=True) for _ in range(3)]
    o, lse = flash_attention(*x, causal=True, return_lse=True)
    (lse.sum() + o.float().sum()).backward()
    r = [t.detach().double().requires_grad_() for t in x]
    s = torch.einsum("bqhd,bkhd->bhqk", r[0], r[1]) / 4
    s = s.masked_fill(~torch.ones(19, 19, dtype=torch.bool, device=DEVICE).tril(), float("-inf"))
    (torch.logsumexp(s, -1).sum() + reference_attention(*r, causal=True).sum()).backward()
    assert (lse.double() - torch.logsumexp(s, -1)).abs().max() < 1e-3
    for a, b in zip(x, r):
        assert (a.grad.double() - b.grad).abs().max() < 1e-2


def test_rows_that_see_no_key_are_zero():
    # causal with N_q > N_k (bottom-right): the first N_q - N_k queries see nothing
    from attention.flash import flash_attention
    q = torch.randn(1, 9, 1, 16, device=DEVICE, dtype=torch.float16)
    k = v = torch.randn(1, 4, 1, 16, device=DEVICE, dtype=torch.float16)
    o, lse = flash_attention(q, k, v, causal=True, return_lse=True)
    assert torch.all(o[:, :5] == 0) and torch.all(lse[..., :5] == float("inf"))
    assert torch.isfinite(lse[..., 5:]).all()


@pytest.mark.parametrize("dropout_p", [0.0, 0.17])
def test_packed_qkv_equals_separate_and_returns_one_gradient(dropout_p):
    """The packed entry point runs the same kernels on strided views: the same output, and its
    gradient holds exactly the three separate gradients, in the packed layout."""
    qkv = torch.randn(2, 40, 3, 2, 16, device=DEVICE, dtype=torch.float16, requires_grad=True)
    do = torch.randn(2, 40, 2, 16, device=DEVICE, dtype=torch.float16)
    seed = torch.tensor([7], device=DEVICE)
    packed = get_attention("flash", packed=True)(qkv, causal=True, dropout_p=dropout_p, seed=seed)
    (dqkv,) = torch.autograd.grad(packed, qkv, do)
    q, k, v = (t.detach().requires_grad_() for t in qkv.unbind(2))
    separate = get_attention("flash")(q, k, v, causal=True, dropout_p=dropout_p, seed=seed)
    torch.testing.assert_close(packed, separate, rtol=0, atol=0)
    torch.testing.assert_close(dqkv, torch.stack(torch.autograd.grad(separate, (q, k, v), do), dim=2), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"packed qkv must be \(batch, seq, 3, heads, head_dim\)"):
        get_attention("flash", packed=True)(qkv[:, :, :2])


@pytest.mark.parametrize("backend", ["flash", "flash1"])
def test_bad_inputs_raise_one_clear_error(backend):
    fn = get_attention(backend)
    ok = torch.randn(1, 8, 1, 16, device=DEVICE, dtype=torch.float16)
    with pytest.raises(ValueError, match="float16 and bfloat16"):
        fn(ok.float(), ok.float(), ok.float())
    bad_d = torch.randn(1, 8, 1, 24, device=DEVICE, dtype=torch.float16)
    with pytest.raises(ValueError, match="head_dim 24 is not supported"):
        fn(bad_d, bad_d, bad_d)
    with pytest.raises(ValueError, match="shapes do not match"):
        fn(ok, ok[:, :, :, :8], ok)


@gpu_only
def test_torch_compile_traces_through_without_graph_break():
    from attention.flash import flash_attention
    q, k, v = (torch.randn(2, 300, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    fn = lambda q, k, v: flash_attention(q, k, v, causal=True)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)  # fullgraph: a graph break is an error
    o, o_ref = compiled(q, k, v), fn(q, k, v)
    # Inductor autotunes our configs itself, so its tiles (and summation order) may differ from
    # eager's: equal up to bf16 rounding.
    torch.testing.assert_close(o, o_ref, rtol=2e-2, atol=2e-2)
    g = torch.autograd.grad(o.float().sum(), (q, k, v))
    g_ref = torch.autograd.grad(o_ref.float().sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("packed", [True, False])
def test_ops_trace_whole_under_aot_autograd(packed):
    """The custom ops' fake (shape) functions and autograd formula, as torch.compile traces
    them, on any device (aot_eager: the traced graph run eagerly), for packed qkv and separate
    q, k, v (N_q != N_k) alike; no graph break (fullgraph). The traced graph calls the same
    launch functions as eager autograd: the results are bit for bit eager's."""
    from attention.flash import flash_attention, flash_attention_qkvpacked
    g = torch.Generator(device=DEVICE).manual_seed(0)
    if packed:
        inputs = [torch.randn(2, 40, 3, 2, 16, device=DEVICE, dtype=torch.float16, generator=g)]
        fn = lambda qkv: flash_attention_qkvpacked(qkv, causal=True)  # noqa: E731
    else:
        inputs = [torch.randn(2, n, 2, 16, device=DEVICE, dtype=torch.float16, generator=g) for n in (23, 40, 40)]
        fn = lambda q, k, v: flash_attention(q, k, v, causal=True)  # noqa: E731
    inputs = [t.requires_grad_() for t in inputs]
    o, o_ref = torch.compile(fn, fullgraph=True, backend="aot_eager")(*inputs), fn(*inputs)
    torch.testing.assert_close(o, o_ref, rtol=0, atol=0)
    grads, grads_ref = (torch.autograd.grad(x.float().sum(), inputs) for x in (o, o_ref))
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_launch_options_one_home(launch, monkeypatch):
    """attention.options reach flash.configure (through get_attention); a bad key or value is
    one clear error; the environment overrides the configuration; a change empties the caches
    of compiled kernels and tuned tiles, which hold launches made under the old options."""
    from attention import flash
    get_attention("flash", tma="never", wide="always")
    assert flash.options["tma"] == "never" and flash.options["wide"] == "always"
    with pytest.raises(ValueError, match="no launch option 'tiles'; the options are autotune, tuning_cache"):
        launch(tiles=64)
    with pytest.raises(ValueError, match=re.escape("tma='on' is not one of: auto | always | never")):
        launch(tma="on")
    with pytest.raises(ValueError, match=re.escape("autotune=1 is not one of: True | False")):
        launch(autotune=1)
    monkeypatch.setenv("FLASH_TMA", "1")
    launch(tma="never")
    assert flash.options["tma"] == "always"
    monkeypatch.setenv("FLASH_TMA", "yes")
    with pytest.raises(ValueError, match="FLASH_TMA='yes': 0 or 1"):
        launch()
    monkeypatch.delenv("FLASH_TMA")
    monkeypatch.setenv("FLASH_GLUON", "1")
    launch()
    assert flash.options["gluon"] == "plain"
    monkeypatch.delenv("FLASH_GLUON")
    monkeypatch.setenv("FLASH_GLUON_BWD", "1")
    launch()
    assert flash.options["gluon_backward"] is True
    monkeypatch.delenv("FLASH_GLUON_BWD")
    with pytest.raises(ValueError, match=re.escape("gluon='fa3' is not one of: auto | off | plain | overlap | specialized | pingpong")):
        launch(gluon="fa3")
    launch(gluon_backward="tma")
    assert flash.options["gluon_backward"] == "tma"
    with pytest.raises(ValueError, match=re.escape("gluon_backward=1 is not one of: False | True | atomics | tma")):
        launch(gluon_backward=1)
    flash._COMPILED["entry"] = flash._tuned["entry"] = None
    launch()
    assert flash.options["tma"] == "auto" and not flash._COMPILED and not flash._tuned


@gpu_only
def test_torch_compile_traces_packed_qkv_and_its_gradient():
    from attention.flash import flash_attention_qkvpacked
    qkv = torch.randn(2, 300, 3, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    fn = lambda qkv: flash_attention_qkvpacked(qkv, causal=True)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    o, o_ref = compiled(qkv), fn(qkv)
    torch.testing.assert_close(o, o_ref, rtol=2e-2, atol=2e-2)
    (g,), (g_ref,) = torch.autograd.grad(o.float().sum(), qkv), torch.autograd.grad(o_ref.float().sum(), qkv)
    torch.testing.assert_close(g, g_ref, rtol=2e-2, atol=2e-2)


@pytest.fixture
def launch():
    """flash.configure, with the default launch options back after the test."""
    from attention import flash
    yield flash.configure
    flash.configure()


@pytest.mark.parametrize("causal", [False, True])
def test_64_bit_index_path(launch, causal):
    """The int64 offsets taken when a tensor spans 2^31 elements or more (flash.wide), forced at
    a small size: the same criterion as the grid, with dropout and N_q != N_k."""
    launch(wide="always")
    for name, (ours, naive, floor) in zip(["out", "dq", "dk", "dv"],
                                          _errors("flash", torch.float16, 16, causal, 40, 23, 0.17)):
        assert ours <= 2 * naive + floor, f"{name}: error {ours:.2e} > 2 x naive {naive:.2e} + {floor:.1e}"


@pytest.mark.parametrize("causal", [False, True])
def test_tma_forward_path(launch, causal):
    """The Hopper forward (Q, K, V through tensor descriptors), forced off Hopper: ragged
    blocks (rows past N read as zeros), dropout, N_q != N_k, and layouts whose rows the copy
    engine cannot address (they fall back to pointer loads)."""
    launch(tma="always")
    for n_q, n_k, p in [(40, 23, 0.17), (23, 40, 0.0)]:
        for name, (ours, naive, floor) in zip(["out", "dq", "dk", "dv"],
                                              _errors("flash", torch.float16, 16, causal, n_q, n_k, p)):
            assert ours <= 2 * naive + floor, f"{name}: error {ours:.2e} > 2 x naive {naive:.2e} + {floor:.1e}"
    for layout in ["fused-qkv", "misaligned"]:
        for name, (ours, naive, floor) in zip(["out", "dq", "dk", "dv"],
                                              _errors("flash", torch.float16, 16, causal, 40, 40, 0.0,
                                                      layout=LAYOUTS[layout])):
            assert ours <= 2 * naive + floor, f"{layout} {name}: error {ours:.2e} > 2 x naive {naive:.2e} + {floor:.1e}"


def test_tma_only_where_the_copy_engine_can_address_the_rows(launch):
    from attention import flash
    t = torch.empty(2, 8, 3, 16, dtype=torch.float16)
    odd_rows = torch.empty(2, 8, 49, dtype=torch.float16)[:, :, :48].unflatten(-1, (3, 16))  # 98-byte rows
    shifted = torch.empty(2 * 8 * 48 + 1, dtype=torch.float16)[1:].view(2, 8, 3, 16)  # 2-byte offset
    launch(tma="auto")
    assert not flash.tma_ok(t, t, t)  # not a Hopper GPU
    launch(tma="never")
    assert not flash.tma_ok(t, t, t)
    launch(tma="always")
    assert flash.tma_ok(t, t, t)
    assert not flash.tma_ok(t, odd_rows, t)
    assert not flash.tma_ok(t, t, shifted)


def test_tuning_key_separates_grid_sizes():
    from attention.flash import bucket
    assert [bucket(n) for n in (1, 2, 3, 12, 16, 17, 384)] == [1, 2, 4, 16, 16, 32, 512]


@pytest.mark.parametrize("causal", [False, True])
def test_program_order_changes_no_result(monkeypatch, causal):
    """Heads outermost or innermost (flash._schedule) only reorders programs: every output and
    gradient is bit for bit the same, ragged blocks and N_q != N_k included."""
    from attention import flash
    g = torch.Generator(device=DEVICE).manual_seed(0)
    q = torch.randn(2, 40, 3, 16, device=DEVICE, dtype=torch.float16, generator=g)
    k, v = (torch.randn(2, 23, 3, 16, device=DEVICE, dtype=torch.float16, generator=g) for _ in range(2))
    results = []
    for outer in (False, True):
        monkeypatch.setattr(flash, "heads_outer", lambda device, batch_heads, causal, outer=outer: outer)
        monkeypatch.setattr(flash, "_COMPILED", {})  # on a GPU, the launch cache would keep the first order
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        o = flash.flash_attention(*x, causal=causal)
        results.append([o, *torch.autograd.grad(o, x, torch.ones_like(o))])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@gpu_only
def test_lengths_in_one_bucket_share_one_tuning():
    """A new length whose power-of-two bucket was tuned runs at once with the tuned tiles."""
    from attention import flash
    if not flash.options["autotune"]:
        pytest.skip("FLASH_AUTOTUNE=0: fixed tiles, nothing tuned")
    keys = []
    for n in (1000, 1020, 1024, 1025):
        q = torch.randn(1, n, 2, 64, device="cuda", dtype=torch.bfloat16)
        flash.flash_attention(q, q, q, causal=True)
        tuner = flash._tuned["fwd", 64, flash.tma_ok(q, q, q)]
        keys.append(set(tuner.cache))
    assert keys[0] == keys[1] == keys[2] and len(keys[3] - keys[2]) == 1


def test_wide_is_chosen_by_the_largest_offset():
    from attention.flash import wide
    small = torch.empty(2, 8, 3, 16, device="meta")
    assert not wide(small)
    assert wide(torch.empty(64, 8192, 64, 64, device="meta"))  # 2^31 elements
    assert wide(torch.empty(1, device="meta").as_strided((2, 3, 1, 64), (2**31, 64, 64, 1)))  # a view reaching past


@gpu_only
def test_inputs_of_2_to_the_31_elements():
    """2^31 elements per tensor (64 x 8192 tokens x 64 heads x 64): forward and backward through
    the int64 path, the last batch element (past 2^31 - 1) checked against SDPA on it alone."""
    import torch.nn.functional as F
    B, N, H, D = 64, 8192, 64, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
               for _ in range(3))
    do = torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16, generator=g)
    o = get_attention("flash")(q, k, v, causal=True)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), do)
    last = [t[-1:].detach().transpose(1, 2).requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*last, is_causal=True)
    ref_grads = torch.autograd.grad(ref, last, do[-1:].transpose(1, 2))
    for name, ours, theirs in zip(["out", "dq", "dk", "dv"], (o, dq, dk, dv), (ref, *ref_grads)):
        err = (ours[-1:].float() - theirs.transpose(1, 2).float()).abs().max().item()
        assert err < 0.05, f"{name}: max error {err:.3f} in the last batch element"
