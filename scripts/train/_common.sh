# Shared settings of the launch scripts in scripts/train/ (sourced, not run on its own).
#
# Each launch script is one paper run: `python3 -m recipe.hpt.main_hpt +exp=<recipe/hpt/config/exp file>`
# plus the launch-time values below. Anything after the script name is passed on to Hydra, e.g.
#   scripts/train/hpt_qwen7b.sh trainer.total_training_steps=10 trainer.logger=[console,wandb]
#
# Environment (all optional; defaults in brackets):
#   NNODES [1]  GPUS_PER_NODE [8]
#   MODEL_DIR [$HOME/models]  MODEL_NAME [per script]  MODEL [$MODEL_DIR/$MODEL_NAME]: a local
#       folder or a Hugging Face hub id (org/name; verl loads ids itself). MODEL_NAME picks the model
#       family (template, data files, experiment name); the Qwen2.5-Math models are trained from a
#       copy with a patched config.json, see PATCH_ROPE
#   DATA_DIR [<repo>/data]
#   TRAIN [$DATA_DIR/openr1.parquet; LLaMA: $DATA_DIR/openr1_zero.parquet]
#   VAL_DIR [$DATA_DIR/benchmarks; LLaMA: $DATA_DIR/benchmarks_zero]
#   VAL [[$VAL_DIR/aime24.parquet,$VAL_DIR/amc23.parquet,$VAL_DIR/math500.parquet]] (the release's
#       in-training validation sets)
#   CKPT_DIR [<repo>/checkpoints]  EXP_NAME [per script]: checkpoints go to $CKPT_DIR/$EXP_NAME
#   PATCH_ROPE [auto]: 1/auto-for-Qwen2.5-Math makes $MODEL-rope40k (rope_theta 40000,
#       max_position_embeddings 16384; scripts/train/patch_rope.py) and trains that; 0 uses $MODEL as is.
#       auto reads MODEL_NAME for a folder, the id itself for a hub id (Qwen/Qwen2.5-Math-7B is
#       patched, any other id goes to verl unchanged)
#   ROPE_MODEL [$MODEL-rope40k; hub id: $MODEL_DIR/<name>-rope40k]: where that copy goes (symlinks +
#       config.json; for a hub id the symlinks point into the hub cache, which patch_rope.py fills)
#   DRY_RUN [0]: 1 prints the training command (shell-quoted) instead of running it
# Give absolute paths (or hub ids): the scripts cd to the repo root, and Ray workers read the files too.
#
# Data preparation (once; scripts/data/*.py --help):
#   python3 scripts/data/prepare_openr1.py --source Elliott/Openr1-Math-46k-8192 \
#       --tokenizer $MODEL --out $DATA_DIR/openr1.parquet
#   python3 scripts/data/prepare_benchmarks.py --out-dir $DATA_DIR/benchmarks
#   LLaMA (zero template): the same with --prompt-style zero, --out $DATA_DIR/openr1_zero.parquet,
#       --out-dir $DATA_DIR/benchmarks_zero
#   SFT->GRPO stage 2 (plain GRPO: no demonstrations, so none are read and no tokenizer is needed):
#   python3 scripts/data/prepare_openr1.py --source Elliott/Openr1-Math-48k-Complement \
#       --no-demonstrations --out $DATA_DIR/openr1_complement.parquet
#
# Multi-node (NNODES > 1): start one Ray cluster first, then launch on the head node only.
#   head node:    ray start --head --port=6379 --num-gpus=$GPUS_PER_NODE
#   other nodes:  ray start --address=<head-ip>:6379 --num-gpus=$GPUS_PER_NODE
#   head node:    NNODES=<number of nodes> scripts/train/<run>.sh
# verl's ray.init() attaches to the running cluster (export RAY_ADDRESS=<head-ip>:6379 if it does
# not). Model, data and checkpoint paths must resolve on every node (shared file system), and the
# repo (with its venv) must be installed at the same path on all nodes.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO_ROOT"   # relative paths below (data/, checkpoints/) are the repo's

NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MODEL_DIR=${MODEL_DIR:-$HOME/models}
MODEL_NAME=${MODEL_NAME:-Qwen2.5-Math-7B}
MODEL=${MODEL:-$MODEL_DIR/$MODEL_NAME}
DATA_DIR=${DATA_DIR:-$REPO_ROOT/data}
CKPT_DIR=${CKPT_DIR:-$REPO_ROOT/checkpoints}
PATCH_ROPE=${PATCH_ROPE:-auto}
DRY_RUN=${DRY_RUN:-0}

# LLaMA-3.1-8B base trains with the release's zero template: its own data files and exp file.
case "${MODEL_NAME,,}" in
  *llama*) IS_LLAMA=1 ;;
  *) IS_LLAMA=0 ;;
esac
if [[ $IS_LLAMA == 1 ]]; then
  TRAIN=${TRAIN:-$DATA_DIR/openr1_zero.parquet}
  VAL_DIR=${VAL_DIR:-$DATA_DIR/benchmarks_zero}
else
  TRAIN=${TRAIN:-$DATA_DIR/openr1.parquet}
  VAL_DIR=${VAL_DIR:-$DATA_DIR/benchmarks}
fi
VAL=${VAL:-[$VAL_DIR/aime24.parquet,$VAL_DIR/amc23.parquet,$VAL_DIR/math500.parquet]}

# A short lower-case tag of the model for experiment names: qwen2.5-math-7b, llama-3.1-8b, ...
MODEL_TAG=$(basename "$MODEL_NAME" | tr '[:upper:]' '[:lower:]')

# with_model_exp EXP: the exp selection for a model-agnostic method file (LLaMA adds its template).
with_model_exp() {
  if [[ $IS_LLAMA == 1 ]]; then echo "[$1,llama_zero_template]"; else echo "$1"; fi
}

# is_hub_id PATH: whether MODEL names a Hugging Face repository (org/name) rather than a folder: it is
# no existing path and has the id's form (an absolute or ./ path never does).
is_hub_id() {
  [[ ! -e $1 && $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$ ]]
}

# A hub id names the model exactly; a MODEL_NAME that names another model means the run's template,
# data files and experiment name (all read from MODEL_NAME) are not this model's.
MODEL_ID_NAME=${MODEL##*/}
if is_hub_id "$MODEL" && [[ ${MODEL_ID_NAME,,} != "$(basename "${MODEL_NAME,,}")" ]]; then
  echo "warning: MODEL=$MODEL but MODEL_NAME=$MODEL_NAME: the chat template, data files and experiment" \
       "name follow MODEL_NAME; set MODEL_NAME=$MODEL_ID_NAME if that is the model family" >&2
fi

# Qwen2.5-Math ships rope_theta 10000 / 4096 positions; the release (after LUFFY) trains a copy
# with rope_theta 40000 / 16384 positions so 1024 + 8192 tokens fit (recipe/hpt/config/exp/release_gpu.yaml).
# For a hub id the copy goes under MODEL_DIR (a path relative to the launch directory, such as
# "Qwen/Qwen2.5-Math-7B-rope40k", would not resolve in the Ray workers), and auto decides by the id:
# a non-Math model given as an id goes to verl as it is, whatever the script's MODEL_NAME.
maybe_patch_rope() {
  local want=$PATCH_ROPE name=$MODEL_NAME dst
  if is_hub_id "$MODEL"; then
    name=${MODEL##*/}
    dst=${ROPE_MODEL:-$MODEL_DIR/$name-rope40k}
  else
    dst=${ROPE_MODEL:-${MODEL%/}-rope40k}
  fi
  if [[ $want == auto ]]; then
    case "${name,,}" in *qwen2.5-math*) want=1 ;; *) want=0 ;; esac
  fi
  [[ $want == 1 ]] || return 0
  [[ $dst == /* ]] || dst=$REPO_ROOT/$dst  # the scripts run from the repo root; workers need the full path
  if [[ $DRY_RUN == 1 ]]; then
    printf '# would run: ' >&2
    printf '%q ' python3 scripts/train/patch_rope.py --src "$MODEL" --dst "$dst" >&2
    printf '\n' >&2
  else
    python3 scripts/train/patch_rope.py --src "$MODEL" --dst "$dst"
  fi
  MODEL=$dst
}

# hpt_run CMD...: run it, or print it (one line, shell-quoted) with DRY_RUN=1.
hpt_run() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}
