# Shared shell helpers for the recipes (sourced, not run). Every size and path is an environment variable with
# the paper's value as default, so the same recipe runs unchanged at tiny scale (see scripts/demo.sh).
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

# qfft_source: SRC = the long-CoT traces for DATA (s1k | limo | teacher: sampled from $TEACHER on $QUESTIONS).
# SFT_SYSTEM = the system prompt QFFT's SFT baseline saw on that data: LIMO's LLaMA-Factory file carries the eval
# prompt; s1K and teacher traces have none, so the model's default (docs/paper_numbers.md, "Issue 12").
qfft_source() {
  case "$DATA" in
    s1k)  SRC=simplescaling/s1K-1.1 SFT_SYSTEM=default ;;
    limo) SRC=GAIR/LIMO SFT_SYSTEM=eval ;;
    teacher)
      step "sample long-CoT traces from the teacher $TEACHER"
      python sample.py --model "$TEACHER" --data "$QUESTIONS" $(limit "${NUM_QUESTIONS:-}") --no_system_prompt \
        --max_tokens "$SAMPLE_MAX_TOKENS" --tensor_parallel_size "$TP" $(engine_args) --output "$OUT/traces.jsonl"
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
