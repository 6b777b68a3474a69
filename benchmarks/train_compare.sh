#!/usr/bin/env bash
# GPT-2 small on Gutenberg at 16K tokens/step, same seed, dropout off: one run per attention
# backend (sdpa-cudnn against sdpa gives the bf16 noise floor), then a summary of loss curves
# and throughput. Usage:
#   bash benchmarks/train_compare.sh OUT_DIR STEPS "RUN ..."   where RUN is name:overrides,
#   e.g. "sdpa:attention=sdpa flash:attention=flash flash1:attention=flash1"
set -uo pipefail
out=${1:?out dir}; steps=${2:-200}
runs=${3:-"sdpa:attention=sdpa sdpa-cudnn:attention=sdpa,attention.options.kernel=cudnn flash:attention=flash flash1:attention=flash1"}
files=${TRAIN_FILES:-gutenberg-books/train-0*-of-04.jsonl.xz}
common=(model=gpt2-small data=gutenberg "data.train_files=$files" data.num_proc=16 context=1024
        train.max_steps=$steps train.warmup_steps=20 train.log_every=10 train.eval_every=100
        train.eval_tokens=1048576 train.ckpt_every=100000 wandb.mode=offline)
names=()
for run in $runs; do
  name=${run%%:*}; IFS=',' read -ra extra <<< "${run#*:}"
  echo "== $name"
  python3 train.py "${common[@]}" "${extra[@]}" hydra.run.dir=$out/$name 2>&1 | grep -v "wandb" | tail -12
  names+=("$out/$name")
done
python3 -m benchmarks.compare_runs "${names[@]}" --out $out | tee $out/summary.md
