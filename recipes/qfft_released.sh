#!/usr/bin/env bash
# QFFT's released checkpoints, evaluation only (no training): Table 2's QFFT rows with RAK, against the Instruct
# model they were tuned from. The first thing to run to check the paper's claims.
#
#   bash recipes/qfft_released.sh                           # lwl-uestc/QFFT-S1-7B, QFFT-LIMO-7B vs Qwen2.5-7B-Instruct
#   SIZE=32B TP=4 bash recipes/qfft_released.sh             # the 32B pair vs Qwen2.5-32B-Instruct
#
# The paper's numbers (Table 2, QFFT rows; Acc / Tokens / RAK):
#              GSM8K              MATH500            AIME25              Average
#   7B  S1.1   91.0 / 0.4K / 28.4 80.2 / 2.8K / 47.7 17.2 / 12.8K / 28.0 62.8 / 5.3K / 34.7
#   7B  LIMO   88.0 / 0.7K / 26.7 80.6 / 4.1K / 40.1 17.2 / 15.6K / 34.2 61.9 / 6.8K / 33.7
#   32B S1.1   93.6 / 0.6K / 31.2 92.2 / 2.4K / 45.7 46.8 / 12.9K / 29.3 77.5 / 5.3K / 35.4
#   32B LIMO   92.6 / 0.8K / 27.4 92.6 / 2.9K / 38.9 45.0 / 12.5K / 33.2 76.7 / 5.4K / 33.2
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/lib.sh

SIZE=${SIZE:-7B}
BASE=${BASE:-Qwen/Qwen2.5-$SIZE-Instruct}  # the RAK reference
RELEASED=${RELEASED:-s1=lwl-uestc/QFFT-S1-$SIZE limo=lwl-uestc/QFFT-LIMO-$SIZE}   # NAME=MODEL ...
TP=${TP:-1}
BENCHMARKS=${BENCHMARKS:-gsm8k,math500,aime25}
EVAL_N=${EVAL_N:-}                         # empty: configs/qfft/evaluate.yaml (16)
EVAL_MAX_TOKENS=${EVAL_MAX_TOKENS:-}       # empty: configs/qfft/evaluate.yaml (32768)
EVAL_LIMIT=${EVAL_LIMIT:-}
OUT=${OUT:-runs/qfft_released/$SIZE}
mkdir -p "$OUT"

runs=""
for nm in base="$BASE" $RELEASED; do
  name=${nm%%=*} model=${nm#*=}
  step "evaluate $name ($model; QFFT protocol: configs/qfft/evaluate.yaml${EVAL_N:+, n=$EVAL_N})"
  qfft_eval "$model" "$OUT/eval-$name"
  runs="$runs $name=$OUT/eval-$name"
done

step "table: Acc / Tokens / RAK against $BASE (QFFT Table 2's QFFT rows)"
python rak.py --runs $runs --reference base --benchmarks "$BENCHMARKS" --show qfft,long_cot --out "$OUT/tables" \
  --overwrite ${RAK_ARGS:-}
step "done: $OUT/tables"
