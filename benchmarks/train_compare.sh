#!/usr/bin/env bash
# GPT-2 small on Gutenberg at 16K tokens/step, same seed, dropout off: one run per attention
# backend, then a summary of the loss curves and throughput. Usage:
#   bash benchmarks/train_compare.sh OUT_DIR [STEPS] [train_files]
set -euo pipefail
out=${1:?out dir}; steps=${2:-200}; files=${3:-gutenberg-books/train-0*-of-04.jsonl.xz}
common=(model=gpt2-small data=gutenberg "data.train_files=$files" data.num_proc=16 context=1024
        train.max_steps=$steps train.warmup_steps=20 train.log_every=10 train.eval_every=100
        train.eval_tokens=1048576 train.ckpt_every=100000 wandb.mode=offline)
for attn in sdpa flash flash1; do
  python3 train.py "${common[@]}" attention=$attn hydra.run.dir=$out/$attn 2>&1 | grep -v "^wandb:" | tail -6
done
python3 train.py "${common[@]}" attention=flash train.compile=true train.max_steps=60 hydra.run.dir=$out/flash-compiled 2>&1 \
  | grep -v "^wandb:" | tail -4
python3 benchmarks/summarize_runs.py $out/sdpa $out/flash $out/flash1 $out/flash-compiled | tee $out/summary.md
