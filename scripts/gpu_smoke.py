"""A GPU user's first ten minutes: a few HPT steps of a small model, then PASS/FAIL per check.

    bash scripts/gpu_smoke.sh                       # = python scripts/gpu_smoke.py
    MODEL=/path/or/hub-id bash scripts/gpu_smoke.sh trainer.total_training_steps=6

Writes the embedded arithmetic task to ``<out>/data``, runs ``python -m recipe.hpt.main_hpt
+exp=gpu_smoke`` (one GPU, verl's vLLM rollout, the gate firing both ways, mismatch metric and
rollout correction on) with verl's JSONL metrics logger, then checks the logged metrics:

- every step ran; both gate arms fired (demonstration rows and rollouts were trained);
- the rollout-vs-actor mismatch metric is present on every step with sampled rows and small after
  the first update (the weights verl pushes to vLLM are the actor's);
- verl's rollout-correction metrics are present; the loss and gradient norm are finite; no
  optimizer step was skipped; the weight push ran.

``--cpu`` runs the same checks through ``+exp=cpu_vllm`` on this machine's CPU (needs
``.venv-vllm``; that is how CI exercises the script). ``--dry-run`` prints the command only.
Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
# Mean |p_actor - p_rollout| over sampled tokens after an update. bf16 vLLM vs the FSDP actor
# typically sits around 1e-3; a missed or wrong weight push is O(0.1). fp32 on CPU: ~1e-9.
MISMATCH_MAX = {"gpu": 0.02, "cpu": 1e-4}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def smoke_checks(metrics: list[dict], steps: int, mismatch_max: float) -> list[tuple[str, bool, str]]:
    """(check, passed, detail) for the per-step metrics of one run (verl's file logger rows)."""
    rows = [m for m in metrics if "hpt/questions" in m]
    rl = [m for m in rows if m.get("hpt/rows/rollout", 0) > 0]
    after = [m for m in rl if m["step"] >= 2]
    mism = [m.get("training/rollout_probs_diff_mean") for m in after]
    checks = [
        ("all steps ran", len(rows) == steps, f"{len(rows)}/{steps} steps logged"),
        ("gate fired (SFT on demonstrations)", sum(m.get("hpt/rows/demo", 0) for m in rows) > 0,
         f"demo rows per step {[m.get('hpt/rows/demo') for m in rows]}"),
        ("RL arm ran (rollouts trained)", bool(rl),
         f"rollout rows per step {[m.get('hpt/rows/rollout') for m in rows]}"),
        ("mismatch metric on every step with rollouts",
         bool(rl) and all(m.get("training/rollout_probs_diff_valid") == 1 for m in rl),
         f"valid flags {[m.get('training/rollout_probs_diff_valid') for m in rl]}"),
        (f"mismatch after updates < {mismatch_max:g} (weights reach vLLM)",
         bool(mism) and all(_finite(x) and x < mismatch_max for x in mism), f"rollout_probs_diff_mean {mism}"),
        ("rollout correction active", bool(rows) and all(any(k.startswith("rollout_corr/") for k in m) for m in rows),
         "rollout_corr/* metrics logged" if rows else "no steps"),
        ("loss and grad norm finite",
         bool(rows) and all(_finite(m.get("actor/pg_loss")) and _finite(m.get("actor/grad_norm")) for m in rows),
         f"grad_norm {[round(m.get('actor/grad_norm', float('nan')), 4) for m in rows]}"),
        ("no optimizer step skipped",
         bool(rows) and all(m.get("hpt/skipped_steps", 0) == 0 and m.get("hpt/skipped_steps_grad_norm", 0) == 0
                            for m in rows),
         f"skips {[(m.get('hpt/skipped_steps'), m.get('hpt/skipped_steps_grad_norm')) for m in rows]}"),
        ("weights pushed to the rollout each step", bool(rows) and all("timing_s/update_weights" in m for m in rows),
         f"update_weights s {[round(m.get('timing_s/update_weights', float('nan')), 3) for m in rows]}"),
    ]
    return checks


def report(checks) -> bool:
    width = max(len(c[0]) for c in checks)
    for name, ok, detail in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {name.ljust(width)}  {detail}")
    ok = all(c[1] for c in checks)
    print(f"GPU smoke: {'PASS' if ok else 'FAIL'} ({sum(c[1] for c in checks)}/{len(checks)} checks)")
    return ok


def command(args, out: Path) -> list[str]:
    exp = "cpu_vllm" if args.cpu else "gpu_smoke"
    cmd = [sys.executable, "-m", "recipe.hpt.main_hpt", f"+exp={exp}",
           f"actor_rollout_ref.model.path={args.model}",
           f"data.train_files={out / 'data/train.parquet'}", f"data.val_files={out / 'data/test.parquet'}",
           f"trainer.total_training_steps={args.steps}", f"trainer.default_local_dir={out / 'checkpoints'}",
           "trainer.logger=[console,file]"]
    if args.cpu:
        cmd += ["algorithm.rollout_correction.rollout_is=token",
                "algorithm.rollout_correction.rollout_is_threshold=2.0"]
    return cmd + list(args.overrides)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.environ.get("MODEL", DEFAULT_MODEL))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default="outputs/gpu_smoke")
    ap.add_argument("--cpu", action="store_true", help="run through +exp=cpu_vllm on the CPU (needs .venv-vllm)")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    cmd = command(args, out)
    print("GPU smoke command:\n  " + " ".join(cmd))
    if args.dry_run:
        return 0
    (out / "data").mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(REPO / "scripts/data/make_arith_dataset.py"), "--out", str(out / "data"),
                    "--train", "256", "--test", "32"], check=True, cwd=REPO)
    metrics_file = out / "metrics.jsonl"
    metrics_file.unlink(missing_ok=True)
    env = dict(os.environ, VERL_FILE_LOGGER_PATH=str(metrics_file))
    rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
    metrics = []
    if metrics_file.exists():
        metrics = [dict(json.loads(line)["data"], step=json.loads(line)["step"])
                   for line in metrics_file.read_text().splitlines() if line.strip()]
    print(f"\nGPU smoke: training exited with status {rc}; metrics in {metrics_file}")
    ok = report(smoke_checks(metrics, args.steps, MISMATCH_MAX["cpu" if args.cpu else "gpu"]))
    return 0 if (ok and rc == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
