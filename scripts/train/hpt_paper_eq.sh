#!/usr/bin/env bash
# HPT in the paper-equation mode (PPO clip, std-normalised advantages; recipe/hpt/config/exp/hpt_paper_eq.yaml)
# on top of the model's HPT settings. No paper number: the paper's numbers come from the release's
# code path (hpt_qwen7b.sh etc.). MODEL_NAME=Qwen2.5-Math-7B (default), Qwen2.5-Math-1.5B or Llama-3.1-8B.
# Environment, data preparation and multi-node notes: scripts/train/_common.sh.
set -euo pipefail
MODEL_NAME=${MODEL_NAME:-Qwen2.5-Math-7B}
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
case "${MODEL_NAME,,}" in
  *1.5b*) HPT_EXP=hpt_qwen1_5b ;;
  *llama*) HPT_EXP=hpt_llama8b ;;
  *) HPT_EXP=hpt_qwen7b ;;
esac
EXP_NAME=${EXP_NAME:-hpt_paper_eq_$MODEL_TAG}
maybe_patch_rope
hpt_run python3 -m recipe.hpt.main_hpt +exp="[$HPT_EXP,hpt_paper_eq]" \
  trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$GPUS_PER_NODE" \
  data.train_files="$TRAIN" data.val_files="$VAL" \
  actor_rollout_ref.model.path="$MODEL" \
  trainer.experiment_name="$EXP_NAME" trainer.default_local_dir="$CKPT_DIR/$EXP_NAME" \
  "$@"
