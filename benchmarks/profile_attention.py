"""Where the time goes in one fwd+bwd: GPU kernel times (torch.profiler) per provider, and
the host-side cost per call on a problem too small to hide it.

    python -m benchmarks.profile_attention --seqlen 1024 --head-dim 64 --heads 12

Under Nsight Compute, --bare runs the fwd+bwd calls only (no torch.profiler, whose CUPTI use
would clash with ncu's), so that ncu's kernel filter picks a launch at the real shape:

    ncu --clock-control none -k regex:fa3_bwd --launch-skip 2 --launch-count 1 --section WarpStateStats \
        python -m benchmarks.profile_attention --providers flash-gluon-bwd --seqlen 4096 --bare
"""

import argparse
import time

import torch

from benchmarks.bench_attention import providers


def host_us_per_call(fn, n=200, host_profile=False):
    """Host time of one forward and of one fwd+bwd on a problem too small to keep the GPU busy
    (so wall time is host time); grads are reset to None as in the benchmark."""
    q, k, v = (torch.randn(1, 128, 1, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.ones_like(q)

    def loop(backward):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            o = fn(q, k, v, causal=True)
            if backward:
                q.grad = k.grad = v.grad = None
                o.backward(do)
        torch.cuda.synchronize()
        return 1e6 * (time.perf_counter() - t) / n

    loop(True)  # warm-up
    if host_profile:
        import cProfile
        import pstats
        with cProfile.Profile() as prof:
            loop(True)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return loop(False), loop(True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--providers", default="flash,sdpa-flash,sdpa-cudnn")
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--causal", type=int, default=1)
    ap.add_argument("--host-profile", action="store_true", help="cProfile of the host path, per provider")
    ap.add_argument("--bare", action="store_true", help="only the fwd+bwd calls, for a profiler attached from outside")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        ap.error("profiles kernels on a CUDA GPU and none is visible")
    b, n = max(1, args.tokens // args.seqlen), args.seqlen
    for name, fn in providers(args.providers.split(",")).items():
        q, k, v = (torch.randn(b, n, args.heads, args.head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        do = torch.randn_like(q)
        for _ in range(5):
            fn(q, k, v, causal=bool(args.causal)).backward(do)
        torch.cuda.synchronize()
        if args.bare:
            continue
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                fn(q, k, v, causal=bool(args.causal)).backward(do)
            torch.cuda.synchronize()
        fwd_us, all_us = host_us_per_call(fn, host_profile=args.host_profile)
        print(f"== {name}: B={b} N={n} H={args.heads} d={args.head_dim} causal={args.causal}; "
              f"host cost per tiny call: fwd {fwd_us:.0f} us, fwd+bwd {all_us:.0f} us")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60))


if __name__ == "__main__":
    main()
