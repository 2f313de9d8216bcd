#!/usr/bin/env bash
# Table 5, "OFF/ON" (paper: ID avg 38.1; model believed Qwen2.5-Math-1.5B): recipe/hpt/config/exp/table5_off_on.yaml.
# "SFT/ON" is the HPT 1.5B run (hpt_qwen1_5b.sh); "Mix/ON" is table5_mix_on.sh.
# Environment, data preparation and multi-node notes: scripts/train/_common.sh.
set -euo pipefail
MODEL_NAME=${MODEL_NAME:-Qwen2.5-Math-1.5B}
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
EXP_NAME=${EXP_NAME:-table5_off_on_qwen2.5-math-1.5b}
maybe_patch_rope
hpt_run python3 -m recipe.hpt.main_hpt +exp=table5_off_on \
  trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$GPUS_PER_NODE" \
  data.train_files="$TRAIN" data.val_files="$VAL" \
  actor_rollout_ref.model.path="$MODEL" \
  trainer.experiment_name="$EXP_NAME" trainer.default_local_dir="$CKPT_DIR/$EXP_NAME" \
  "$@"
