#!/usr/bin/env bash
# Table 3, "HPT" on LLaMA-3.1-8B base (paper: avg 18.2): recipe/hpt/config/exp/hpt_llama8b.yaml.
# Needs the zero-template data (TRAIN/VAL_DIR defaults: openr1_zero.parquet, benchmarks_zero/).
# Environment, data preparation and multi-node notes: scripts/train/_common.sh.
set -euo pipefail
MODEL_NAME=${MODEL_NAME:-Llama-3.1-8B}
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
EXP_NAME=${EXP_NAME:-hpt_llama-3.1-8b}
maybe_patch_rope
hpt_run python3 -m recipe.hpt.main_hpt +exp=hpt_llama8b \
  trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$GPUS_PER_NODE" \
  data.train_files="$TRAIN" data.val_files="$VAL" \
  actor_rollout_ref.model.path="$MODEL" \
  trainer.experiment_name="$EXP_NAME" trainer.default_local_dir="$CKPT_DIR/$EXP_NAME" \
  "$@"
