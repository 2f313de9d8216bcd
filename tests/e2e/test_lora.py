"""HPT with verl's LoRA (adapter mode) on the ``hf`` rollout: the rollout samples from the trained policy.

verl 0.9.1 pushes the frozen base once and then, after every update, only the adapter (lora_A/lora_B with
its peft config); the ``hf`` server merges it into its fp32 copy of the base. The evidence that the
rollout serves the trained policy is verl's own rollout-vs-actor mismatch metric
(``training/rollout_probs_diff_mean``: the actor's probabilities of the sampled tokens, before the
update, against the rollout's): tiny while the adapter moves, and large when the adapter pushes are
dropped (test-only fault injection, tests/fault_injection.py), the symptom of verl issue #7495. The run
starts from a non-zero adapter (``lora_adapter_path``): peft initialises lora_B at 0, where a policy
without its adapter would look right.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.e2e.utils import REPO, base_overrides, finite, run_main
from tests.fault_injection import LORA_FAULT_ENV

pytestmark = pytest.mark.e2e
PARITY_REWARD = str(REPO / "tests/assets/parity_reward.py")
MISMATCH = "training/rollout_probs_diff_mean"


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=16,
                                                  target_modules="all-linear", bias="none"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


def _run(tiny_model_dir, arith_data_dir, adapter_dir, tmp_path, fault=None):
    overrides = base_overrides(tiny_model_dir, arith_data_dir, tmp_path / "ckpt", steps=3, reward=PARITY_REWARD) + [
        "hpt.gate.gamma=0.25", "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora_alpha=16",
        "actor_rollout_ref.model.target_modules=all-linear", f"actor_rollout_ref.model.lora_adapter_path={adapter_dir}",
        "actor_rollout_ref.rollout.calculate_log_probs=true"]
    env = {}
    if fault:
        env = {"VERL_USE_EXTERNAL_MODULES": "tests.fault_injection", LORA_FAULT_ENV: fault,
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        metrics = run_main(overrides, tmp_path / "metrics.jsonl")
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return [m for m in metrics if "actor/pg_loss" in m]


def test_lora_adapter_reaches_the_hf_rollout_every_step(tiny_model_dir, arith_data_dir, adapter_dir, tmp_path):
    steps = _run(tiny_model_dir, arith_data_dir, adapter_dir, tmp_path)
    assert len(steps) == 3
    sampled = [m for m in steps if m.get("training/rollout_probs_diff_valid") == 1]
    print(f"\n[lora] {MISMATCH} per step: {[m.get(MISMATCH) for m in steps]}; demo rows "
          f"{[m['hpt/rows/demo'] for m in steps]}, rollout rows {[m['hpt/rows/rollout'] for m in steps]}, "
          f"grad norm {[round(m['actor/grad_norm'], 3) for m in steps]}")
    assert len(sampled) >= 2 and all(m[MISMATCH] < 1e-6 for m in sampled)
    assert any(m["hpt/rows/demo"] > 0 for m in steps) and any(m["hpt/rows/rollout"] > 0 for m in steps)
    assert all(finite(m["actor/grad_norm"]) and m["actor/grad_norm"] > 0 for m in steps)


@pytest.mark.parametrize("fault", ["all", "after_first"])
def test_a_lora_adapter_that_never_arrives_is_caught_by_the_mismatch(tiny_model_dir, arith_data_dir, adapter_dir,
                                                                     tmp_path, fault):
    steps = _run(tiny_model_dir, arith_data_dir, adapter_dir, tmp_path, fault=fault)
    sampled = [m for m in steps if m.get("training/rollout_probs_diff_valid") == 1]
    print(f"\n[lora, adapter pushes dropped: {fault}] {MISMATCH} per step: {[m.get(MISMATCH) for m in steps]}")
    if fault == "all":  # the rollout serves the base without the adapter from the first step
        assert sampled and all(m[MISMATCH] > 1e-4 for m in sampled)
    else:  # the first adapter arrived; the trained ones did not, so the gap opens as the adapter moves
        first, later = steps[0], [m for m in sampled if m["step"] > 1]
        assert first[MISMATCH] < 1e-6 and later and all(m[MISMATCH] > 1e-5 for m in later)
