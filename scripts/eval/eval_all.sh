#!/usr/bin/env bash
# Evaluate the paper runs' checkpoints with the paper's protocol (scripts/eval/evaluate.py: temperature
# 0.6, top-p 0.95, 8192 tokens, avg@32 on AIME24/AIME25/AMC and n=1 elsewhere) and build the paper's
# tables next to our numbers (scripts/make_table.py). Runs are found by the experiment names the
# scripts in scripts/train/ use (if you change EXP_NAME there, edit REGISTRY below to match).
#
#   scripts/eval/eval_all.sh                  # every run found under $CKPT_DIR, then all tables
#   RUNS="hpt_qwen2.5-math-7b grpo_qwen2.5-math-7b" scripts/eval/eval_all.sh
#   EVAL_ARGS="--limit 20 --n 4" scripts/eval/eval_all.sh   # a quick look
#
# Environment (defaults in brackets):
#   CKPT_DIR [<repo>/checkpoints]  RESULTS_DIR [<repo>/results]: results/<exp>/summary.json, results/tables/<table>/
#   STEP [latest]: the global step to evaluate; latest = latest_checkpointed_iteration.txt (the
#       final step). UNCONFIRMED which checkpoint the paper reports (final vs best-on-validation).
#   RUNS [all known]: experiment names to evaluate (RUNS="" evaluates nothing: tables only)
#   BENCHMARKS [aime24 aime25 amc23 math500 minerva olympiad gpqa]
#       (ARC-c, the other OOD set of Table 2, has no local benchmark file; the paper's AMC is the
#       83-problem AIMO set, ours the 40-problem AMC23; see scripts/paper_results.json notes)
#   BACKEND [auto]  TP [1] (vLLM tensor parallel size)  EVAL_ARGS [""] more evaluate.py arguments
#   LLAMA_PROMPT_STYLE [zero]: LLaMA runs are evaluated in their training template; the paper's
#       protocol (default chat template + simplerl system prompt) is UNCONFIRMED for LLaMA.
#   BASE_QWEN7B / BASE_QWEN1_5B / BASE_LLAMA8B [unset]: base-model folders to evaluate for the
#       tables' first rows (for Qwen use the rope40k copy from scripts/train/patch_rope.py)
#   FORCE [0]: re-evaluate runs that already have a summary.json
#   TABLE_ARGS [""]: more make_table.py arguments (e.g. --no-plot)
#   DRY_RUN [0]: print the commands only
#   PYTHON [python3]: the interpreter with hpt-verl installed (pip install -e .)
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
cd "$REPO_ROOT"
CKPT_DIR=${CKPT_DIR:-$REPO_ROOT/checkpoints}
RESULTS_DIR=${RESULTS_DIR:-$REPO_ROOT/results}
STEP=${STEP:-latest}
BENCHMARKS=${BENCHMARKS:-aime24 aime25 amc23 math500 minerva olympiad gpqa}
BACKEND=${BACKEND:-auto}
TP=${TP:-1}
EVAL_ARGS=${EVAL_ARGS:-}
LLAMA_PROMPT_STYLE=${LLAMA_PROMPT_STYLE:-zero}
FORCE=${FORCE:-0}
TABLE_ARGS=${TABLE_ARGS:-}
DRY_RUN=${DRY_RUN:-0}

# table|paper row label (matched by make_table.py)|experiment name
REGISTRY="
table2|Qwen2.5-Math-7B|base_qwen2.5-math-7b
table2|SFT|sft_qwen2.5-math-7b
table2|GRPO|grpo_qwen2.5-math-7b
table2|SFT -> GRPO|sft_grpo_qwen2.5-math-7b
table2|LUFFY|luffy_qwen2.5-math-7b
table2|SRFT (re-implemented)|srft_qwen2.5-math-7b
table2|HPT|hpt_qwen2.5-math-7b
table2|HPT (paper equations)|hpt_paper_eq_qwen2.5-math-7b
table3_qwen1.5b|Qwen2.5-Math-1.5B|base_qwen2.5-math-1.5b
table3_qwen1.5b|SFT|sft_qwen2.5-math-1.5b
table3_qwen1.5b|GRPO|grpo_qwen2.5-math-1.5b
table3_qwen1.5b|LUFFY|luffy_qwen2.5-math-1.5b
table3_qwen1.5b|HPT|hpt_qwen2.5-math-1.5b
table3_llama|LLaMA3.1-8B|base_llama-3.1-8b
table3_llama|SFT|sft_llama-3.1-8b
table3_llama|GRPO|grpo_llama-3.1-8b
table3_llama|LUFFY|luffy_llama-3.1-8b
table3_llama|HPT|hpt_llama-3.1-8b
table5|SFT/ON (HPT)|hpt_qwen2.5-math-1.5b
table5|Mix/ON|table5_mix_on_qwen2.5-math-1.5b
table5|OFF/ON|table5_off_on_qwen2.5-math-1.5b
table6|gamma=0|hpt_qwen2.5-math-1.5b
table6|gamma=1/8|table6_gamma1_8_qwen2.5-math-1.5b
table6|gamma=2/8|table6_gamma2_8_qwen2.5-math-1.5b
"

