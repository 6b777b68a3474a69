"""attention/hopper.py, the Gluon forward for Hopper: on the CPU, which calls it takes (the
dispatch rules) and that each variant compiles for sm90 through ptxas; on a Hopper GPU, the
grid's criterion (error at most 2x the same-dtype reference's, outputs and gradients) with each
Gluon path switched on and seen to run. The backward's Triton preprocess runs on both."""

import sys

import pytest
import torch

from tests.conftest import GPU, INTERPRET, compiled_for_sm90

hopper = pytest.importorskip("attention.hopper", reason="this Triton has no Gluon")
HOPPER = GPU and torch.cuda.get_device_capability()[0] == 9
DEVICE = "cuda" if GPU else "cpu"


def qkv(B=2, N=1024, H=3, D=64, dtype=torch.bfloat16, packed=False):
    if packed:  # views of the fused projection's output, (B, N, 3, H, d)
        return torch.zeros(B, N, 3, H, D, dtype=dtype).unbind(2)
    return [torch.zeros(B, N, H, D, dtype=dtype) for _ in range(3)]


def test_which_calls_it_takes():
    sm90 = (9, 0)
    assert hopper.supported(*qkv(), capability=sm90) is None
    assert hopper.supported(*qkv(D=128, dtype=torch.float16, packed=True), capability=sm90) is None
    assert "Hopper" in hopper.supported(*qkv(), capability=(8, 0))
    assert "Hopper" in hopper.supported(*qkv())  # CPU tensors: no GPU asked
    assert "head dim 96" in hopper.supported(*qkv(D=96), capability=sm90)
    assert "dtype" in hopper.supported(*qkv(dtype=torch.float32), capability=sm90)
    assert "N=1000" in hopper.supported(*qkv(N=1000), capability=sm90)
    q, k, v = qkv()
    assert "N_q != N_k" in hopper.supported(q, k[:, :512], v[:, :512], capability=sm90)
    assert "dropout" in hopper.supported(q, k, v, dropout_p=0.1, capability=sm90)
    assert "layout" in hopper.supported(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, capability=sm90)
    with pytest.raises(ValueError, match="attention.hopper: needs a Hopper GPU"):
        hopper.flash_fwd(q, k, v)


@pytest.mark.skipif(not (GPU or INTERPRET), reason="needs a CUDA GPU or TRITON_INTERPRET=1")
def test_flash_takes_the_gluon_forward_only_where_it_applies(monkeypatch):
    """attention.options.gluon routes flash's forward to attention/hopper.py when `supported`
    says yes and no dropout, window, documents or block mask is asked for; the portable forward
    otherwise (on this machine `supported` says no, so the outputs must be the portable ones)."""
    from attention import flash, get_attention
    q, k, v = (torch.randn(1, 32, 2, 16, device=DEVICE, dtype=torch.float16) for _ in range(3))
    fn = get_attention("flash", gluon="plain")
    try:
        expected = flash._flash2_fwd(q, k, v, flash.zero_seed(q.device), True, 0.0, 0.25, 0, None, None, None, None, 128)
        calls = []
        monkeypatch.setattr(hopper, "forward", lambda *a: calls.append(a[-1]) or expected)
        assert torch.equal(fn(q, k, v, causal=True), expected[0]) and not calls  # not Hopper: the portable path
        monkeypatch.setattr(hopper, "supported", lambda *a, **kw: None)
        fn(q, k, v, causal=True)
        assert calls == ["plain"]
        fn(q, k, v, causal=True, window=8)
        fn(q, k, v, causal=True, dropout_p=0.1)
        assert len(calls) == 1  # masks and dropout stay on the portable path
    finally:
        flash.configure()


