"""Run ``python -m recipe.hpt.main_hpt`` in a subprocess (own Ray cluster) and read its metrics."""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = TESTS_REPO


def run_main(overrides: list[str], metrics_file: Path, timeout: int = 600) -> list[dict]:
    env = dict(os.environ, VERL_FILE_LOGGER_PATH=str(metrics_file), HPT_HF_ROLLOUT_THREADS="2",
               RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "recipe.hpt.main_hpt", *overrides, "trainer.logger=[console,file]"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"main_hpt failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return read_metrics(metrics_file)


def read_metrics(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [dict(r["data"], step=r["step"]) for r in rows]


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def base_overrides(model: Path, data: Path, ckpt: Path, steps: int, reward: str) -> list[str]:
    return [
        "+exp=cpu_tiny",
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'test.parquet'}",
        f"reward.custom_reward_function.path={reward}",
        # The test rewards (tests/assets/parity_reward.py) are not verifiers: scoring the
        # demonstrations with them at start-up (hpt.data.demo_check_*) would refuse the data.
        "hpt.data.demo_check_min_rate=0",
        f"trainer.total_training_steps={steps}",
        f"trainer.default_local_dir={ckpt}",
    ]
