"""Time to the first fwd+bwd of our kernel at a shape this process has not run: compilation
(Triton's on-disk kernel cache may hold it) plus autotuning the three kernels (skipped when
the tuning results persisted by an earlier process apply: attention/flash.py's tuning_cache
option).

    python -m benchmarks.first_call --shape 4,4096,12,64 [--no-causal]   # prints one JSON line
    python -m benchmarks.first_call --shape 4,4096,12,64 --lengths 4000,3000,4097   # and one per length

Run it in fresh processes sharing TRITON_CACHE_DIR to see what the cache saves; each call
measures one process's first call, then a second call at the same shape for comparison.
--lengths then times the first call at other sequence lengths in the same process (the same
number of tokens per batch): lengths in a tuned power-of-two bucket are not tuned again.
Each line splits the first call into its forward and backward and names the path taken
(`gluon`: the Hopper forward's setting; FLASH_GLUON=0 in front times the portable kernels alone).
torch's own first backward in the process (an import of sympy) runs before the timing.
"""

import argparse
import json
import os
import time

import torch

from attention import flash, get_attention
from benchmarks.harness import metadata


def fwd_bwd(attn, q, k, v, do, causal):
    """(forward s, backward s), each synchronized: where a first call's time goes (the two
    passes are different kernels, compiled, tuned and cached apart)."""
    start = time.perf_counter()
    o = attn(q, k, v, causal=causal)
    torch.cuda.synchronize()
    mid = time.perf_counter()
    torch.autograd.grad(o, (q, k, v), do)
    torch.cuda.synchronize()
    return mid - start, time.perf_counter() - mid


def warm_torch():
    """torch's own first-use work, which any first backward pays and which is not our kernels':
    autograd's first grad imports sympy through torch.fx (2.4 s of a 2.5 s first backward in a
    cProfile of this script, benchmarks/results/h100/first-call/README.md)."""
    x = torch.ones(1, device="cuda", requires_grad=True)
    torch.autograd.grad(x * 2, x, torch.ones_like(x))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="4,4096,12,64", help="B,N,H,D")
    p.add_argument("--no-causal", dest="causal", action="store_false")
    p.add_argument("--lengths", default="", help="further sequence lengths, comma-separated, timed after --shape")
    a = p.parse_args()
    if not torch.cuda.is_available():
        p.error("times our kernels' first call on a CUDA GPU and none is visible")
    B, N, H, D = map(int, a.shape.split(","))
    attn = get_attention("flash")
    print(json.dumps(metadata()), flush=True)
    warm_torch()
    for n in [N, *map(int, filter(None, a.lengths.split(",")))]:
        b = max(1, B * N // n)
        q, k, v, do = (torch.randn(b, n, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=i < 3) for i in range(4))
        torch.cuda.synchronize()
        (f_fwd, f_bwd), (s_fwd, s_bwd) = (fwd_bwd(attn, q, k, v, do, a.causal) for _ in range(2))
        print(json.dumps({"shape": [b, n, H, D], "causal": a.causal, "first_s": f_fwd + f_bwd, "second_s": s_fwd + s_bwd,
                          "first_fwd_s": f_fwd, "first_bwd_s": f_bwd,
                          "gluon": flash.options["gluon"], "gluon_backward": flash.options["gluon_backward"],
                          "tuning_cache": flash.options["tuning_cache"],
                          "triton_cache_dir": os.environ.get("TRITON_CACHE_DIR")}), flush=True)


if __name__ == "__main__":
    main()