def test_auto_runs_a_variant_only_where_it_was_measured_faster(monkeypatch):
    """gluon=auto: hopper.AUTO's variant on a Hopper GPU at its head dims and
    lengths, under 2^31 elements; the portable forward on other GPUs, the CPU, and other shapes.
    (Shapes only: meta tensors and a stand-in for a CUDA tensor, no GPU needed.)"""
    from types import SimpleNamespace

    from attention import flash
    shape = lambda N=2048, D=128, B=1, H=2: torch.empty(B, N, H, D, device="meta")
    variant, min_n = hopper.AUTO[128]
    assert hopper.auto_variant(shape(N=min_n)) == variant
    assert hopper.auto_variant(shape(N=min_n // 2)) is None and hopper.auto_variant(shape(D=64)) is None
    assert hopper.auto_variant(shape(N=2**20, B=8, H=16)) is None   # 2^34 elements: the portable int64 path
    cuda = lambda t: SimpleNamespace(device=torch.device("cuda", 0), shape=t.shape, numel=t.numel)
    try:
        flash.configure(gluon="auto")
        monkeypatch.setattr(flash, "_device", lambda device: (True, 132))   # (is Hopper, SMs)
        assert flash._gluon_variant(cuda(shape())) == variant and flash._gluon_variant(cuda(shape(D=64))) is None
        assert flash._gluon_variant(shape()) is None            # not a CUDA tensor
        monkeypatch.setattr(flash, "_device", lambda device: (False, 108))
        assert flash._gluon_variant(cuda(shape())) is None      # not Hopper
        flash.configure()
        monkeypatch.setattr(flash, "_device", lambda device: (True, 132))
        assert flash.options["gluon"] == "auto" and flash._gluon_variant(cuda(shape())) == variant   # the default
        import attention
        with monkeypatch.context() as m:   # a Triton without Gluon: importing attention.hopper fails
            m.setitem(sys.modules, "attention.hopper", None)
            m.delattr(attention, "hopper")
            assert flash._gluon_variant(cuda(shape())) is None  # the portable forward, no error
        flash.configure(gluon="off")
        assert flash._gluon_variant(cuda(shape())) is None
        flash.configure(gluon="plain")
        assert flash._gluon_variant(cuda(shape(D=64))) == "plain"  # asked for: wherever `supported` says yes
    finally:
        flash.configure()


def compile_for_sm90(variant, D, causal):
    """The kernel through Gluon, the NVIDIA backend and ptxas for sm90, no GPU needed: what a
    check reads of it. Run without TRITON_INTERPRET, which would hand Gluon interpreted helpers.
    variant "backward": the one-kernel backward ("-tma": dQ added by TMA; "-overlap": with
    BWD_OVERLAP's overlap of a step's elementwise work with its matmuls, dQ in BWD_DQ_PARTS)."""
    from triton.runtime.jit import mangle_type
    from triton.experimental.gluon import language as gl
    q = qkv(D=D)[0]
    if variant.startswith("backward"):
        tiles = hopper.BWD_TILES[D]
        rows = dict(Q_desc="B_r", K_desc="B_c", V_desc="B_c", dO_desc="B_r", dK_desc="B_c", dV_desc="B_c")
        descs = {name: hopper._matrix(q, tiles[r]) for name, r in rows.items()}
        overlap = "-overlap" in variant
        parts = hopper.BWD_DQ_PARTS[D] if overlap else 1
        descs["dQ_desc"] = hopper._matrix(q.float(), tiles["B_r"], D // parts)
        scalars = {"dQ": "*fp32", "LSE": "*fp32", "Delta": "*fp32", "N": "i32", "H": "i32", "qk_scale": "fp32",
                   "scale": "fp32"}
        constexprs = {"dS_layout": gl.NVMMASharedLayout.get_default_for([tiles["B_c"], tiles["B_r"]], gl.bfloat16),
                      "CAUSAL": causal, "STAGES": tiles["STAGES"], "HEADS_OUTER": not causal,
                      "DQ_TMA": variant.endswith("-tma"), "OVERLAP": overlap, "DQ_PARTS": parts,
                      "num_warps": tiles["num_warps"]}
        kernel = hopper.fa3_bwd_kernel
    else:
        tiles = hopper.TILES[variant][D]
        descs = dict(zip(["Q_desc", "K_desc", "V_desc", "O_desc"], hopper.descriptors(q, q, q, q, variant)))
        scalars = {"LSE": "*fp32", "N": "i32", "H": "i32", "qk_scale": "fp32"}
        constexprs = {"CAUSAL": causal, "SCHEDULE": variant, "STAGES": tiles["STAGES"], "HEADS_OUTER": not causal,
                      "num_warps": tiles["num_warps"]}
        kernel = hopper.fa3_fwd_kernel
    signature = {**{k: mangle_type(v) for k, v in descs.items()}, **scalars, **dict.fromkeys(constexprs, "constexpr")}
    return _compiled(kernel, signature, constexprs, tiles["num_warps"])


def _compiled(kernel, signature, constexprs, num_warps):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    src = GluonASTSource(kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    ptx = compiled.asm["ptx"]
    return {"cubin": len(compiled.asm["cubin"]), "wgmma": "wgmma.mma_async" in ptx, "tma": "cp.async.bulk.tensor" in ptx,
            "atomics": "red.global" in ptx or "atom.global" in ptx, "tma_add": "cp.reduce.async.bulk.tensor" in ptx,
            "shared": compiled.metadata.shared}


BACKWARDS = ("backward", "backward-tma", "backward-overlap", "backward-overlap-tma")
CASES = [(variant, D, causal) for variant in (*hopper.VARIANTS, *BACKWARDS) for D in hopper.HEAD_DIMS
         for causal in (False, True)]


@pytest.fixture(scope="module")
def compiled():
    """Every variant compiled in one process without the interpreter."""
    return compiled_for_sm90("tests.test_attention_hopper", "compile_for_sm90", CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_compiles_for_sm90(compiled, case):
    """TMA copies and wgmma in the PTX, a cubin from ptxas, within Hopper's shared memory; the
    backward reduces dQ with atomics, or with TMA's reduce-add (no atomics then)."""
    k = compiled[case]
    assert k["cubin"] and k["wgmma"] and k["tma"]
    assert k["shared"] <= 227 * 1024
    assert k["atomics"] == (case[0].startswith("backward") and not case[0].endswith("-tma"))
    assert k["tma_add"] == case[0].endswith("-tma")


# The Gluon paths, each as the launch options that select it, the function they route to and
# the module switches set for it (the backward's overlapped order, both ways of adding dQ).
GLUON_PATHS = [({"gluon": variant}, "forward", {}) for variant in hopper.VARIANTS] + \
    [({"gluon_backward": True}, "backward", {}), ({"gluon": "plain", "gluon_backward": True}, "backward", {}),
     ({"gluon_backward": "atomics"}, "backward", {}), ({"gluon_backward": "tma"}, "backward", {})] + \
    [({"gluon_backward": way}, "backward", {"BWD_OVERLAP": not hopper.BWD_OVERLAP}) for way in ("atomics", "tma")]


@pytest.fixture(params=GLUON_PATHS,
                ids=lambda p: "-".join([*map(str, p[0].values()), *(f"{k}={v}" for k, v in p[2].items())]))
def gluon_on(monkeypatch, request):
    """A Gluon path's options, and the calls that took it (flash's options are reset by
    get_attention, so the tests pass them through it)."""
    from attention import flash
    options, name, switches = request.param
    for switch, value in switches.items():
        monkeypatch.setattr(hopper, switch, value)
    calls = []
    real = getattr(hopper, name)
    monkeypatch.setattr(hopper, name, lambda *a, **kw: calls.append(1) or real(*a, **kw))
    yield options, calls
    flash.configure()


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", hopper.HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("N", [128, 1024, 4096])
def test_matches_reference_on_hopper(gluon_on, dtype, D, causal, N):
    """The grid's criterion (outputs and gradients) with a Gluon path on, the rest flash.py's."""
    from tests.test_attention_flash import _errors
    options, calls = gluon_on
    errors = _errors("flash", dtype, D, causal, N, N, 0.0, options=options)
    for name, (ours, naive, floor) in zip(["out", "dq", "dk", "dv"], errors):
        assert ours == ours, f"{name}: NaN"
        assert ours <= 2 * naive + floor, f"{name}: error {ours:.2e} > 2 x naive {naive:.2e} + {floor:.1e}"
    assert calls, f"the Gluon path {options} did not run"


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("variant", hopper.VARIANTS)
def test_lse_matches_the_portable_kernel(variant):
    from attention import flash
    q, k, v = (torch.randn(2, 2048, 4, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    o, lse = hopper.flash_fwd(q, k, v, causal=True, variant=variant)
    o_ref, lse_ref = flash._flash2_fwd(q, k, v, flash.zero_seed(q.device), True, 0.0, 128 ** -0.5, 0, None, None,
                                       None, None, 128)
    torch.testing.assert_close(lse, lse_ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(o, o_ref, rtol=0, atol=2e-2)


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("options", [dict(gluon="pingpong", gluon_backward=True), dict(gluon="auto")],
                         ids=["pingpong-bwd", "auto"])
def test_torch_compile_traces_through_the_gluon_paths(monkeypatch, options):
    """flash under torch.compile(fullgraph=True) with the Gluon forward (and backward) on: no graph
    break, the same outputs and gradients as eager up to bf16 rounding, and the Gluon kernels ran."""
    from attention import flash
    from attention.flash import flash_attention
    calls = []
    for name in ("forward", "backward"):
        real = getattr(hopper, name)
        monkeypatch.setattr(hopper, name, lambda *a, _real=real, _name=name, **kw: calls.append(_name) or _real(*a, **kw))
    try:
        flash.configure(**options)
        q, k, v = (torch.randn(2, 2048, 4, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        fn = lambda q, k, v: flash_attention(q, k, v, causal=True)  # noqa: E731
        o, o_ref = torch.compile(fn, fullgraph=True)(q, k, v), fn(q, k, v)
        torch.testing.assert_close(o, o_ref, rtol=2e-2, atol=2e-2)
        g = torch.autograd.grad(o.float().sum(), (q, k, v))
        g_ref = torch.autograd.grad(o_ref.float().sum(), (q, k, v))
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
        assert "forward" in calls and ("backward" in calls) == options.get("gluon_backward", False)
    finally:
        flash.configure()


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
def test_forward_at_2_31_elements():
    """The Gluon forward asked for explicitly at 2^31 elements a tensor (16 GB of q, k, v, o):
    the first and last heads (the last past 2^31 elements from the start) against SDPA on those
    heads alone; `auto` leaves such a call to the portable kernel's int64 path."""
    import torch.nn.functional as F
    B, N, H, D = 1, 131072, 128, 128
    assert B * N * H * D == 2**31
    q, k, v = (torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    assert hopper.auto_variant(q) is None
    o, lse = hopper.flash_fwd(q, k, v, causal=True, variant="plain")
    for h in (0, H - 1):
        one = lambda x: x[:, :, h:h + 1].transpose(1, 2)  # noqa: E731  (B, 1, N, d) for SDPA
        ref = F.scaled_dot_product_attention(one(q), one(k), one(v), is_causal=True).transpose(1, 2)
        torch.testing.assert_close(o[:, :, h:h + 1], ref, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not (GPU or INTERPRET), reason="needs a CUDA GPU or TRITON_INTERPRET=1")
def test_backward_preprocess_is_delta_and_a_zeroed_dq(monkeypatch):
    """Delta_i = rowsum(dO_i * O_i) in fp32, (B, H, N), and the dQ accumulator all zeros (its
    buffer handed over full of NaN); O as a view of a packed tensor, dO contiguous."""
    full = torch.full
    monkeypatch.setattr(hopper.torch, "empty", lambda *shape, **kw: full(shape, float("nan"), **kw))
    B, N, H, D = 2, 128, 3, 64
    o = torch.randn(B, N, 2, H, D, device=DEVICE, dtype=torch.bfloat16)[:, :, 1]
    do = torch.randn(B, N, H, D, device=DEVICE, dtype=torch.bfloat16)
    delta, dq_acc = hopper.preprocess(do, o)
    want = (do.float() * o.float()).sum(-1).transpose(1, 2)
    torch.testing.assert_close(delta, want, rtol=1e-5, atol=1e-4)
    assert dq_acc.dtype == torch.float32 and dq_acc.shape == (B, N, H, D) and not dq_acc.any()


def test_which_backward_calls_it_takes():
    q, k, v = qkv()
    assert hopper.supported_backward(q, q, k, v) is None
    packed = qkv(D=128, dtype=torch.float16, packed=True)  # dK and dV as views of one packed gradient
    assert hopper.supported_backward(packed[0], *packed) is None
    assert "dtype" in hopper.supported_backward(q, q.half(), k, v)
    assert "layout" in hopper.supported_backward(q, q.transpose(1, 2).contiguous().transpose(1, 2), k, v)


def test_the_backward_adds_dq_the_way_measured_faster():
    """gluon_backward=true: TMA reduce-adds at d=128 without the mask (measured 1.10x atomics),
    atomics elsewhere; atomics / tma force one way."""
    assert hopper.dq_by_tma("auto", 128, False)
    assert not hopper.dq_by_tma("auto", 128, True) and not hopper.dq_by_tma("auto", 64, False)
    assert hopper.dq_by_tma("tma", 64, True) and not hopper.dq_by_tma("atomics", 128, False)


@pytest.mark.skipif(not (GPU or INTERPRET), reason="needs a CUDA GPU or TRITON_INTERPRET=1")
def test_flash_takes_the_gluon_backward_only_where_it_applies(monkeypatch):
    """attention.options.gluon_backward routes flash's backward to hopper.backward when both
    `supported` checks say yes and no dropout, window or mask is asked for."""
    from attention import get_attention
    from attention import flash
    q, k, v = (torch.randn(1, 32, 2, 16, device=DEVICE, dtype=torch.float16, requires_grad=True) for _ in range(3))
    fn = get_attention("flash", gluon_backward=True)
    calls = []
    try:
        fn(q, k, v, causal=True).sum().backward()  # not Hopper: the portable backward
        monkeypatch.setattr(hopper, "supported", lambda *a, **kw: None)
        monkeypatch.setattr(hopper, "supported_backward", lambda *a, **kw: None)
        monkeypatch.setattr(hopper, "backward", lambda *a, dq_add: calls.append((a[6], dq_add)))
        fn(q, k, v, causal=True).sum().backward()
        assert calls == [(True, "auto")]  # the causal flag reached it; dQ added as measured faster
        fn(q, k, v, causal=True, window=8).sum().backward()
        fn(q, k, v, causal=True, dropout_p=0.1).sum().backward()
        assert len(calls) == 1  # masks and dropout stay on the portable path
        get_attention("flash", gluon_backward="tma")(q, k, v).sum().backward()
        get_attention("flash", gluon_backward="atomics")(q, k, v).sum().backward()
        assert calls[1:] == [(False, "tma"), (False, "atomics")]  # forced either way
    finally:
        flash.configure()
