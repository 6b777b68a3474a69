"""The paper's training budgets at our measured rates: how many days Tables 2 and 4 take with
our trainer on the GPUs a scaling run measured, beside the paper's days on 8 x A100.

    python -m benchmarks.budget SCALING_JSON [SCALING_JSON ...] --out OUT_DIR

Every paper run is 400K steps of 0.5M tokens (Tables 2 and 4 keep the tokens a step at every
context). A row takes the scaling run's rate at its largest world size for the row's model and
context (benchmarks/scaling.py; the global batch it held is shown, since a fixed 0.5M-token batch
is the paper's setting and weak scaling is not): days = tokens / (tokens/s) / 86,400. These are
throughput budgets: evaluation, checkpoints and restarts are not in them, nor in the paper's
figure's comparison. Writes OUT_DIR/budget.json and budget.md.
"""

import argparse
import json
from pathlib import Path

from benchmarks import harness

PAPER_STEPS, PAPER_BATCH_TOKENS = 400_000, 524_288
# Dao et al. 2022, Tables 2 and 4 (8 x A100, OpenWebText): (table, model, context, implementation, days).
PAPER_DAYS = [
    ("Tables 2, 4", "gpt2-small", 1024, "HuggingFace", 9.5),
    ("Tables 2, 4", "gpt2-small", 1024, "Megatron-LM", 4.7),
    ("Tables 2, 4", "gpt2-small", 1024, "FlashAttention", 2.7),
    ("Table 2", "gpt2-medium", 1024, "HuggingFace", 21.0),
    ("Table 2", "gpt2-medium", 1024, "Megatron-LM", 11.5),
    ("Table 2", "gpt2-medium", 1024, "FlashAttention", 6.9),
    ("Table 4", "gpt2-small", 2048, "FlashAttention", 3.0),
    ("Table 4", "gpt2-small", 4096, "FlashAttention", 3.6),
]


def rates(path):
    """(model, context) -> the rate at the largest world size of one scaling.json, with where it came from."""
    data = json.loads(Path(path).read_text())
    meta, rows = data["meta"], data.get("rows") or data["results"]   # "results": files written before harness.write
    model = meta.get("model", "gpt2-small")                        # runs before --model were GPT-2 small
    out = {}
    for r in rows:
        key = (model, r["context"])
        if key not in out or r["gpus"] > out[key]["gpus"]:
            batch = r.get("batch_tokens") or per_gpu_step_tokens(meta) * r["gpus"]
            out[key] = {"gpus": r["gpus"], "tokens_per_s": r["tokens_per_s"], "efficiency": r.get("efficiency"),
                        "parallel": meta.get("parallel", "ddp"), "batch_tokens": batch,
                        "device": meta["device"], "date": meta["date"], "source": str(path)}
    return out


def per_gpu_step_tokens(meta):
    """Tokens each GPU ran a step in a weak-scaling file (the older ones say it their own way)."""
    if "per_gpu_tokens_per_step" in meta:
        return meta["per_gpu_tokens_per_step"]
    return meta["micro_batch_tokens"] * meta["micro_batches_per_gpu"]


def budget(paths):
    tokens = PAPER_STEPS * PAPER_BATCH_TOKENS
    measured = [(key, m) for p in paths for key, m in rates(p).items()]
    rows = []
    for table, model, context, impl, days in PAPER_DAYS:
        if impl != "FlashAttention":
            continue
        others = {i: d for t, mo, c, i, d in PAPER_DAYS if (t, mo, c) == (table, model, context) and i != impl}
        for (m_model, m_context), m in measured:
            if (m_model, m_context) == (model, context):
                ours = tokens / m["tokens_per_s"] / 86400
                rows.append({"table": table, "model": model, "context": context, "paper_days": days,
                             "paper_baselines_days": others, **m, "days": ours, "paper_over_ours": days / ours})
    return {"tokens": tokens, "rows": rows,
            "missing": [f"{t} {mo} {c}" for t, mo, c, i, _ in PAPER_DAYS if i == "FlashAttention"
                        and not any(r["model"] == mo and r["context"] == c for r in rows)]}


def markdown(b):
    rows = [[r["table"], r["model"], r["context"],
             f"{r['paper_days']} days" + "".join(f"; {k} {v}" for k, v in r["paper_baselines_days"].items()),
             f"{r['gpus']} x {r['device'].split(' x ', 1)[-1]}, {r['parallel']}, {r['batch_tokens']:,} tokens a step",
             f"{r['tokens_per_s']:,.0f}", f"{r['days']:.2f}", f"{r['paper_over_ours']:.2f}x", r["source"]] for r in b["rows"]]
    text = (f"{PAPER_STEPS:,} steps x {PAPER_BATCH_TOKENS:,} tokens = {b['tokens'] / 1e9:.1f}B tokens a run, at the rate "
            "each scaling run measured at its largest world size (throughput only: no evaluation or restarts).\n\n"
            + harness.md_table(["paper", "model", "context", "paper: FlashAttention on 8 x A100 (baselines)",
                                "ours: measured on", "tokens/s", "days", "paper's days / ours", "from"], rows))
    if b["missing"]:
        text += "\n\nNo measured rate for: " + ", ".join(b["missing"]) + "."
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scaling", nargs="+", type=Path, help="scaling.json files of benchmarks/scaling.py")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    b = budget(a.scaling)
    text = markdown(b)
    meta = harness.metadata(argv, device="computed from the measured rates (the table names each run's GPUs)")
    harness.write(a.out, "budget", meta, b["rows"], text,
                  "The paper's training budgets at our measured rates")
    print(text)


if __name__ == "__main__":
    main()
