#!/usr/bin/env bash
# UPFT prefix-length ablation (arXiv 2503.02875, §5 / Fig. on prefix length): UPFT on ONE self-generated solution
# per PRM-12K question with prefix length L in PREFIX_LENS; MATH500 greedy accuracy. Samples are drawn once.
#
#   bash recipes/upft_prefix_sweep.sh                       # Llama-3.1-8B-Instruct
#   MODEL=Qwen/Qwen2.5-Math-7B-Instruct bash recipes/upft_prefix_sweep.sh
#
# The paper's numbers (text; the other points are only drawn): Llama-3.1-8B-Instruct peaks at 52.0% MATH500 with
# L = 8; Qwen2.5-Math-7B-Instruct is stable from L = 8 to 32 (85.6% at L = 32, Table 1). Base: 51.0 / 84.0.
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/lib.sh

MODEL=${MODEL:-meta-llama/Llama-3.1-8B-Instruct}
QUESTIONS=${QUESTIONS:-prm12k}
NUM_QUESTIONS=${NUM_QUESTIONS:-}
PREFIX_LENS=${PREFIX_LENS:-4 8 16 32 64 128}
FULL_RATIO=${FULL_RATIO:-0.1}
LR=${LR:-1e-6}
EPOCHS=${EPOCHS:-2}
upft_prompt "$MODEL"
PREFIX_RULE=${PREFIX_RULE:-tokens}
FULL_PICK=${FULL_PICK:-random}
SAMPLE_MAX_TOKENS=${SAMPLE_MAX_TOKENS:-16384}
NUM_GPUS=${NUM_GPUS:-8}
TP=${TP:-1}
GLOBAL_BATCH=${GLOBAL_BATCH:-64}
MAX_LEN=${MAX_LEN:-4096}
DEEPSPEED=${DEEPSPEED:-configs/ds_z3.json}
BENCHMARKS=${BENCHMARKS:-math500}
EVAL_N=${EVAL_N:-1}
EVAL_MAX_TOKENS=${EVAL_MAX_TOKENS:-16384}
EVAL_LIMIT=${EVAL_LIMIT:-}
OUT=${OUT:-runs/upft_prefix_sweep/$(basename "$MODEL")}
mkdir -p "$OUT"
ev() { python evaluate.py --model "$1" --protocol upft --benchmarks "$BENCHMARKS" --n "$EVAL_N" \
  --max_tokens "$EVAL_MAX_TOKENS" --system_prompt "$SYSTEM_PROMPT" $CHAT_TEMPLATE_ARGS $(limit "$EVAL_LIMIT") \
  --tensor_parallel_size "$TP" $(engine_args) --output_dir "$2"; }

step "sample ONE self-generated solution per question"
python sample.py --model "$MODEL" --data "$QUESTIONS" $(limit "$NUM_QUESTIONS") --n 1 --temperature 0.6 \
  --system_prompt "$SYSTEM_PROMPT" $CHAT_TEMPLATE_ARGS --max_tokens "$SAMPLE_MAX_TOKENS" \
  --tensor_parallel_size "$TP" $(engine_args) --output "$OUT/self.jsonl"
step "evaluate base"
ev "$MODEL" "$OUT/eval-base"
runs="base=$OUT/eval-base" stats=""
for L in $PREFIX_LENS; do
  step "L = $L: prepare, train, evaluate"
  python prepare.py --mode upft --preset upft --system_prompt "$SYSTEM_PROMPT" $CHAT_TEMPLATE_ARGS --prefix_len "$L" \
    --prefix_rule "$PREFIX_RULE" --full_pick "$FULL_PICK" --full_ratio "$FULL_RATIO" --input "$OUT/self.jsonl" \
    --model "$MODEL" --max_len "$MAX_LEN" --output "$OUT/upft-L$L.jsonl"
  train --model "$MODEL" --data "$OUT/upft-L$L.jsonl" --output_dir "$OUT/upft-L$L-model" --preset upft \
    --lr "$LR" --epochs "$EPOCHS" --global_batch_size "$GLOBAL_BATCH" --max_len "$MAX_LEN" --deepspeed "$DEEPSPEED"
  ev "$OUT/upft-L$L-model" "$OUT/eval-L$L"
  runs="$runs L$L=$OUT/eval-L$L" stats="$stats L$L=$OUT/upft-L$L.jsonl.stats.json"
done

step "table: MATH500 accuracy and trained tokens per prefix length"
python rak.py --runs $runs --reference base --benchmarks "$BENCHMARKS" --train_stats $stats --show upft \
  --out "$OUT/tables" --overwrite ${RAK_ARGS:-}
step "done: $OUT/tables"
