#!/usr/bin/env bash
# `make demo`: both studies end to end on the bundled tiny model (SmolLM2-135M-Instruct), on CPU, through the real
# vLLM (CPU) and DeepSpeed ZeRO-3 (CPU, 2 processes) paths. It runs the two paper recipes unchanged, with the
# sizes below; everything lands in runs/demo/. Re-running resumes: finished stages are skipped.
# Every size is a variable here: scale it up, or point MODEL at a real model.
# A 135M model's numbers are not the papers' numbers: this proves the pipeline, not the methods.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-models/smollm2-135m-instruct}
DEMO=${DEMO:-runs/demo}
NUM_QUESTIONS=${NUM_QUESTIONS:-16}       # training questions sampled per study
SAMPLE_MAX_TOKENS=${SAMPLE_MAX_TOKENS:-128}
EPOCHS=${EPOCHS:-2}
GLOBAL_BATCH=${GLOBAL_BATCH:-8}          # examples per optimizer step
DEMO_LR=${DEMO_LR:-2e-5}                 # above the papers' lr so that 4 steps visibly move a 135M model
MAX_LEN=${MAX_LEN:-1024}
EVAL_LIMIT=${EVAL_LIMIT:-12}             # questions per benchmark
EVAL_N=${EVAL_N:-8}                      # samples per question (QFFT protocol; UPFT's is greedy n=1)
EVAL_MAX_TOKENS=${EVAL_MAX_TOKENS:-192}
BENCHMARKS=${BENCHMARKS:-gsm8k,math500}
NUM_GPUS=${NUM_GPUS:-2}                  # DeepSpeed processes (CPU ranks here)

export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} VLLM_CPU_KV_GB=${VLLM_CPU_KV_GB:-1} TOKENIZERS_PARALLELISM=false
export RECIPE_T0=$(date +%s) NUM_GPUS MAX_LEN EPOCHS GLOBAL_BATCH SAMPLE_MAX_TOKENS NUM_QUESTIONS EVAL_LIMIT \
  BENCHMARKS MODEL
python scripts/tiny_model.py >/dev/null

echo "######## QFFT study: the tiny model stands in for the long-CoT teacher"
DATA=teacher TEACHER=$MODEL QUESTIONS=gsm8k_train EVAL_N=$EVAL_N EVAL_MAX_TOKENS=$EVAL_MAX_TOKENS \
  TRAIN_ARGS="--lr $DEMO_LR" GRAD_CKPT= RAK_ARGS=--plots OUT=$DEMO/qfft bash recipes/qfft_table2.sh

echo "######## UPFT study: one self-solution per question, prefix L=8, full ratio 0.1"
DATA=prm12k PREFIX_LEN=8 FULL_RATIO=0.1 JUDGE= LR=$DEMO_LR EVAL_N=1 EVAL_MAX_TOKENS=$EVAL_MAX_TOKENS \
  RAK_ARGS=--plots OUT=$DEMO/upft bash recipes/upft_table1.sh

echo
echo "demo finished in $(( $(date +%s) - RECIPE_T0 )) s; tables in $DEMO/qfft/tables and $DEMO/upft/tables"
