# Shared shell helpers for the recipes (sourced, not run). Each paper setting lives in one file,
# configs/<paper>/<stage>.yaml, passed as --config; an environment variable that is set (EPOCHS, MAX_LEN, EVAL_N, ...)
# overrides it with a flag, so the same recipe runs unchanged at tiny scale (see scripts/demo.sh).
RECIPE_T0=${RECIPE_T0:-$(date +%s)}
# step NAME: a progress line per stage, with the seconds since the recipe started.
step() { printf '\n==> [%4ss] %s\n' "$(( $(date +%s) - RECIPE_T0 ))" "$*"; }

# train ARGS...: train.py under DeepSpeed ZeRO-3 on NUM_GPUS processes (set DS_ACCELERATOR=cpu on CPU machines)
# or on the nodes of HOSTFILE. --resume is always passed: a killed run continues from its last checkpoint.
# A finished output is checked by one plain process (cheap: no launcher), which refuses other settings.
train() {
  local out="" prev=""
  for a in "$@"; do [ "$prev" = "--output_dir" ] && out=$a; prev=$a; done
  if [ -n "$out" ] && grep -qs '"finished": true' "$out/meta.json"; then
    python train.py "$@" ${TRAIN_ARGS:-} --resume
    return
  fi
  if [ -n "${HOSTFILE:-}" ]; then
    deepspeed --hostfile "$HOSTFILE" --master_addr "${MASTER_ADDR:?set MASTER_ADDR with HOSTFILE}" \
      --master_port "${MASTER_PORT:-29500}" train.py "$@" ${TRAIN_ARGS:-} --resume
  else
    deepspeed --num_gpus "${NUM_GPUS:-8}" --master_port "${MASTER_PORT:-$(( 29500 + RANDOM % 2000 ))}" \
      train.py "$@" ${TRAIN_ARGS:-} --resume
  fi
}

# Sampling and evaluation engines (sample.py/evaluate.py --backend), next to HOSTFILE/NUM_GPUS for training:
#   BACKEND=ray    one vLLM replica per TP GPUs on Ray, every GPU busy (default where nvidia-smi lists 2+ GPUs); each
#                  stage starts a private Ray cluster on 127.0.0.1, or joins RAY_ADDRESS (recipes/slurm/ray.sbatch
#                  sets it to the cluster it starts over a SLURM allocation)
#   BACKEND=local  one engine in the stage's process (CPU machines, the demo)
#   GPUS=N         GPUs for the replicas (replicas = N / TP); empty: every GPU of the Ray cluster
if [ -z "${BACKEND:-}" ]; then
  BACKEND=local
  if [ "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)" -ge 2 ]; then BACKEND=ray; fi
fi
RAY_ADDRESS=${RAY_ADDRESS:-}
GPUS=${GPUS:-}
# engine_args: the backend flags of every sample.py/evaluate.py command (after --tensor_parallel_size "$TP").
engine_args() {
  [ "$BACKEND" = ray ] || return 0
  local a="--backend ray"
  [ -z "$RAY_ADDRESS" ] || a="$a --ray_address $RAY_ADDRESS"
  [ -z "$GPUS" ] || a="$a --replicas $(( GPUS / ${TP:-1} > 0 ? GPUS / ${TP:-1} : 1 ))"
  echo "$a"
}

# DRY_RUN=FILE: record every stage command (one shell-quoted line each) in FILE instead of running it; the test
# suite parses them all with the stages' own argument parsers (tests/test_recipes.py), so no recipe can rot.
if [ -n "${DRY_RUN:-}" ]; then
  python() { printf '%q ' python "$@" >> "$DRY_RUN"; echo >> "$DRY_RUN"; }
  deepspeed() { local a=("$@"); while [ "${a[0]}" != train.py ]; do a=("${a[@]:1}"); done; python "${a[@]}"; }
  torchrun() { deepspeed "$@"; }
fi

limit() { [ -n "$1" ] && echo "--limit $1" || true; }
# opt FLAG VALUE: "FLAG VALUE" when VALUE is set (a number or a word), else nothing: the --config file's value holds.
opt() { [ -n "$2" ] && echo "$1 $2" || true; }
# train_env / eval_env: the sizes set in the environment, as flags after a stage's --config (unset: nothing).
train_env() {
  echo $(opt --epochs "${EPOCHS:-}") $(opt --global_batch_size "${GLOBAL_BATCH:-}") $(opt --max_len "${MAX_LEN:-}") \
    $(opt --lr "${LR:-}")
}
eval_env() { echo $(opt --n "${EVAL_N:-}") $(opt --max_tokens "${EVAL_MAX_TOKENS:-}") $(limit "${EVAL_LIMIT:-}"); }

