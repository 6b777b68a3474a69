"""Generation speed with and without the KV cache, per attention backend, one process.

    python benchmarks/generation_speed.py [--init-from RUN_DIR] --out benchmarks/results/h100/generation

GPT-2 small (the checkpoint's weights, or a fresh init: speed does not depend on them), batch 1,
bf16 autocast, greedy. Per backend and prompt length: prefill time, decode tokens/s (one token
per step), and whether the cached tokens equal the recomputed ones (bf16: the two paths round
differently, so a late divergence between near-tied logits is possible; the first differing
position is reported).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import GPT, GPTConfig  # noqa: E402
from model.generation import generate  # noqa: E402
from training.weights import load_model  # noqa: E402


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
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"),
                model=what, dtype="bfloat16 autocast", batch=1, command=" ".join(sys.argv))
    lines = ["| backend | prompt | prefill ms | decode tok/s, cache | decode tok/s, no cache | cache speedup | greedy tokens equal |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        eq = "yes" if r["greedy_tokens_equal"] else f"until new token {r['first_difference_at']}"
        lines.append(f"| {r['backend']} | {r['prompt']} | {r['prefill_ms']:.1f} | {r['decode_tokens_per_s_cache']:,.0f} | "
                     f"{r['decode_tokens_per_s_no_cache']:,.0f} | {r['cache_speedup']:.1f}x | {eq} |")
    table = "\n".join(lines)
    print(table)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "generation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        (a.out / "generation.md").write_text(f"# Generation speed\n\n{json.dumps(meta)}\n\n{table}\n")


if __name__ == "__main__":
    main()
