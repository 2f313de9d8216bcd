"""Issue 13: the HPT step is never silent and stops at the right moment.

Bug 1: the gate ran only when the batch held ``rm_scores`` at verl's ``_balance_batch`` hook; without
them the step silently trained plain GRPO. Now a set-up that scores later is refused at start-up and
the hook raises.

Bug 2: the stop after ``hpt.max_consecutive_skips`` was raised from ``_get_gen_batch``, which verl's
``_validate`` also calls: on a ``test_freq`` step the run stopped inside validation, before that
step's metrics were logged. Now it is raised from ``_start_profiling``, which ``fit`` calls first in
every training step and validation never calls.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo.ray_trainer import RayPPOTrainer

from tests.unit.hpt.test_gate import make_rollout_batch
from tests.unit.hpt.test_gpu_path import _trainer
from tests.unit.hpt.test_reliability import _account, _bare_trainer
from recipe.hpt.hpt_ray_trainer import HPTStopError
from verl_ext.checks.settings import unsupported_settings


def _base(**overrides):
    cfg = OmegaConf.create({
        "trainer": {"balance_batch": True},
        "algorithm": {"adv_estimator": "grpo", "rollout_correction": {"bypass_mode": False}},
        "reward": {"reward_model": {"enable": False, "enable_resource_pool": False}},
    })
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


# ------------------------------------------------------------------ bug 1: no silent GRPO
def test_colocated_reward_model_is_refused_at_start_up():
    assert unsupported_settings(_base()) == []
    problems = unsupported_settings(_base(**{"reward.reward_model.enable": True}))
    assert len(problems) == 1
    assert "reward.reward_model.enable_resource_pool=false" in problems[0] and "rm_scores" in problems[0]
    # its own resource pool: verl scores inside the agent loop, before the hook
    assert unsupported_settings(_base(**{"reward.reward_model.enable": True,
                                         "reward.reward_model.enable_resource_pool": True})) == []


def test_a_batch_without_scores_at_the_hook_raises_instead_of_training_plain_grpo(char_tok):
    batch = make_rollout_batch([(4, 0), (4, 1), (4, 3), (4, 4)], seed=11)
    batch.batch.pop("rm_scores")
    t = _trainer(char_tok)
    with pytest.raises(RuntimeError, match="without rm_scores"):
        t._balance_batch(batch, {})


def test_the_hook_refuses_a_batch_it_already_merged(char_tok):
    batch = make_rollout_batch([(4, 0), (4, 4)], seed=12)
    t = _trainer(char_tok)
    t._balance_batch(batch, {})
    with pytest.raises(RuntimeError, match="already merged"):
        t._balance_batch(batch, {})


# ------------------------------------------------------------------ bug 2: stop after logging
def test_validation_on_the_failing_step_still_runs_and_the_next_step_stops(char_tok):
    t = _bare_trainer(char_tok, max_skips=2)
    _account(t, [1, 1])  # two skipped optimizer steps in a row: the stop is armed
    assert t._stop_reason is not None
    # verl's _validate on this (test_freq) step builds its generation batch: it must not stop there
    batch = make_rollout_batch([(2, 1)], seed=13)
    gen = t._get_gen_batch(batch)
    assert isinstance(gen, DataProto) and "uid" in gen.non_tensor_batch
    # the next training step's first call stops the run
    with pytest.raises(HPTStopError, match="hpt.max_consecutive_skips=2"):
        t._start_profiling(False)


def test_verl_calls_start_profiling_once_per_training_step_and_not_in_validation():
    """The contract the stop rides on (verl 0.9.1): ``fit`` calls ``_start_profiling`` at the top of
    each step, before ``_get_gen_batch``, and logs after ``_validate``; ``_validate`` never calls it."""
    fit = inspect.getsource(RayPPOTrainer.fit)
    loop = fit[fit.index("for batch_dict in self.train_dataloader"):]
    assert loop.count("self._start_profiling(") == 1
    assert loop.index("self._start_profiling(") < loop.index("self._get_gen_batch(")
    assert loop.index("self._validate()") < loop.index("logger.log(data=metrics")
    assert "_start_profiling" not in inspect.getsource(RayPPOTrainer._validate)
    assert "_get_gen_batch" in inspect.getsource(RayPPOTrainer._validate)  # why it cannot host the stop


def test_no_stop_armed_means_profiling_is_verls(char_tok, monkeypatch):
    calls = []
    monkeypatch.setattr(RayPPOTrainer, "_start_profiling", lambda self, do: calls.append(do))
    t = _bare_trainer(char_tok)
    t._start_profiling(True)
    assert calls == [True]
    np.testing.assert_equal(t._stop_reason, None)


# ------------------------------------------------------------------ settings refused at start-up
@pytest.mark.parametrize("key, value, names", [
    ("algorithm.adv_estimator", "gae", ["algorithm.adv_estimator=gae", "critic"]),
    ("algorithm.adv_estimator", "remax", ["algorithm.adv_estimator=remax", "second"]),
    ("critic.enable", True, ["critic.enable=true", "value model"]),
    ("distillation.enabled", True, ["distillation.enabled=true", "hpt_actor_loss"]),
    ("actor_rollout_ref.actor.policy_loss.loss_mode", "gspo",
     ["actor_rollout_ref.actor.policy_loss.loss_mode=gspo", "hpt/loss="]),
    ("actor_rollout_ref.actor.use_prefix_grouper", True, ["use_prefix_grouper=true", "uid"]),
    ("actor_rollout_ref.actor.shuffle", True, ["actor_rollout_ref.actor.shuffle=true", "shuffle=false"]),
])
def test_settings_the_hpt_loss_cannot_honour_are_refused_with_the_reason(key, value, names):
    problems = unsupported_settings(_base(**{key: value}))
    assert len(problems) == 1, problems
    for name in names:
        assert name in problems[0]


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_plus_plus"])
def test_outcome_estimators_and_verl_defaults_are_accepted(estimator):
    cfg = _base(**{"algorithm.adv_estimator": estimator, "critic.enable": None, "distillation.enabled": False,
                   "actor_rollout_ref.actor.policy_loss.loss_mode": "vanilla",
                   "actor_rollout_ref.actor.use_prefix_grouper": False, "actor_rollout_ref.actor.shuffle": False})
    assert unsupported_settings(cfg) == []


def test_startup_checks_refuse_them_before_ray_starts(monkeypatch):
    """The one place the settings are checked (verl_ext.checks.startup_checks, called by run_hpt)."""
    from verl_ext.checks import startup_checks

    cfg = _base(**{"actor_rollout_ref.actor.shuffle": True})
    monkeypatch.setattr("verl_ext.hpt.config.HPTConfig.from_config", classmethod(lambda cls, c: None))
    monkeypatch.setattr("verl_ext.checks.environment.check_attention_implementation", lambda c: None)
    with pytest.raises(ValueError, match="actor_rollout_ref.actor.shuffle=true"):
        startup_checks(cfg)




@pytest.mark.parametrize("temperature", [0, 0.0, -1.0])
def test_a_zero_training_temperature_is_refused_with_the_fix(temperature):
    """verl divides the actor's logits by the rollout temperature in its log-prob pass (clamped to 1e-8):
    temperature 0 trains on logits x 1e8 instead of sampling greedily."""
    problems = unsupported_settings(_base(**{"actor_rollout_ref.rollout.temperature": temperature}))
    assert len(problems) == 1 and "top_k=1" in problems[0] and "actor_rollout_ref.rollout.temperature" in problems[0]
    assert unsupported_settings(_base(**{"actor_rollout_ref.rollout.temperature": 0.6})) == []


def test_cpu_worker_threads_share_the_cores_between_the_nodes_ranks():
    """Ray starts the FSDP worker with OMP_NUM_THREADS=1; on the cpu platform it takes its share of the
    cores instead (all of them with one rank), or HPT_CPU_WORKER_THREADS."""
    from recipe.hpt.hpt_worker import cpu_threads

    assert cpu_threads({}, cores=2) == 2
    assert cpu_threads({"RAY_LOCAL_WORLD_SIZE": "2"}, cores=2) == 1
    assert cpu_threads({"RAY_LOCAL_WORLD_SIZE": "4"}, cores=2) == 1
    assert cpu_threads({"RAY_LOCAL_WORLD_SIZE": "2"}, cores=16) == 8
    assert cpu_threads({"HPT_CPU_WORKER_THREADS": "3", "RAY_LOCAL_WORLD_SIZE": "2"}, cores=2) == 3


@pytest.mark.parametrize("settings,fragment", [
    ({"actor_rollout_ref.model.lora.rank": 8}, "lora_rank=0"),
    ({"actor_rollout_ref.model.lora_rank": 8, "actor_rollout_ref.rollout.checkpoint_engine.backend": "nccl"},
     "#7495"),
    ({"actor_rollout_ref.model.lora_rank": 8, "actor_rollout_ref.rollout.name": "hf",
      "actor_rollout_ref.model.target_parameters": ["mlp.experts.gate_up_proj"]}, "target_parameters"),
])
def test_lora_settings_verl_gets_silently_wrong_are_refused(settings, fragment):
    problems = unsupported_settings(_base(**settings))
    assert len(problems) == 1 and fragment in problems[0], problems


@pytest.mark.parametrize("settings", [
    {"actor_rollout_ref.model.lora_rank": 8},  # vLLM (verl's default rollout), adapter mode, naive push
    # the hf rollout in adapter mode: it merges the pushed adapter itself (tests/unit/rollout/test_hf_lora.py)
    {"actor_rollout_ref.model.lora_rank": 8, "actor_rollout_ref.rollout.name": "hf"},
    {"actor_rollout_ref.model.lora_rank": 8, "actor_rollout_ref.rollout.name": "hf",
     "actor_rollout_ref.model.lora.merge": True},
    {"actor_rollout_ref.model.lora_rank": 8, "actor_rollout_ref.rollout.checkpoint_engine.backend": "nccl",
     "actor_rollout_ref.model.lora.merge": True},
])
def test_lora_settings_that_work_are_accepted(settings):
    assert unsupported_settings(_base(**settings)) == []
