"""The README's main job, shortened to a few steps (the full run is the main-job command)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.e2e.utils import REPO

pytestmark = pytest.mark.e2e


def test_default_job_short(tmp_path):
    out, data, base = tmp_path / "out", tmp_path / "data", tmp_path / "base"
    proc = subprocess.run(
        [sys.executable, "scripts/run_default.py", "--steps", "3", "--out", str(out), "--data", str(data),
         "--base", str(base)],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # progress: one compact line per step
    assert proc.stdout.count("step ") >= 3 and "/3  reward" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3
    for name in ("base", "HPT"):
        acc = summary["accuracy"][name]
        assert set(acc) == {"all", "level_1", "level_2", "level_3", "level_4", "level_5"}
        assert all(0.0 <= v <= 1.0 for v in acc.values())
    # the warm-up made a base model that solves easy problems sometimes and the hardest never
    assert summary["accuracy"]["base"]["level_1"] > 0.0
    assert summary["accuracy"]["base"]["level_5"] == 0.0
    shares = [s for _, s in summary["sft_share_by_step"]]
    assert len(shares) == 3 and all(0.0 <= s <= 1.0 for s in shares)
    assert math.isfinite(summary["mean_step_seconds"]) and summary["mean_step_seconds"] > 0
    assert (out / "dynamics.png").stat().st_size > 10_000
    assert (out / "summary.md").read_text().startswith("## HPT on the synthetic arithmetic task")
    # hpt.fuse_old_log_prob (cpu_default): every step is one mini-batch, so no step ran verl's separate
    # old-log-prob pass; the flag reached the loss in verl's own micro-batches (else the NaN placeholder
    # makes the loss non-finite and the guard skips the step), and the metrics that pass fed are there
    rows = [json.loads(line)["data"] for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "timing_s/step" in r]
    assert len(steps) == 3
    for r in steps:
        assert r["hpt/old_log_prob_fused"] == 1.0 and r["timing_s/old_log_prob"] < 0.05
        assert r["hpt/skipped_steps"] == 0 and math.isfinite(r["actor/pg_loss"])
        assert 0.05 < r["actor/entropy"] < math.log(260)  # nats, vocabulary of 260
        if r["training/rollout_probs_diff_valid"] == 1:  # the hf rollout samples from the actor's weights
            assert r["training/rollout_probs_diff_mean"] < 1e-5
        assert not any("_fused/" in k for k in r)
