"""Acceptance of "Bring your own data": a verl user's gsm8k-format parquet with demonstrations goes from
the raw file to a 2-step CPU HPT run and a summary of *their* data, using only the commands of the
README's "Your own data" section (convert.py, the tiny-model command, run_default.py --train/--test).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys

import pandas as pd
import pytest

from tests.e2e.utils import REPO

pytestmark = pytest.mark.e2e

INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'


def raw_gsm8k_rows(n: int, split: str, seed: int) -> list[dict]:
    """Rows exactly as verl's examples/data_preprocess/gsm8k.py writes them: the worked solution with
    calculator notes and '#### N' in extra_info.answer, the number as the ground truth."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 9)
        q = f"Sam has {a} apples and buys {b} more. He gives each of {c} friends one apple. How many are left?"
        total, left = a + b, a + b - c
        answer = (f"Sam has {a} + {b} = <<{a}+{b}={total}>>{total} apples.\n"
                  f"He gives away {c}, so {total} - {c} = <<{total}-{c}={left}>>{left} are left.\n#### {left}")
        rows.append({"data_source": "openai/gsm8k",
                     "prompt": [{"role": "user", "content": q + " " + INSTRUCTION}],
                     "ability": "math", "reward_model": {"style": "rule", "ground_truth": str(left)},
                     "extra_info": {"split": split, "index": i, "answer": answer, "question": q}})
    return rows


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    """Run in its own process group; whatever it leaves behind (Ray workers) is killed afterwards."""
    env = dict(os.environ, HPT_HF_ROLLOUT_THREADS="2", RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def test_gsm8k_format_file_to_cpu_hpt_run_and_summary(tmp_path):
    raw = tmp_path / "gsm8k"
    raw.mkdir()
    pd.DataFrame(raw_gsm8k_rows(12, "train", seed=0)).to_parquet(raw / "train.parquet")
    pd.DataFrame(raw_gsm8k_rows(8, "test", seed=1)).to_parquet(raw / "test.parquet")
    mine = tmp_path / "my-gsm8k"
    out = tmp_path / "out"
    model = tmp_path / "tiny-qwen2"

    # README: convert what you have
    for split in ("train", "test"):
        p = _run([sys.executable, "scripts/data/convert.py", "--format", "verl_gsm8k", "--input",
                  str(raw / f"{split}.parquet"), "--out", str(mine / f"{split}.parquet"), "--split", split], 120)
        assert p.returncode == 0, p.stdout[-3000:]
        assert "format verl_gsm8k: " in p.stdout and "rows kept" in p.stdout
    rep = json.loads((mine / "train.parquet.report.json").read_text())
    assert rep["kept"] == 12 and rep["demos_rewritten"] == 12 and rep["demos_passing_reward"] == 12

    # README: the untrained tiny Qwen2 for a plumbing check (the model +exp=cpu_tiny names)
    build = f"from verl_ext.tiny import build_tiny_model; build_tiny_model({str(model)!r})"
    p = _run([sys.executable, "-c", build], 120)
    assert p.returncode == 0, p.stdout[-3000:]

    # README: train, evaluate and summarise on CPU
    p = _run([sys.executable, "scripts/run_default.py", "--train", str(mine / "train.parquet"),
              "--test", str(mine / "test.parquet"), "--steps", "2", "--out", str(out), "--eval-limit", "8",
              "--base", str(model), "data.max_prompt_length=512", "data.max_response_length=256",
              "data.train_batch_size=8", "actor_rollout_ref.actor.ppo_mini_batch_size=8"], 600)
    log = (out / "train.log").read_text() if (out / "train.log").exists() else ""
    assert p.returncode == 0, p.stdout[-4000:] + log[-4000:]

    # start-up said which reward grades the run, and the demonstrations passed it
    assert "HPT reward: custom function" in log
    assert re.search(r"demonstrations passing the run's reward: 12/12 \(100\.0%", log), log[-3000:]
    assert p.stdout.count("/2  reward") == 2  # one progress line per step
    summary = json.loads((out / "summary.json").read_text())
    assert summary["name"] == "my-gsm8k" and summary["steps"] == 2
    assert set(summary["accuracy"]["base"]) == {"all", "gsm8k_boxed"}
    assert all(0.0 <= v <= 1.0 for acc in summary["accuracy"].values() for v in acc.values())
    assert summary["demo_reward_pass_rate"] == 1.0
    assert summary["data"]["test_rows_evaluated"] == 8
    md = (out / "summary.md").read_text()
    assert md.startswith("## HPT on my-gsm8k (2 steps on CPU") and "gsm8k boxed" in md
    assert "arithmetic" not in md
