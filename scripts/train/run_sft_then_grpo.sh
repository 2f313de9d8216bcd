#!/usr/bin/env bash
# Table 2, "SFT -> GRPO" (paper: Qwen2.5-Math-7B ID avg 46.5, OOD 49.3), two chained runs:
#   stage 1  SFT on OpenR1-46k (recipe/hpt/config/exp/baseline_sft.yaml, via scripts/train/sft.sh);
#   stage 2  GRPO from stage 1's last checkpoint (its actor/huggingface folder) on the OpenR1
#            complement set, LUFFY's SFT->RL convention (recipe/hpt/config/exp/baseline_sft_grpo_stage2.yaml).
# Stage 2's hyperparameters are UNCONFIRMED (no release script); see the exp files.
#
# Environment: as scripts/train/_common.sh, plus
#   SFT_EXP_NAME [sft_$MODEL_TAG]   GRPO_EXP_NAME [sft_grpo_$MODEL_TAG]
#   RL_TRAIN [$DATA_DIR/openr1_complement.parquet]: stage 2 is plain GRPO (the gate never routes to
#            SFT), so the file needs no demonstrations, and none are read or length-checked:
#   python3 scripts/data/prepare_openr1.py --source Elliott/Openr1-Math-48k-Complement \
#       --no-demonstrations --out $DATA_DIR/openr1_complement.parquet
#   SFT_MODEL  an HF folder to start stage 2 from; set it to skip stage 1 (e.g. an existing SFT run)
#   STAGE1_ARGS / STAGE2_ARGS  extra Hydra overrides for one stage (whitespace separated);
#   arguments after the script name go to both stages.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODEL_NAME=${MODEL_NAME:-Qwen2.5-Math-7B}
source "$HERE/_common.sh"
SFT_EXP_NAME=${SFT_EXP_NAME:-sft_$MODEL_TAG}
GRPO_EXP_NAME=${GRPO_EXP_NAME:-sft_grpo_$MODEL_TAG}
RL_TRAIN=${RL_TRAIN:-$DATA_DIR/openr1_complement.parquet}
read -r -a STAGE1 <<< "${STAGE1_ARGS:-}"
read -r -a STAGE2 <<< "${STAGE2_ARGS:-}"

if [[ -z "${SFT_MODEL:-}" ]]; then
  # ---- stage 1: SFT (sft.sh applies the Qwen rope patch to the base model)
  EXP_NAME=$SFT_EXP_NAME "$HERE/sft.sh" ${STAGE1[@]+"${STAGE1[@]}"} "$@"
  SFT_ROOT=$CKPT_DIR/$SFT_EXP_NAME
  if [[ $DRY_RUN == 1 ]]; then
    SFT_MODEL=$SFT_ROOT/global_step_LATEST/actor/huggingface
  else
    LATEST=$(cat "$SFT_ROOT/latest_checkpointed_iteration.txt")
    SFT_MODEL=$SFT_ROOT/global_step_$LATEST/actor/huggingface
  fi
fi
if [[ $DRY_RUN != 1 ]] && ! compgen -G "$SFT_MODEL/*.safetensors" > /dev/null && ! compgen -G "$SFT_MODEL/*.bin" > /dev/null; then
  echo "no HF weights in $SFT_MODEL: save checkpoints with actor.checkpoint.save_contents including hf_model" >&2
  echo "(recipe/hpt/config/exp/release_gpu.yaml does) or merge the FSDP shards first:" >&2
  echo "  python3 -m verl.model_merger merge --backend fsdp --local_dir ${SFT_MODEL%/huggingface} --target_dir $SFT_MODEL" >&2
  exit 1
fi

# ---- stage 2: GRPO from the SFT weights (their config.json already carries the rope patch)
hpt_run python3 -m recipe.hpt.main_hpt +exp="$(with_model_exp baseline_sft_grpo_stage2)" \
  trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$GPUS_PER_NODE" \
  data.train_files="$RL_TRAIN" data.val_files="$VAL" \
  actor_rollout_ref.model.path="$SFT_MODEL" \
  trainer.experiment_name="$GRPO_EXP_NAME" trainer.default_local_dir="$CKPT_DIR/$GRPO_EXP_NAME" \
  ${STAGE2[@]+"${STAGE2[@]}"} "$@"
