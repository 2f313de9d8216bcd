"""Staged generation through verl's trainer and its agent-loop rollout (issue 16), on CPU.

The same 2 steps, data and seed run plain (all n = 4 rollouts at once) and staged (2 rollouts, then
a question with 0 of 2 correct stops and goes to SFT). The verifier fixes every question's outcome
by its dataset index (even: all correct, odd: none), and greedy rollouts make both runs draw the
same rows, so the difference is exactly the rows staging never drew.
"""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import json
from pathlib import Path

import pytest

from tests.e2e.utils import base_overrides, run_main

INDEX_REWARD = str(TESTS_REPO / "tests/assets/index_parity_reward.py")
STAGES = "hpt.stages=[{rollouts:2},{rollouts:2,max_correct:0,action:stop_to_sft}]"


def _run(model, data, tmp: Path, name: str, extra: list[str]):
    ckpt = tmp / name
    over = base_overrides(model, data, ckpt, steps=2, reward=INDEX_REWARD) + [
        "hpt.gate.gamma=0.0",
        "actor_rollout_ref.rollout.top_k=1",  # greedy: both runs draw the same rows in the same slots
        "trainer.save_freq=-1",
        *extra,
    ]
    metrics = run_main(over, tmp / f"{name}.jsonl", timeout=900)
    steps = [m for m in metrics if "hpt/questions" in m]
    assert len(steps) == 2, name
    return steps, json.loads((ckpt / "hpt_summary.json").read_text())


def test_staged_hpt_draws_fewer_rows_and_trains_the_same_questions(tiny_model_dir, arith_data_dir, tmp_path,
                                                                   capsys):
    plain, plain_sum = _run(tiny_model_dir, arith_data_dir, tmp_path, "plain", [])
    staged, staged_sum = _run(tiny_model_dir, arith_data_dir, tmp_path, "staged", [STAGES])
    for p, s in zip(plain, staged):
        # the same questions and gate decisions: odd questions (0 correct) go to SFT in both runs
        for key in ("hpt/questions", "hpt/sft_question_share", "hpt/rows/demo", "hpt/rows/rollout"):
            assert p[key] == s[key], key
        sft_questions = round(p["hpt/sft_question_share"] * p["hpt/questions"])
        assert 0 < sft_questions < p["hpt/questions"]
        assert s["hpt/stages/stopped_to_sft"] == sft_questions and "hpt/stages/stopped_to_sft" not in p
        assert s["hpt/stages/padding_rows"] >= 0 and "hpt/stages/padding_rows" not in p  # logged when staged
        # staged: 2 of the 4 rows of each stopped question were never drawn
        assert p["hpt/gen/rows_skipped"] == 0 and s["hpt/gen/rows_skipped"] == 2 * sft_questions
        assert s["hpt/gen/rows"] == p["hpt/gen/rows"] - 2 * sft_questions
        # fewer generated tokens, all of the saving on SFT questions' rollouts (wasted in both runs)
        assert s["hpt/gen/tokens"] < p["hpt/gen/tokens"]
        saved = p["hpt/gen/tokens"] - s["hpt/gen/tokens"]
        assert p["hpt/gen/tokens_wasted"] - s["hpt/gen/tokens_wasted"] == pytest.approx(saved)
        assert s["hpt/gen/tokens_saved_est"] > 0 and p["hpt/gen/tokens_saved_est"] == 0
    for summary, steps in ((plain_sum, plain), (staged_sum, staged)):
        assert summary["generation"]["tokens"] == pytest.approx(sum(m["hpt/gen/tokens"] for m in steps))
    assert staged_sum["generation"]["stopped_to_sft"] == sum(m["hpt/stages/stopped_to_sft"] for m in staged)
    with capsys.disabled():
        ratio = staged_sum["generation"]["tokens"] / plain_sum["generation"]["tokens"]
        print(f"\n[staged] 2 steps: generated tokens plain {plain_sum['generation']['tokens']:.0f}, staged "
              f"{staged_sum['generation']['tokens']:.0f} ({1 - ratio:.0%} fewer); wasted on SFT questions "
              f"{plain_sum['generation']['tokens_wasted']:.0f} vs {staged_sum['generation']['tokens_wasted']:.0f}")
