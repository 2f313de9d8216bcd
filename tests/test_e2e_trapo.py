"""TRAPO through verl's trainer and its agent-loop rollout (issue 16), on CPU, 2 steps.

Stages as TRAPO's, scaled to n = 4: 2 plain rollouts per question; then, if none was correct, 1 row
continuing the first half of the question's demonstration, and if at most 2 of the 3 are correct, 1 row
that is the whole demonstration (prefix rows are drawn by verl's agent loop under ``hpt_prefix_agent``,
the ``hf`` rollout). The loss is ``upge=trapo``: demonstration tokens (``hpt_prefix_mask``) get TrSFT in
the demo arm, generated tokens the policy gradient; the gate never routes to SFT, so every demo-arm
token in the step is a prefix token. The verifier fixes each question's outcome by its dataset index
(even: all correct, odd: none), so exactly the odd questions get 2 prefix rows each. The staged manager
checks that each prefix row's response starts with the prefix it was sent (it raises otherwise).
"""

from __future__ import annotations

import math
from pathlib import Path

from tests.e2e_utils import base_overrides, run_main

INDEX_REWARD = str(Path(__file__).resolve().parent / "assets/index_parity_reward.py")
STAGES = ("hpt.stages=[{rollouts:2},{rollouts:1,max_correct:0,action:continue_with_prefix,prefix:0.5},"
          "{rollouts:1,max_correct:2,action:continue_with_prefix,prefix:1.0}]")


def test_trapo_prefix_rows_train_their_demonstration_tokens(tiny_model_dir, arith_data_dir, tmp_path, capsys):
    ckpt = tmp_path / "trapo"
    over = base_overrides(tiny_model_dir, arith_data_dir, ckpt, steps=2, reward=INDEX_REWARD) + [
        "upge=trapo", "hpt.gate.strategy=never", "hpt.loss.rollout.const_len=256", "hpt.loss.demo.const_len=256",
        "trainer.save_freq=-1", "actor_rollout_ref.rollout.n=4", STAGES]
    metrics = run_main(over, tmp_path / "trapo.jsonl", timeout=900)
    steps = [m for m in metrics if "hpt/questions" in m]
    assert len(steps) == 2
    for m in steps:
        failing = round(m["hpt/questions"] * (1 - m["hpt/pass_rate/mean"]))  # odd indices: none correct
        assert 0 < failing < m["hpt/questions"]
        assert m["hpt/stages/prefix_rows"] == 2 * failing  # a 50 % row and a full-demonstration row each
        assert m["hpt/stages/prefix_tokens"] >= m["hpt/stages/prefix_rows"]
        assert m["hpt/gen/rows_skipped"] == 0 and m["hpt/rows/demo"] == 0  # no SFT row: the gate never
        # the demo arm trained the prefix tokens (TrSFT), the rollout arm the generated ones
        assert 0 < m["actor/hpt/demo_token_share"] < 1
        assert math.isfinite(m["actor/hpt/sft/loss"]) and math.isfinite(m["actor/grad_norm"])
    with capsys.disabled():
        print(f"\n[trapo] prefix rows {[m['hpt/stages/prefix_rows'] for m in steps]}, prefix tokens "
              f"{[m['hpt/stages/prefix_tokens'] for m in steps]}, demo-arm token share "
              f"{[round(m['actor/hpt/demo_token_share'], 3) for m in steps]}")
