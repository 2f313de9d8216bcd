"""End to end on CPU: verl's RayPPOTrainer (through the HPT recipe) with the tiny model.

Each test launches ``python -m recipe.hpt.main_hpt`` exactly as a user would (own Ray cluster,
FSDP2 worker on the `cpu` platform, `hf` rollout server, reward loop), then checks the logged
metrics and the saved checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.utils import REPO, base_overrides, finite, run_main

PARITY_REWARD = str(REPO / "tests/assets/parity_reward.py")
pytestmark = pytest.mark.e2e


def _hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no safetensors in {folder}"
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def test_grpo_steps_change_weights(tiny_model_dir, arith_data_dir, tmp_path):
    """2 plain GRPO steps (gate `never`, `grpo` loss preset): weights move, metrics finite."""
    ckpt = tmp_path / "ckpt"
    metrics = run_main(
        base_overrides(tiny_model_dir, arith_data_dir, ckpt, steps=2, reward=PARITY_REWARD)
        + ["hpt.gate.strategy=never", "upge=grpo", "algorithm.norm_adv_by_std_in_grpo=true",
           "trainer.save_freq=2", "actor_rollout_ref.actor.checkpoint.save_contents=[model,hf_model]"],
        tmp_path / "metrics.jsonl",
    )
    steps = [m for m in metrics if "actor/pg_loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        for key in ("actor/pg_loss", "actor/grad_norm", "critic/score/mean", "timing_s/step", "timing_s/gen"):
            assert finite(m[key]), (key, m.get(key))
        assert m["hpt/rows/demo"] == 0 and m["hpt/sft_question_share"] == 0.0
    assert any(m["actor/grad_norm"] > 0 for m in steps)

    before = _hf_weights(Path(tiny_model_dir))
    after = _hf_weights(ckpt / "global_step_2/actor/huggingface")
    changed = [k for k in after if k in before and not torch.allclose(before[k], after[k].to(before[k].dtype))]
    assert changed, "no parameter changed after 2 GRPO steps"


def test_hpt_steps_use_both_arms(tiny_model_dir, arith_data_dir, tmp_path):
    """3 HPT steps with γ = 2/4: some questions go to SFT, some to RL, both arms train."""
    ckpt = tmp_path / "ckpt"
    metrics = run_main(
        base_overrides(tiny_model_dir, arith_data_dir, ckpt, steps=3, reward=PARITY_REWARD)
        + ["hpt.gate.gamma=0.5", "trainer.save_freq=1"],
        tmp_path / "metrics.jsonl",
    )
    steps = [m for m in metrics if "actor/pg_loss" in m]
    assert len(steps) == 3
    for m in steps:
        share = m["hpt/sft_question_share"]
        # share is exactly (#questions with <= 2 of 4 correct) / 8, as the demo rows show
        assert share == m["hpt/rows/demo"] / 8
        assert m["hpt/rows/rollout"] == 4 * round((1 - share) * 8)
        assert finite(m["actor/loss"]) and finite(m["actor/grad_norm"])
    mixed = [m for m in steps if 0.0 < m["hpt/sft_question_share"] < 1.0]
    assert mixed, [m["hpt/sft_question_share"] for m in steps]
    m = mixed[0]
    assert m["actor/hpt/sft/nll"] > 0.0  # demonstration NLL of an untrained model is ~ln(260)
    # The RL arm ran on rollout rows. Its loss *value* may be exactly 0: with the release loss
    # (-Â·ratio summed over tokens, ratio = 1 on-policy) and the group-mean baseline it is
    # -Σ_i Â_i·|τ_i| / const, which vanishes when all of a group's rollouts hit the length limit.
    assert m["hpt/rows/rollout"] > 0 and finite(m["actor/hpt/rl/pg_loss"])
    assert 0.0 < m["actor/hpt/demo_token_share"] < 1.0
    assert m["actor/grad_norm"] > 0.0

    state = json.loads((ckpt / "global_step_3" / "hpt_state.json").read_text())
    assert state["questions"] == 24 and state["steps"] == 3
    total_gated = sum(round(s["hpt/sft_question_share"] * 8) for s in steps)
    assert state["gated"] == total_gated

    # Resume: 2 steps in a fresh directory, then continue to step 3 from its checkpoint.
    ckpt2 = tmp_path / "ckpt_resume"
    run_main(base_overrides(tiny_model_dir, arith_data_dir, ckpt2, steps=2, reward=PARITY_REWARD)
             + ["hpt.gate.gamma=0.5", "trainer.save_freq=1"], tmp_path / "m_a.jsonl")
    resumed = run_main(base_overrides(tiny_model_dir, arith_data_dir, ckpt2, steps=3, reward=PARITY_REWARD)
                       + ["hpt.gate.gamma=0.5", "trainer.save_freq=1"], tmp_path / "m_b.jsonl")
    assert [m["step"] for m in resumed if "actor/pg_loss" in m] == [3]
    state2 = json.loads((ckpt2 / "global_step_3" / "hpt_state.json").read_text())
    # Same data order as the uninterrupted run, and the gate statistics carried over.
    assert state2["batch_indices"]["3"] == state["batch_indices"]["3"]
    assert state2["batch_indices"]["1"] == state["batch_indices"]["1"]
    assert state2["questions"] == 24 and state2["steps"] == 3


def test_sft_only_baseline_generates_nothing(tiny_model_dir, arith_data_dir, tmp_path):
    """gate `always` + `sft` preset: every question trains on its demonstration, no rollouts."""
    metrics = run_main(
        base_overrides(tiny_model_dir, arith_data_dir, tmp_path / "ckpt", steps=2, reward=PARITY_REWARD)
        + ["hpt.gate.strategy=always", "upge=sft", "actor_rollout_ref.rollout.n=1",
           "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8"],
        tmp_path / "metrics.jsonl",
    )
    steps = [m for m in metrics if "actor/pg_loss" in m]
    assert len(steps) == 2
    for m in steps:
        assert m["hpt/sft_question_share"] == 1.0 and m["hpt/rows/demo"] == 8 and m["hpt/rows/rollout"] == 0
        assert m["actor/hpt/sft/nll"] > 0.0 and finite(m["actor/grad_norm"])
        # the demonstration stand-in answered instead of the rollout server
        assert any(k.endswith("hpt/demo_rollout_s") for k in m), sorted(k for k in m if "timing" in k)
