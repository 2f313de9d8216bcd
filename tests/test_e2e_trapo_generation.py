"""TRAPO's generation side through verl's trainer and its agent-loop rollout (issue 16), on CPU.

Staged generation with a ``continue_with_prefix`` stage: 2 plain rollouts per question, then a question
with 0 correct of 2 draws its other 2 rows continuing the first half of its demonstration (verl's agent
loop under ``hpt_prefix_agent``, the ``hf`` rollout). The verifier fixes every question's outcome by its
dataset index (even: all correct, odd: none), so exactly the odd questions get prefix rows. The staged
manager checks that each prefix row's response starts with the demonstration prefix it was sent (it
raises otherwise), so a completed run also shows that the prefix reached the response through verl.
Until the loss side reads ``hpt_prefix_mask``, prefix rows train as ordinary rollouts.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e_utils import base_overrides, run_main

INDEX_REWARD = str(Path(__file__).resolve().parent / "assets/index_parity_reward.py")
STAGES = "hpt.stages=[{rollouts:2},{rollouts:2,max_correct:0,action:continue_with_prefix,prefix:0.5}]"


def test_prefix_stage_draws_demonstration_prefix_rows(tiny_model_dir, arith_data_dir, tmp_path):
    ckpt = tmp_path / "trapo_gen"
    over = base_overrides(tiny_model_dir, arith_data_dir, ckpt, steps=2, reward=INDEX_REWARD) + [
        "upge=hpt", "hpt.gate.gamma=0.0", "trainer.save_freq=-1", "actor_rollout_ref.rollout.n=4", STAGES]
    metrics = run_main(over, tmp_path / "trapo_gen.jsonl", timeout=900)
    steps = [m for m in metrics if "hpt/questions" in m]
    assert len(steps) == 2
    for m in steps:
        odd = round(m["hpt/sft_question_share"] * m["hpt/questions"])  # 0 correct: the odd-index questions
        assert 0 < odd < m["hpt/questions"]
        assert m["hpt/stages/prefix_rows"] == 2 * odd > 0
        assert m["hpt/stages/prefix_tokens"] >= m["hpt/stages/prefix_rows"]  # at least one token each
        assert m["hpt/gen/rows_skipped"] == 0  # every slot drawn, none stopped