# upft_configs STAGE: --config configs/upft/STAGE.yaml, then the overlays configs/upft/V/STAGE.yaml of the variants
# V in UPFT_VARIANTS (limo: UPFT's LIMO settings; r1_distill: R1-distill models) that have one for STAGE.
upft_configs() {
  local files="configs/upft/$1.yaml" v
  for v in ${UPFT_VARIANTS:-}; do
    if [ -f "configs/upft/$v/$1.yaml" ]; then files="$files configs/upft/$v/$1.yaml"; fi
  done
  echo "--config $files"
}

# qfft_eval MODEL DIR: one evaluation under QFFT's protocol (configs/qfft/evaluate.yaml; EVAL_N, EVAL_MAX_TOKENS,
# EVAL_LIMIT override it) on the engines of BACKEND, into DIR.
qfft_eval() {
  python evaluate.py --model "$1" --benchmarks "$BENCHMARKS" --config configs/qfft/evaluate.yaml $(eval_env) \
    --tensor_parallel_size "$TP" $(engine_args) --output_dir "$2"
}

# upft_judge: JUDGE_ARGS for every UPFT evaluation. UPFT judges every benchmark behind every published number: its
# inference/eval.py parses --llm_judge with type=bool, so any value is true. correct = rule grader (the box alone)
# OR KbsdJames/Omni-Judge with the judge's own prompt and parser, which only its tokenizer's remote code holds:
# TRUST_JUDGE=1 (default) passes --judge_trust_remote_code (the judge's code alone, not the evaluated model's).
# TRUST_JUDGE=0: our built-in prompt instead (evaluate.py warns: not UPFT's protocol). JUDGE= : rule grader only.
upft_judge() {
  JUDGE=${JUDGE-KbsdJames/Omni-Judge}
  TRUST_JUDGE=${TRUST_JUDGE:-1}
  JUDGE_ARGS=""
  [ -z "$JUDGE" ] || JUDGE_ARGS="--judge $JUDGE --judge_tensor_parallel_size ${TP:-1}"
  if [ -n "$JUDGE" ] && [ "$TRUST_JUDGE" = 1 ]; then
    JUDGE_ARGS="$JUDGE_ARGS --judge_trust_remote_code"
    echo "note: the judge $JUDGE runs its own tokenizer code (remote code) to build prompts and read verdicts, as" \
      "UPFT's eval; TRUST_JUDGE=0 to refuse it (then not UPFT's protocol)" >&2
  fi
}

# qfft_source: SRC = the long-CoT traces for DATA (s1k | limo | teacher: sampled from $TEACHER on $QUESTIONS).
# SFT_SYSTEM = the system prompt QFFT's SFT baseline saw on that data: LIMO's LLaMA-Factory file carries the eval
# prompt; s1K and teacher traces have none, so the model's default (docs/paper_numbers.md,
# "Where the papers and their code disagree").
qfft_source() {
  case "$DATA" in
    s1k)  SRC=simplescaling/s1K-1.1 SFT_SYSTEM=default ;;
    limo) SRC=GAIR/LIMO SFT_SYSTEM=eval ;;
    teacher)
      step "sample long-CoT traces from the teacher $TEACHER"
      python sample.py --model "$TEACHER" --data "$QUESTIONS" $(limit "${NUM_QUESTIONS:-}") \
        --config configs/qfft/sample.yaml $(opt --max_tokens "${SAMPLE_MAX_TOKENS:-}") --tensor_parallel_size "$TP" \
        $(engine_args) --output "$OUT/traces.jsonl"
      SRC=$OUT/traces.jsonl SFT_SYSTEM=default ;;
    *) echo "DATA must be s1k, limo or teacher" >&2; exit 2 ;;
  esac
  SFT_SYSTEM=${SFT_SYSTEM_PROMPT:-$SFT_SYSTEM}
}

# upft_prompt MODEL: CHAT_TEMPLATE_ARGS and SYSTEM_PROMPT as UPFT's scripts/train_sft.sh picks them per family:
# llama-3.1-chat (empty system turn, no date lines), deepseek_R1 (no system prompt), qwen-math (the model's own
# ChatML with the eval system prompt). CHAT_TEMPLATE / SYSTEM_PROMPT override.
upft_prompt() {
  local m tpl="" sys=eval
  m=$(basename "$1" | tr 'A-Z' 'a-z')
  case "$m" in
    *llama*) [[ $m == *deepseek* ]] || { tpl=configs/upft_llama31.jinja sys=none; } ;;
  esac
  case "$m" in *deepseek-r1*|*r1-distill*) tpl=configs/upft_deepseek_r1.jinja sys=none ;; esac
  CHAT_TEMPLATE=${CHAT_TEMPLATE-$tpl}
  SYSTEM_PROMPT=${SYSTEM_PROMPT:-$sys}
  CHAT_TEMPLATE_ARGS=""
  [ -z "$CHAT_TEMPLATE" ] || CHAT_TEMPLATE_ARGS="--chat_template $CHAT_TEMPLATE"
}
