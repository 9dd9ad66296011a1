#!/usr/bin/env bash
# QFFT §6.3 / Fig. 7 (arXiv 2506.12860): low-resource distillation. 10 seeded S1.1 questions x 10 teacher responses
# = 100 training examples; SFT and QFFT with identical settings for 50 epochs; MATH500 pass@1 over 4 samples.
#
#   bash recipes/qfft_low_resource.sh                       # Qwen2.5-7B-Instruct, 10 x 10 traces from $TEACHER
#   TEACHER=deepseek-ai/DeepSeek-R1 TP=8 bash recipes/qfft_low_resource.sh   # the paper's teacher (671B)
#
# The paper's numbers: Fig. 7 only (no table): QFFT above SFT at every epoch, both plotted against the
# Qwen2.5-7B-Instruct baseline (pass@1 between 0.70 and 0.80 on the axis). The prepare.py command that yields the
# paper's 100 examples from a 10-response file is `--max_questions 10 --responses all`.
set -euo pipefail
cd "$(dirname "$0")/.."
source recipes/lib.sh

MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}
TEACHER=${TEACHER:-deepseek-ai/DeepSeek-R1-Distill-Qwen-32B}   # the paper: DeepSeek-R1
QUESTIONS=${QUESTIONS:-simplescaling/s1K-1.1}
LOW_QUESTIONS=${LOW_QUESTIONS:-10}
LOW_RESPONSES=${LOW_RESPONSES:-10}
SEED=${SEED:-42}
SAMPLE_MAX_TOKENS=${SAMPLE_MAX_TOKENS:-}  # empty: configs/qfft/sample.yaml (16384)
NUM_GPUS=${NUM_GPUS:-8}
TP=${TP:-1}
GLOBAL_BATCH=${GLOBAL_BATCH:-}             # empty: configs/qfft/train.yaml (8)
EPOCHS=${EPOCHS:-50}
MAX_LEN=${MAX_LEN:-}                       # empty: configs/qfft/train.yaml, prepare.py (16384)
DEEPSPEED=${DEEPSPEED:-configs/ds_z3.json}
GRAD_CKPT=${GRAD_CKPT---gradient_checkpointing}
BENCHMARKS=${BENCHMARKS:-math500}
EVAL_N=${EVAL_N:-4}                        # Fig. 7: pass@1 averaged over 4 samples
EVAL_MAX_TOKENS=${EVAL_MAX_TOKENS:-}       # empty: configs/qfft/evaluate.yaml (32768)
EVAL_LIMIT=${EVAL_LIMIT:-}
OUT=${OUT:-runs/qfft_low_resource/$(basename "$MODEL")}
mkdir -p "$OUT"

step "pick $LOW_QUESTIONS seeded questions from $QUESTIONS (prepare.py's --max_questions rule)"
python - "$QUESTIONS" "$LOW_QUESTIONS" "$SEED" "$OUT/questions.jsonl" <<'PY'
import sys
from pathlib import Path
import common, prepare, sources
src, k, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
picked = prepare.take_questions(sources.load_questions(src), k, seed)
if not out.exists() or common.read_jsonl(out) != picked:
    common.write_jsonl(out, picked)
PY
step "sample $LOW_RESPONSES responses per question from $TEACHER"
python sample.py --model "$TEACHER" --data "$OUT/questions.jsonl" --n "$LOW_RESPONSES" \
  --config configs/qfft/sample.yaml $(opt --max_tokens "$SAMPLE_MAX_TOKENS") --tensor_parallel_size "$TP" $(engine_args) \
  \
  --output "$OUT/traces.jsonl"

step "prepare SFT and QFFT: every response of the $LOW_QUESTIONS questions"
python prepare.py --mode sft --preset qfft --max_questions "$LOW_QUESTIONS" --responses all \
  --input "$OUT/traces.jsonl" --model "$MODEL" $(opt --max_len "$MAX_LEN") --output "$OUT/sft.jsonl"
python prepare.py --mode qfft --max_questions "$LOW_QUESTIONS" --responses all --input "$OUT/traces.jsonl" \
  --model "$MODEL" $(opt --max_len "$MAX_LEN") --output "$OUT/qfft.jsonl"

for method in sft qfft; do
  step "train $method ($EPOCHS epochs)"
  train --model "$MODEL" --data "$OUT/$method.jsonl" --output_dir "$OUT/$method-model" \
    --config configs/qfft/train.yaml $(train_env) --deepspeed "$DEEPSPEED" $GRAD_CKPT
done
for run in base sft qfft; do
  model=$MODEL; [ "$run" = base ] || model=$OUT/$run-model
  step "evaluate $run (n=$EVAL_N)"
  qfft_eval "$model" "$OUT/eval-$run"
done

step "table: MATH500 pass@1 of SFT and QFFT after $EPOCHS epochs (QFFT Fig. 7's last point)"
python rak.py --runs base="$OUT/eval-base" sft="$OUT/eval-sft" qfft="$OUT/eval-qfft" --reference base \
  --baseline sft --benchmarks "$BENCHMARKS" --show qfft,long_cot --out "$OUT/tables" --overwrite ${RAK_ARGS:-}
step "done: $OUT/tables"
