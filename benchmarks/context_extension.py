"""Context extension: a GPT-2 trained at context 1024 continued at 4096 (--base-context, --context) on the Gutenberg books.

    python -m benchmarks.context_extension OUT_DIR [--set data.train_files=... data.num_proc=16]

1. parent: `train.py experiment=table4 attention=flash context=1024` (Table 4's 1024 run; reused
   when OUT_DIR/parent-1024 holds a finished one);
2. its validation loss at 1024, and at 4096 with the position table extended by copy and by
   interpolate (model/pretrained.py), before any training at 4096;
3. `train.py experiment=table4 context=4096 train.init_from=parent train.init_positions=HOW`
   for --steps steps at a tenth of the learning rate;
4. OUT_DIR/context_extension.{json,md}: val loss and ppl (same validation books, windows of the
   context evaluated) before and after.
"""

import argparse
import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.reproduce import train  # noqa: E402


def val_loss(source, context, positions, overrides):
    """Validation loss of a source's weights at `context`, as train.py evaluates it."""
    from hydra import compose, initialize_config_dir

    from data.batches import tokens
    from data.prepare import prepare
    from training.weights import load_model
    from training.evaluation import evaluate
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["experiment=table4", *overrides, f"context={context}"])
    val = tokens(prepare(cfg.data)["val"])
    model, account = load_model(source, attention=cfg.attention.name, context=context, positions=positions)
    device = cfg.train.device
    model.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
    micro = max(1, cfg.train.micro_batch_tokens // context)
    m = evaluate(model, val, micro, context, device, autocast, cfg.train.eval_tokens)
    return m["val/loss"], account


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--base-context", type=int, default=1024)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=6e-5)
    ap.add_argument("--positions", default="copy,interpolate", help="extensions evaluated before training")
    ap.add_argument("--train", default="copy", help="extensions fine-tuned")
    ap.add_argument("--set", nargs="*", default=["attention=flash"], metavar="KEY=VALUE",
                    help="train.py overrides for every run (default attention=flash)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    base = a.base_context
    parent = a.out / f"parent-{base}"
    train(parent, "table4", [f"context={base}", *a.set])
    rows = [dict(model="parent", context=base, positions="-", step="before", val_loss=val_loss(parent, base, "copy", a.set)[0])]
    for how in a.positions.split(","):
        loss, account = val_loss(parent, a.context, how, a.set)
        rows.append(dict(model="parent, extended", context=a.context, positions=how, step="before", val_loss=loss))
        print(account, loss, flush=True)
    for how in a.train.split(","):
        run = a.out / f"extended-{a.context}-{how}"
        ours = {"context": a.context, "train.init_from": parent, "train.init_positions": how, "train.max_steps": a.steps,
                "train.warmup_steps": a.steps // 10, "train.lr": a.lr, "train.min_lr": a.lr / 10, "train.eval_every": a.steps}
        given = dict(o.split("=", 1) for o in a.set)
        train(run, "table4", [f"{k}={v}" for k, v in (given | ours).items()])
        last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "val/loss" in line][-1]
        rows.append(dict(model="parent, extended", context=a.context, positions=how, step=f"after {a.steps} steps",
                         val_loss=last["val/loss"]))
    for r in rows:
        r["val_ppl"] = math.exp(r["val_loss"])
    meta = dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU", date=time.strftime("%Y-%m-%d"), command=" ".join(sys.argv),
                fine_tune=dict(steps=a.steps, lr=a.lr, tokens_per_step=16384))
    lines = ["| model | context | positions | training at the new context | val loss | val ppl |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['context']} | {r['positions']} | {r['step']} | {r['val_loss']:.4f} | {r['val_ppl']:.2f} |"
              for r in rows]
    table = "\n".join(lines)
    print(table)
    (a.out / "context_extension.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (a.out / "context_extension.md").write_text(f"# Context extension\n\n{json.dumps(meta)}\n\n{table}\n")


if __name__ == "__main__":
    main()
