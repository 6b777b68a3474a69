"""Generation speed with and without the KV cache, per attention backend, one process.

    python -m benchmarks.generation_speed [--init-from RUN_DIR] --out benchmarks/results/h100/generation

GPT-2 small (the checkpoint's weights, or a fresh init: speed does not depend on them), batch 1,
bf16 autocast, greedy. Per backend and prompt length: prefill time, decode tokens/s (one token
per step), and whether the cached tokens equal the recomputed ones (bf16: the two paths round
differently, so a late divergence between near-tied logits is possible; the first differing
position is reported).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks import harness
from model import GPT, GPTConfig
from model.generation import generate
from training.weights import load_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--init-from")
    ap.add_argument("--backends", default="flash,sdpa,naive")
    ap.add_argument("--prompts", default="128,896", help="prompt lengths")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    rows = []
    for backend in a.backends.split(","):
        if a.init_from:
            model, what = load_model(a.init_from, attention=backend)
        else:
            torch.manual_seed(0)
            model, what = GPT(GPTConfig(attention=backend)), "GPT-2 small, fresh init"
        model.cuda()
        for n in map(int, a.prompts.split(",")):
            idx = torch.randint(0, 50257, (1, n), device="cuda", generator=torch.Generator("cuda").manual_seed(n))
            generate(model, idx, 8, temperature=0, autocast=autocast)  # compile and tune the prefill shape
            t0 = time.time()
            cached, t_cache = generate(model, idx, a.new, temperature=0, autocast=autocast)
            plain, t_plain = generate(model, idx, a.new, temperature=0, cache=False, autocast=autocast)
            same = (cached == plain).all(0)
            first_diff = None if bool(same.all()) else int((~same).nonzero()[0]) - n
            row = dict(backend=backend, prompt=n, new_tokens=a.new, prefill_ms=1000 * t_cache["prefill_s"],
                       decode_tokens_per_s_cache=t_cache["decode_tokens_per_s"],
                       decode_tokens_per_s_no_cache=t_plain["decode_tokens_per_s"],
                       cache_speedup=t_cache["decode_tokens_per_s"] / t_plain["decode_tokens_per_s"],
                       greedy_tokens_equal=first_diff is None, first_difference_at=first_diff)
            rows.append(row)
            print(json.dumps(row), f"({time.time() - t0:.0f}s)", flush=True)
    meta = harness.metadata(model=what, dtype="bfloat16 autocast", batch=1)
    table = harness.md_table(
        ["backend", "prompt", "prefill ms", "decode tok/s, cache", "decode tok/s, no cache", "cache speedup",
         "greedy tokens equal"],
        [[r["backend"], r["prompt"], f"{r['prefill_ms']:.1f}", f"{r['decode_tokens_per_s_cache']:,.0f}",
          f"{r['decode_tokens_per_s_no_cache']:,.0f}", f"{r['cache_speedup']:.1f}x",
          "yes" if r["greedy_tokens_equal"] else f"until new token {r['first_difference_at']}"] for r in rows])
    print(table)
    if a.out:
        harness.write(a.out, "generation", meta, rows, table, "Generation speed")


if __name__ == "__main__":
    main()
