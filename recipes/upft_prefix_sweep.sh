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
upft_prompt "$MODEL"
# UPFT's PRM12K settings: configs/upft/<stage>.yaml (p 0.1, lr 1e-6, 2 epochs, 4096 tokens, greedy evaluation); a
# variable set here (FULL_RATIO, PREFIX_RULE, FULL_PICK, LR, EPOCHS, GLOBAL_BATCH, MAX_LEN, EVAL_N, ...) overrides.
FULL_RATIO=${FULL_RATIO:-}
PREFIX_RULE=${PREFIX_RULE:-}
FULL_PICK=${FULL_PICK:-}
SAMPLE_MAX_TOKENS=${SAMPLE_MAX_TOKENS:-}
NUM_GPUS=${NUM_GPUS:-8}
TP=${TP:-1}
DEEPSPEED=${DEEPSPEED:-configs/ds_z3.json}
BENCHMARKS=${BENCHMARKS:-math500}
EVAL_LIMIT=${EVAL_LIMIT:-}
OUT=${OUT:-runs/upft_prefix_sweep/$(basename "$MODEL")}
mkdir -p "$OUT"
upft_judge                                 # JUDGE_ARGS: UPFT judges every evaluation (recipes/lib.sh)
# ev MODEL DIR [ARGS...]: a trained model carries the chat template of its data (train.py); the base model gets
# $CHAT_TEMPLATE_ARGS
ev() { python evaluate.py --model "$1" --benchmarks "$BENCHMARKS" --config configs/upft/evaluate.yaml $(eval_env) \
  --system_prompt "$SYSTEM_PROMPT" "${@:3}" --tensor_parallel_size "$TP" $(engine_args) --output_dir "$2" $JUDGE_ARGS; }

step "sample ONE self-generated solution per question"
python sample.py --model "$MODEL" --data "$QUESTIONS" $(limit "$NUM_QUESTIONS") --config configs/upft/sample.yaml \
  --system_prompt "$SYSTEM_PROMPT" $CHAT_TEMPLATE_ARGS $(opt --max_tokens "$SAMPLE_MAX_TOKENS") \
  --tensor_parallel_size "$TP" $(engine_args) --output "$OUT/self.jsonl"
step "evaluate base"
ev "$MODEL" "$OUT/eval-base" $CHAT_TEMPLATE_ARGS
runs="base=$OUT/eval-base" stats=""
for L in $PREFIX_LENS; do
  step "L = $L: prepare, train, evaluate"
  python prepare.py --mode upft --config configs/upft/prepare.yaml --system_prompt "$SYSTEM_PROMPT" \
    $CHAT_TEMPLATE_ARGS --prefix_len "$L" $(opt --prefix_rule "$PREFIX_RULE") $(opt --full_pick "$FULL_PICK") \
    $(opt --full_ratio "$FULL_RATIO") --input "$OUT/self.jsonl" --model "$MODEL" $(opt --max_len "${MAX_LEN:-}") \
    --output "$OUT/upft-L$L.jsonl"
  train --model "$MODEL" --data "$OUT/upft-L$L.jsonl" --output_dir "$OUT/upft-L$L-model" \
    --config configs/upft/train.yaml $(train_env) --deepspeed "$DEEPSPEED"
  ev "$OUT/upft-L$L-model" "$OUT/eval-L$L"
  runs="$runs L$L=$OUT/eval-L$L" stats="$stats L$L=$OUT/upft-L$L.jsonl.stats.json"
done

step "table: MATH500 accuracy and trained tokens per prefix length"
python rak.py --runs $runs --reference base --benchmarks "$BENCHMARKS" --train_stats $stats --show upft \
  --out "$OUT/tables" --overwrite ${RAK_ARGS:-}
step "done: $OUT/tables"
