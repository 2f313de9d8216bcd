#!/usr/bin/env bash
# Table 3, "HPT" on Qwen2.5-Math-1.5B (paper: avg 41.9): recipe/hpt/config/exp/hpt_qwen1_5b.yaml.
# The same run is Table 5 "SFT/ON (HPT)" and Table 6 "gamma=0" (scripts/eval/eval_all.sh reuses it).
# Environment, data preparation and multi-node notes: scripts/train/_common.sh.
set -euo pipefail
MODEL_NAME=${MODEL_NAME:-Qwen2.5-Math-1.5B}
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
EXP_NAME=${EXP_NAME:-hpt_qwen2.5-math-1.5b}
maybe_patch_rope
hpt_run python3 -m recipe.hpt.main_hpt +exp=hpt_qwen1_5b \
  trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$GPUS_PER_NODE" \
  data.train_files="$TRAIN" data.val_files="$VAL" \
  actor_rollout_ref.model.path="$MODEL" \
  trainer.experiment_name="$EXP_NAME" trainer.default_local_dir="$CKPT_DIR/$EXP_NAME" \
  "$@"
