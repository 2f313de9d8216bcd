#!/usr/bin/env bash
# Table 6, gate gamma = 1/8 (paper: ID avg 38.7; model believed Qwen2.5-Math-1.5B): recipe/hpt/config/exp/table6_gamma1_8.yaml.
# gamma = 0 is the HPT 1.5B run (hpt_qwen1_5b.sh).
# Environment, data preparation and multi-node notes: scripts/train/_common.sh.
set -euo pipefail
MODEL_NAME=${MODEL_NAME:-Qwen2.5-Math-1.5B}
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
EXP_NAME=${EXP_NAME:-table6_gamma1_8_qwen2.5-math-1.5b}
maybe_patch_rope
hpt_run python3 -m recipe.hpt.main_hpt +exp=table6_gamma1_8 \
  trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$GPUS_PER_NODE" \
  data.train_files="$TRAIN" data.val_files="$VAL" \
  actor_rollout_ref.model.path="$MODEL" \
  trainer.experiment_name="$EXP_NAME" trainer.default_local_dir="$CKPT_DIR/$EXP_NAME" \
  "$@"
