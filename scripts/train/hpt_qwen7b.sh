#!/usr/bin/env bash
# Table 2, "HPT" on Qwen2.5-Math-7B (paper: ID avg 52.7, OOD avg 62.3): recipe/hpt/config/exp/hpt_qwen7b.yaml.
# Environment, data preparation and multi-node notes: scripts/train/_common.sh.
set -euo pipefail
MODEL_NAME=${MODEL_NAME:-Qwen2.5-Math-7B}
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
EXP_NAME=${EXP_NAME:-hpt_qwen2.5-math-7b}
maybe_patch_rope
hpt_run python3 -m recipe.hpt.main_hpt +exp=hpt_qwen7b \
  trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$GPUS_PER_NODE" \
  data.train_files="$TRAIN" data.val_files="$VAL" \
  actor_rollout_ref.model.path="$MODEL" \
  trainer.experiment_name="$EXP_NAME" trainer.default_local_dir="$CKPT_DIR/$EXP_NAME" \
  "$@"
