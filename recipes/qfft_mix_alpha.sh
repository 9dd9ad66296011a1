#!/usr/bin/env bash
# QFFT Fig. 2b (arXiv 2506.12860 §2.3): a fraction α of the training examples keeps its question (SFT form), the
# rest is question-free (QFFT form); the Short-CoT share on MATH500 falls as α grows.
#
#   bash recipes/qfft_mix_alpha.sh                          # Qwen2.5-7B-Instruct on s1K-1.1, α in ALPHAS
#   DATA=limo MIX_RENDER=bare bash recipes/qfft_mix_alpha.sh   # with-question examples as one qwen_qfft run sees them
#
# The paper's numbers (§2.3 text; the figure's other points are not given as numbers): α = 0 (no question kept):
# "over 50%" Short CoT; α = 0.1%: 40.95% Short CoT; α = 1%: 13.24%. Short CoT = 100 - the Long-CoT column below.
# MIX_RENDER: chat (default: the with-question examples in the model's chat template, as an SFT run renders them)
# or bare (question + response with no markup: what a single LLaMA-Factory run with `qwen_qfft` makes of them).
# The paper does not say which; docs/paper_numbers.md ("Where the papers and their code disagree").
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/lib.sh

MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}
DATA=${DATA:-s1k}                          # s1k | limo | teacher
TEACHER=${TEACHER:-deepseek-ai/DeepSeek-R1-Distill-Qwen-32B}
QUESTIONS=${QUESTIONS:-prm12k}
NUM_QUESTIONS=${NUM_QUESTIONS:-}
SAMPLE_MAX_TOKENS=${SAMPLE_MAX_TOKENS:-}  # empty: configs/qfft/sample.yaml (16384)
ALPHAS=${ALPHAS:-0 0.001 0.01 0.1 0.5 1}   # α = 0: QFFT; α = 1: SFT
MIX_RENDER=${MIX_RENDER:-chat}
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
OUT=${OUT:-runs/qfft_mix_alpha/$(basename "$MODEL")-$DATA-$MIX_RENDER}
mkdir -p "$OUT"

qfft_source
runs="base=$OUT/eval-base"
step "evaluate base"
qfft_eval "$MODEL" "$OUT/eval-base"
for a in $ALPHAS; do
  step "α = $a: prepare, train, evaluate"
  python prepare.py --mode mix --alpha "$a" --mix_render "$MIX_RENDER" --preset qfft --system_prompt "$SFT_SYSTEM" \
    --input "$SRC" --model "$MODEL" $(opt --max_len "$MAX_LEN") --output "$OUT/mix-$a.jsonl"
  train --model "$MODEL" --data "$OUT/mix-$a.jsonl" --output_dir "$OUT/mix-$a-model" \
    --config configs/qfft/train.yaml $(train_env) --deepspeed "$DEEPSPEED" $GRAD_CKPT
  qfft_eval "$OUT/mix-$a-model" "$OUT/eval-mix-$a"
  runs="$runs alpha$a=$OUT/eval-mix-$a"
done

step "table: Long-CoT share per α (Short CoT = 100 - Long CoT), accuracy, tokens, RAK"
python rak.py --runs $runs --reference base --benchmarks "$BENCHMARKS" --show long_cot,qfft --out "$OUT/tables" \
  --overwrite ${RAK_ARGS:-}
step "done: $OUT/tables"
