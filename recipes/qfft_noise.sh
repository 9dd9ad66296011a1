#!/usr/bin/env bash
# QFFT §6.1 / Fig. 6 (arXiv 2506.12860): SFT vs QFFT trained on LIMO with noise levels I-IV, MATH500 accuracy
# (16 samples per question). Level I: the data as is; II: wrong final answer, every restatement of it changed;
# III: cut at a seeded sentence boundary near half; IV: every question gets another question's response.
#
#   bash recipes/qfft_noise.sh                              # Qwen2.5-7B-Instruct on LIMO, levels 1 2 3 4
#   LEVELS="1 4" bash recipes/qfft_noise.sh
#
# The paper's numbers (§6.1 text and Fig. 6b caption; levels II and III are only drawn, not given as numbers):
#   SFT : 76.5% (level I) -> 0.4% (level IV)       QFFT: 78.6% at level IV, "matching its Level I performance"
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/lib.sh

MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}
DATA=${DATA:-limo}                         # the paper: LIMO
TEACHER=${TEACHER:-deepseek-ai/DeepSeek-R1-Distill-Qwen-32B}
QUESTIONS=${QUESTIONS:-prm12k}
NUM_QUESTIONS=${NUM_QUESTIONS:-}
SAMPLE_MAX_TOKENS=${SAMPLE_MAX_TOKENS:-}  # empty: configs/qfft/sample.yaml (16384)
LEVELS=${LEVELS:-1 2 3 4}
NUM_GPUS=${NUM_GPUS:-8}
TP=${TP:-1}
GLOBAL_BATCH=${GLOBAL_BATCH:-}             # empty: configs/qfft/train.yaml (8)
EPOCHS=${EPOCHS:-}                         # empty: configs/qfft/train.yaml (6)
MAX_LEN=${MAX_LEN:-}                       # empty: configs/qfft/train.yaml, prepare.py (16384)
DEEPSPEED=${DEEPSPEED:-configs/ds_z3.json}
GRAD_CKPT=${GRAD_CKPT---gradient_checkpointing}
BENCHMARKS=${BENCHMARKS:-math500}
EVAL_N=${EVAL_N:-}                         # empty: configs/qfft/evaluate.yaml (16)
EVAL_MAX_TOKENS=${EVAL_MAX_TOKENS:-}       # empty: configs/qfft/evaluate.yaml (32768)
EVAL_LIMIT=${EVAL_LIMIT:-}
OUT=${OUT:-runs/qfft_noise/$(basename "$MODEL")-$DATA}
mkdir -p "$OUT"

qfft_source
runs="base=$OUT/eval-base"
step "evaluate base"
qfft_eval "$MODEL" "$OUT/eval-base"
for level in $LEVELS; do
  for form in sft qfft; do
    name=$form-L$level
    step "noise level $level, $form form: prepare, train, evaluate"
    if [ "$level" = 1 ]; then
      python prepare.py --mode "$form" --preset qfft --system_prompt "$SFT_SYSTEM" --input "$SRC" --model "$MODEL" \
        $(opt --max_len "$MAX_LEN") --output "$OUT/$name.jsonl"
    else
      python prepare.py --mode noise --level "$level" --noise_form "$form" --preset qfft --system_prompt "$SFT_SYSTEM" \
        --input "$SRC" --model "$MODEL" $(opt --max_len "$MAX_LEN") --output "$OUT/$name.jsonl"
    fi
    train --model "$MODEL" --data "$OUT/$name.jsonl" --output_dir "$OUT/$name-model" \
      --config configs/qfft/train.yaml $(train_env) --deepspeed "$DEEPSPEED" $GRAD_CKPT
    qfft_eval "$OUT/$name-model" "$OUT/eval-$name"
    runs="$runs $name=$OUT/eval-$name"
  done
done

step "table: accuracy per noise level and form (QFFT Fig. 6b)"
python rak.py --runs $runs --reference base --benchmarks "$BENCHMARKS" --show qfft,long_cot --out "$OUT/tables" \
  --overwrite ${RAK_ARGS:-}
step "done: $OUT/tables"
