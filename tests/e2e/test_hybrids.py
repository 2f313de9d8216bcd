"""The 2026 hybrids' presets through verl's trainer on CPU (issue 16): DYPO and RASFT, 2 steps each.

The verifier (tests/assets/three_way_reward.py) puts questions on every side of the gates by dataset
index: all correct, none correct, or mixed (a coin flip per rollout on the tiny random model). The
checks are that each preset's parts reach the update through verl's real data path (batch keys, the
worker's loss) and are logged:
DYPO's all-correct questions dropped and counted, its group-alignment weights in the loss; RASFT's soft
weights on demonstration rows and correct rollouts.
"""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import json
import math
from pathlib import Path

from tests.e2e.utils import base_overrides, run_main

THREE_WAY_REWARD = str(TESTS_REPO / "tests/assets/three_way_reward.py")


def _run(model, data, tmp: Path, name: str, extra: list[str]):
    ckpt = tmp / name
    over = base_overrides(model, data, ckpt, steps=2, reward=THREE_WAY_REWARD) + ["trainer.save_freq=-1", *extra]
    metrics = run_main(over, tmp / f"{name}.jsonl", timeout=900)
    steps = [m for m in metrics if "hpt/questions" in m]
    assert len(steps) == 2, name
    for m in steps:
        assert math.isfinite(m["actor/pg_loss"]) and math.isfinite(m["actor/grad_norm"]), name
    return steps, json.loads((ckpt / "hpt_summary.json").read_text())


def test_dypo_and_rasft_presets_train_through_verl(tiny_model_dir, arith_data_dir, tmp_path, capsys):
    dypo, dypo_sum = _run(tiny_model_dir, arith_data_dir, tmp_path, "dypo", [
        "upge=dypo", "hpt.gate.drop_all_correct=true", "algorithm.norm_adv_by_std_in_grpo=true"])
    for m in dypo:
        assert "hpt/dropped_all_correct" in m and "hpt/gal/groups" in m and "actor/hpt/gal_surrogate" in m
        # the questions with index % 3 == 0 (all correct) left the update, the others did not
        assert 0 < m["hpt/dropped_all_correct"] < m["hpt/questions"]
        assert m["hpt/rows/demo"] > 0  # none correct: SFT
    assert sum(m["hpt/gal/groups"] for m in dypo) > 0  # mixed groups existed and carried the term
    assert dypo_sum["generation"]["dropped_all_correct"] == sum(m["hpt/dropped_all_correct"] for m in dypo)

    rasft, _ = _run(tiny_model_dir, arith_data_dir, tmp_path, "rasft", [
        "upge=rasft", "hpt.gate.strategy=soft", "hpt.gate.soft_fn=rasft", "actor_rollout_ref.actor.entropy_coeff=0"])
    for m in rasft:
        # every question gets a demonstration row (β > 0 for every pass count)
        assert m["hpt/rows/demo"] == m["hpt/questions"]
    with capsys.disabled():
        print(f"\n[hybrids] DYPO: dropped all-correct {[m['hpt/dropped_all_correct'] for m in dypo]}, mixed groups "
              f"{[m['hpt/gal/groups'] for m in dypo]}, GAL {[round(m['hpt/gal/loss'], 4) for m in dypo]}; "
              f"RASFT demo rows {[m['hpt/rows/demo'] for m in rasft]}, rollout rows "
              f"{[m['hpt/rows/rollout'] for m in rasft]}")
