"""attention/flash.py's three kernels compiled for Hopper (sm90) without a GPU: Triton's NVIDIA
backend and ptxas take every mask mode, and a block mask's loop over its listed tiles is one
pipelined loop (its copies for the tiles ahead issued inside it), which the CPU interpreter
cannot show. Run without TRITON_INTERPRET, in a process of its own."""

import pytest

from tests.conftest import compiled_for_sm90

pytest.importorskip("triton.backends.nvidia")

MODES = {"dense": {}, "causal window": {"CAUSAL": True, "WINDOW": True}, "documents": {"DOC": True},
         "dropout": {"DROPOUT": True}, "block mask": {"SPARSE": True}}
KERNELS = {"fwd": ("flash2_fwd_kernel", {"B_r": 128, "B_c": 64, "TMA": True}),
           "fwd, pointers": ("flash2_fwd_kernel", {"B_r": 128, "B_c": 64, "TMA": False}),
           "dq": ("flash2_bwd_dq_kernel", {"B_r": 128, "B_c": 64}),
           "dkdv": ("flash2_bwd_dkdv_kernel", {"B_r": 64, "B_c": 128})}
POINTERS = {"LSE": "*fp32", "Delta": "*fp32", "dLSE": "*fp32", "seed_ptr": "*i64", "DocStart": "*i32", "DocEnd": "*i32",
            "Blocks": "*i32", **dict.fromkeys(["Q", "K", "V", "O", "dO", "dK", "dV", "dQ"], "*bf16")}


def compile_for_sm90(kernel, mode):
    """The kernel's TTGIR loops in order (each scf.for's indentation, whether it holds another
    loop, the async copies issued in its body) and its cubin's size, compiled for sm90 at d=64."""
    import re
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from attention import flash
    name, tiles = KERNELS[kernel]
    fn = getattr(flash, name)
    while not isinstance(fn, triton.runtime.jit.JITFunction):  # under the autotuner / heuristics
        fn = fn.fn
    constexprs = {"CAUSAL": False, "WINDOW": False, "DOC": False, "SPARSE": False, "DROPOUT": False, "D": 64, "G": 128,
                  "WIDE": False, "HEADS_OUTER": True, "HAS_DLSE": False, **MODES[mode], **tiles}
    signature = {p.name: "constexpr" if p.is_constexpr else POINTERS.get(p.name) or
                 ("fp32" if p.name in ("qk_scale", "sm_scale", "dropout_p") else "i32") for p in fn.params}
    src = ASTSource(fn, signature=signature, constexprs={k: v for k, v in constexprs.items() if signature.get(k) == "constexpr"})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "num_stages": 3})
    lines = compiled.asm["ttgir"].splitlines()
    loops = []
    for i, line in enumerate(lines):  # a loop's body: the lines up to the "}" at its own indentation
        if "scf.for" in line:
            indent = len(line) - len(line.lstrip())
            end = next(k for k in range(i + 1, len(lines)) if lines[k].startswith(" " * indent + "}"))
            body = lines[i + 1:end]
            loops.append({"indent": indent, "nested": any("scf.for" in b for b in body),
                          "copies": sum(bool(re.search(r"async_(tma_)?copy_global_to_local", b)) for b in body)})
    return {"cubin": len(compiled.asm["cubin"]), "loops": loops}


@pytest.fixture(scope="module")
def compiled():
    return compiled_for_sm90("tests.test_attention_flash_sm90", "compile_for_sm90", [(k, m) for k in KERNELS for m in MODES])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mode", MODES)
def test_compiles_for_sm90(compiled, kernel, mode):
    assert compiled[kernel, mode]["cubin"] > 0


@pytest.mark.parametrize("kernel", ["fwd", "dkdv"])
def test_a_block_masks_full_tiles_run_in_one_pipelined_loop(compiled, kernel):
    """The first loop of the block-mask path (the listed full blocks) is outermost and issues
    copies inside itself: the tiles ahead are fetched while one computes. Before, the loop
    over blocks held an inner loop per block, whose pipeline started cold at every block."""
    loops = compiled[kernel, "block mask"]["loops"]
    first = loops[0]
    assert first["indent"] == min(loop["indent"] for loop in loops) and not first["nested"] and first["copies"] > 0
