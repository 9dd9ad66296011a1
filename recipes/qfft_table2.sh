#!/usr/bin/env bash
# QFFT Table 2 (arXiv 2506.12860): SFT vs QFFT on the same long-CoT traces, Acc / Tokens / RAK on GSM8K,
# MATH500 and AIME25, RAK against the Instruct model the runs were tuned from.
#
#   bash recipes/qfft_table2.sh                                            # Qwen2.5-7B-Instruct on s1K-1.1
#   DATA=limo bash recipes/qfft_table2.sh                                  # ... on LIMO
#   MODEL=Qwen/Qwen2.5-32B-Instruct GLOBAL_BATCH=32 TP=4 bash recipes/qfft_table2.sh
#   DATA=teacher TEACHER=deepseek-ai/DeepSeek-R1-Distill-Qwen-32B QUESTIONS=prm12k bash recipes/qfft_table2.sh
#
# GPUs: one node of 8x80GB (H100/A100). 7B: ZeRO-3 fits; 32B: add DEEPSPEED=configs/ds_z3_offload.json, or
# several nodes with HOSTFILE=... MASTER_ADDR=node1.
# Expected wall time on 8xH100 (our estimate, not measured): 7B ~1 h per training run (1k examples x 6 epochs
# of ~10k-token traces) and ~1.5 h per evaluation (3 benchmarks x 16 samples, up to 32k tokens, TP=1; give each
# model its own GPUs to evaluate in parallel); 32B roughly 5x.
# The paper's numbers (Table 2, Qwen2.5-7B-Instruct; Acc / Tokens / RAK; docs/paper_numbers.md has all rows):
#            GSM8K              MATH500            AIME25              Average
#   S1.1 SFT  90.6 / 1.7K / 1.8  80.8 / 5.3K / 3.5  18.2 / 17.7K / 0    63.2 / 8.2K / 1.8
#   S1.1 QFFT 91.0 / 0.4K / 28.4 80.2 / 2.8K / 47.7 17.2 / 12.8K / 28.0 62.8 / 5.3K / 34.7
#   LIMO SFT  88.2 / 1.8K / 0.2  80.4 / 5.8K / 6.1  16.8 / 17.1K / 0.2  61.8 / 8.2K / 2.2
#   LIMO QFFT 88.0 / 0.7K / 26.7 80.6 / 4.1K / 40.1 17.2 / 15.6K / 34.2 61.9 / 6.8K / 33.7
# 32B (S1.1): SFT 78.2 / 7.5K / 1.5 average, QFFT 77.5 / 5.3K / 35.4; (LIMO): SFT 76.6 / 6.3K / 3.3, QFFT 76.7 / 5.4K / 33.2.
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/lib.sh

MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}   # the short-CoT model to tune, and the RAK reference
DATA=${DATA:-s1k}                          # s1k | limo | teacher (sample traces with $TEACHER from $QUESTIONS)
TEACHER=${TEACHER:-deepseek-ai/DeepSeek-R1-Distill-Qwen-32B}
QUESTIONS=${QUESTIONS:-prm12k}             # question pool for DATA=teacher
NUM_QUESTIONS=${NUM_QUESTIONS:-}           # DATA=teacher: first K questions (empty: all)
SAMPLE_MAX_TOKENS=${SAMPLE_MAX_TOKENS:-}  # empty: configs/qfft/sample.yaml (16384)
NUM_GPUS=${NUM_GPUS:-8}
TP=${TP:-1}                                # tensor parallel size for sampling and evaluation
GLOBAL_BATCH=${GLOBAL_BATCH:-}             # empty: configs/qfft/train.yaml (8, QFFT Table 5's 7B; 32B: 32)
EPOCHS=${EPOCHS:-}                         # empty: configs/qfft/train.yaml (6)
MAX_LEN=${MAX_LEN:-}                       # empty: configs/qfft/train.yaml and prepare.py's default (16384)
DEEPSPEED=${DEEPSPEED:-configs/ds_z3.json}
GRAD_CKPT=${GRAD_CKPT---gradient_checkpointing}   # 16k-token traces need it on GPU; GRAD_CKPT= turns it off
BENCHMARKS=${BENCHMARKS:-gsm8k,math500,aime25}
EVAL_N=${EVAL_N:-}                         # empty: configs/qfft/evaluate.yaml (QFFT §4.1: 16 samples, T=0.6,
EVAL_MAX_TOKENS=${EVAL_MAX_TOKENS:-}       # 32768 tokens)
EVAL_LIMIT=${EVAL_LIMIT:-}                 # first K questions per benchmark (empty: all)
OUT=${OUT:-runs/qfft_table2/$(basename "$MODEL")-$DATA}
mkdir -p "$OUT"

qfft_source   # SRC, and SFT_SYSTEM: LIMO's file carries the eval system prompt, s1K none (SFT_SYSTEM_PROMPT overrides)

step "prepare SFT (question kept, system prompt '$SFT_SYSTEM') and QFFT (question removed) data"
python prepare.py --mode sft --preset qfft --system_prompt "$SFT_SYSTEM" --input "$SRC" --model "$MODEL" \
  $(opt --max_len "$MAX_LEN") --output "$OUT/sft.jsonl"
python prepare.py --mode qfft --input "$SRC" --model "$MODEL" $(opt --max_len "$MAX_LEN") --output "$OUT/qfft.jsonl"

for method in sft qfft; do
  step "train $method (QFFT Table 5 hyperparameters)"
  train --model "$MODEL" --data "$OUT/$method.jsonl" --output_dir "$OUT/$method-model" \
    --config configs/qfft/train.yaml $(train_env) --deepspeed "$DEEPSPEED" $GRAD_CKPT
done

for run in base sft qfft; do
  model=$MODEL; [ "$run" = base ] || model=$OUT/$run-model
  step "evaluate $run (QFFT protocol: configs/qfft/evaluate.yaml${EVAL_N:+, n=$EVAL_N})"
  qfft_eval "$model" "$OUT/eval-$run"
done

step "tables: Acc / Tokens / RAK (reference: the base model), Δ against SFT, AES"
python rak.py --runs base="$OUT/eval-base" sft="$OUT/eval-sft" qfft="$OUT/eval-qfft" --reference base \
  --baseline sft --benchmarks "$BENCHMARKS" --show qfft,aes,long_cot --out "$OUT/tables" --overwrite ${RAK_ARGS:-}
step "done: $OUT/tables"
