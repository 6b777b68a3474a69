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
"""

import argparse
import json
import os
import time

import torch

from attention import flash, get_attention
from benchmarks.harness import metadata


def fwd_bwd(attn, q, k, v, do, causal):
    o = attn(q, k, v, causal=causal)
    torch.autograd.grad(o, (q, k, v), do)
    torch.cuda.synchronize()


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
    for n in [N, *map(int, filter(None, a.lengths.split(",")))]:
        b = max(1, B * N // n)
        q, k, v, do = (torch.randn(b, n, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=i < 3) for i in range(4))
        torch.cuda.synchronize()
        times = []
        for _ in range(2):
            start = time.perf_counter()
            fwd_bwd(attn, q, k, v, do, a.causal)
            times.append(time.perf_counter() - start)
        print(json.dumps({"shape": [b, n, H, D], "causal": a.causal, "first_s": times[0], "second_s": times[1],
                          "tuning_cache": flash.options["tuning_cache"],
                          "triton_cache_dir": os.environ.get("TRITON_CACHE_DIR")}), flush=True)


if __name__ == "__main__":
    main()
