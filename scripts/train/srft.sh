#!/usr/bin/env bash
# Baseline "SRFT (re-implemented)" (paper: Qwen2.5-Math-7B ID avg 44.2, OOD 58.7): recipe/hpt/config/exp/baseline_srft.yaml.
# Loss: upge/srft_release.yaml, the release's SRFT rule (entropy-weighted rollout advantages and
# demonstration NLL, LUFFY's shaping, entropy bonus per micro-batch); see the exp file.
# The model picks the row: MODEL_NAME=Qwen2.5-Math-7B (default; Table 2), Qwen2.5-Math-1.5B or
# Llama-3.1-8B (Table 3; LLaMA adds recipe/hpt/config/exp/llama_zero_template.yaml and the zero-template data).
# Environment, data preparation and multi-node notes: scripts/train/_common.sh.
set -euo pipefail
MODEL_NAME=${MODEL_NAME:-Qwen2.5-Math-7B}
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
EXP_NAME=${EXP_NAME:-srft_$MODEL_TAG}
maybe_patch_rope
hpt_run python3 -m recipe.hpt.main_hpt +exp="$(with_model_exp baseline_srft)" \
  trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$GPUS_PER_NODE" \
  data.train_files="$TRAIN" data.val_files="$VAL" \
  actor_rollout_ref.model.path="$MODEL" \
  trainer.experiment_name="$EXP_NAME" trainer.default_local_dir="$CKPT_DIR/$EXP_NAME" \
  "$@"
