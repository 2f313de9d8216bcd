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