run() {
  if [[ $DRY_RUN == 1 ]]; then printf '%q ' "$@"; printf '\n'; else "$@"; fi
}

has_weights() {
  compgen -G "$1/*.safetensors" > /dev/null || compgen -G "$1/*.bin" > /dev/null
}

# model_dir EXP: the HF folder of the run's chosen checkpoint (merged from FSDP shards if needed).
model_dir() {
  local exp=$1 root=$CKPT_DIR/$1 step=$STEP
  case $exp in
    base_qwen2.5-math-7b) echo "${BASE_QWEN7B:-}"; return ;;
    base_qwen2.5-math-1.5b) echo "${BASE_QWEN1_5B:-}"; return ;;
    base_llama-3.1-8b) echo "${BASE_LLAMA8B:-}"; return ;;
  esac
  if [[ $step == latest ]]; then
    [[ -f $root/latest_checkpointed_iteration.txt ]] || { echo ""; return; }
    step=$(cat "$root/latest_checkpointed_iteration.txt")
  fi
  local actor=$root/global_step_$step/actor
  [[ -d $actor ]] || { echo ""; return; }
  if has_weights "$actor/huggingface"; then echo "$actor/huggingface"; return; fi
  if ! has_weights "$actor/huggingface_merged"; then
    run "$PYTHON" -m verl.model_merger merge --backend fsdp --local_dir "$actor" \
      --target_dir "$actor/huggingface_merged" >&2
  fi
  echo "$actor/huggingface_merged"
}

evaluate_run() {
  local exp=$1 model out=$RESULTS_DIR/$1 style=simplerl
  [[ $exp == *llama* ]] && style=$LLAMA_PROMPT_STYLE
  if [[ -f $out/summary.json && $FORCE != 1 ]]; then
    echo "[eval_all] $exp: $out/summary.json exists (FORCE=1 to redo)"; return 0
  fi
  model=$(model_dir "$exp")
  if [[ -z $model ]]; then echo "[eval_all] $exp: no checkpoint under $CKPT_DIR/$exp, skipped"; return 0; fi
  echo "[eval_all] $exp: evaluating $model"
  # shellcheck disable=SC2086  # EVAL_ARGS and BENCHMARKS are word lists
  run "$PYTHON" scripts/eval/evaluate.py --model "$model" --out-dir "$out" --benchmarks $BENCHMARKS \
    --backend "$BACKEND" --tensor-parallel-size "$TP" --prompt-style "$style" $EVAL_ARGS
}

known_runs=$(printf '%s\n' "$REGISTRY" | awk -F'|' 'NF==3 {print $3}' | awk '!seen[$0]++')
for exp in ${RUNS-$known_runs}; do
  evaluate_run "$exp"
done

# ---- tables: every run with a summary.json goes into each table that lists it
tables=$(printf '%s\n' "$REGISTRY" | awk -F'|' 'NF==3 {print $1}' | awk '!seen[$0]++')
for table in $tables; do
  args=()
  while IFS='|' read -r t label exp; do
    [[ $t == "$table" ]] || continue
    if [[ -f $RESULTS_DIR/$exp/summary.json || $DRY_RUN == 1 ]]; then
      args+=(--run "$label=$RESULTS_DIR/$exp/summary.json")
    fi
  done <<< "$REGISTRY"
  if (( ${#args[@]} == 0 )); then echo "[eval_all] $table: no evaluated runs yet"; continue; fi
  # shellcheck disable=SC2086
  run "$PYTHON" scripts/make_table.py --table "$table" --out-dir "$RESULTS_DIR/tables/$table" "${args[@]}" $TABLE_ARGS
done
