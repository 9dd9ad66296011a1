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
