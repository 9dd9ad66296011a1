#!/usr/bin/env bash
# QFFT Table 3 (arXiv 2506.12860): AES of SFT-Shortest and QFFT against the long-CoT SFT model (LIMO-7B = SFT on
# LIMO). SFT-Shortest: the SFT model samples SHORTEST_N responses per training question, the shortest correct one
# per question is kept, and the SFT model is fine-tuned on them. Reuses recipes/qfft_table2.sh (DATA=limo) for
# the SFT and QFFT models; finished stages are skipped.
#
#   bash recipes/qfft_table3_aes.sh                         # Qwen2.5-7B-Instruct, LIMO
#
# The paper's numbers (Table 3, 7B; Acc / Tokens / AES, AES x100 against LIMO-7B):
#                  GSM8K             MATH              AIME25              Average
#   LIMO-7B base   88.2 / 1.8K / -   80.4 / 5.9K / -   16.8 / 17.8K / -    61.8 / 8.5K / -
#   SFT Shortest   88.9 / 1.2K / 3.4 78.3 / 4.8K / -0.7 17.9 / 17.3K / 0.9 61.7 / 7.8K / 1.2
#   QFFT           88.0 / 0.7K / 5.9 80.6 / 4.1K / 2.9 17.2 / 15.6K / 1.4  61.9 / 6.9K / 3.4
# 32B: SFT Shortest 76.9 / 8.9K / -12.9 average, QFFT 76.7 / 5.4K / 2.3.
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/lib.sh

MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}
DATA=${DATA:-limo}                         # Table 3: LIMO (needs gold answers: limo | teacher)
QUESTIONS=${QUESTIONS:-prm12k}
SHORTEST_N=${SHORTEST_N:-10}               # samples per question for SFT-Shortest (QFFT's setting: 10)
SHORTEST_T=${SHORTEST_T:-0.7}               # no source: QFFT gives no sampling temperature for SFT-Shortest
SAMPLE_MAX_TOKENS=${SAMPLE_MAX_TOKENS:-}    # empty: sample.py's default (16384)
NUM_GPUS=${NUM_GPUS:-8}
TP=${TP:-1}
GLOBAL_BATCH=${GLOBAL_BATCH:-}             # empty: configs/qfft/train.yaml (8)
EPOCHS=${EPOCHS:-}                         # empty: configs/qfft/train.yaml (6)
MAX_LEN=${MAX_LEN:-}                       # empty: configs/qfft/train.yaml, prepare.py (16384)
DEEPSPEED=${DEEPSPEED:-configs/ds_z3.json}
GRAD_CKPT=${GRAD_CKPT---gradient_checkpointing}
BENCHMARKS=${BENCHMARKS:-gsm8k,math500,aime25}
EVAL_N=${EVAL_N:-}                         # empty: configs/qfft/evaluate.yaml (16)
EVAL_MAX_TOKENS=${EVAL_MAX_TOKENS:-}       # empty: configs/qfft/evaluate.yaml (32768)
EVAL_LIMIT=${EVAL_LIMIT:-}
OUT=${OUT:-runs/qfft_table3/$(basename "$MODEL")-$DATA}
mkdir -p "$OUT"

step "SFT and QFFT models (recipes/qfft_table2.sh, DATA=$DATA)"
MODEL=$MODEL DATA=$DATA OUT=$OUT/table2 RAK_ARGS= bash recipes/qfft_table2.sh
case "$DATA" in limo) QSRC=GAIR/LIMO SFT_SYSTEM=eval ;; teacher) QSRC=$QUESTIONS SFT_SYSTEM=default ;;
  *) echo "DATA must be limo or teacher (SFT-Shortest needs gold answers)" >&2; exit 2 ;; esac
SFT_SYSTEM=${SFT_SYSTEM_PROMPT:-$SFT_SYSTEM}

step "SFT-Shortest: $SHORTEST_N samples per question from the SFT model, shortest correct one kept"
python sample.py --model "$OUT/table2/sft-model" --data "$QSRC" $(limit "${NUM_QUESTIONS:-}") --n "$SHORTEST_N" \
  --temperature "$SHORTEST_T" --system_prompt "$SFT_SYSTEM" $(opt --max_tokens "$SAMPLE_MAX_TOKENS") \
  --tensor_parallel_size "$TP" $(engine_args) --output "$OUT/sft_samples.jsonl"
python prepare.py --mode rft --select shortest --preset qfft --system_prompt "$SFT_SYSTEM" \
  --input "$OUT/sft_samples.jsonl" --model "$OUT/table2/sft-model" $(opt --max_len "$MAX_LEN") \
  --output "$OUT/shortest.jsonl"
train --model "$OUT/table2/sft-model" --data "$OUT/shortest.jsonl" --output_dir "$OUT/shortest-model" \
  --config configs/qfft/train.yaml $(train_env) --deepspeed "$DEEPSPEED" $GRAD_CKPT
step "evaluate SFT-Shortest"
qfft_eval "$OUT/shortest-model" "$OUT/eval-shortest"

step "table: AES against the SFT model (QFFT Table 3)"
python rak.py --runs base="$OUT/table2/eval-base" sft="$OUT/table2/eval-sft" sft_shortest="$OUT/eval-shortest" \
  qfft="$OUT/table2/eval-qfft" --reference base --baseline sft --benchmarks "$BENCHMARKS" --show aes \
  --out "$OUT/tables" --overwrite ${RAK_ARGS:-}
step "done: $OUT/tables"
