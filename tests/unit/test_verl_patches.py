"""The upstream contracts behind ``verl_ext/verl_patches.py``: each test fails when verl changes one.

Every patch of verl lives in that module (``git grep`` for the upstream names finds them there
only; :func:`test_no_verl_patch_outside_the_patch_module` keeps it so).
"""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import inspect
import subprocess

import pytest
import torch

from verl_ext import verl_patches

REPO = TESTS_REPO


def test_written_for_the_installed_verl():
    import verl

    assert verl.__version__ == verl_patches.VERL_VERSION
    assert verl_patches.check_verl_version() is True


# ------------------------------------------------------------------ 1. rollout adapter registry
def test_rollout_adapter_registry_is_the_dict_get_rollout_class_reads():
    from verl.workers.rollout import base

    assert isinstance(base._ROLLOUT_REGISTRY, dict)
    assert ("vllm", "async") in base._ROLLOUT_REGISTRY  # keyed (rollout.name, mode), values are FQDNs
    src = inspect.getsource(base.get_rollout_class)
    assert "_ROLLOUT_REGISTRY[(rollout_name, mode)]" in src
    assert list(inspect.signature(base.get_rollout_class).parameters) == ["rollout_name", "mode"]


def test_hf_adapter_resolves_through_verl():
    import verl_ext.plugins  # noqa: F401  (performs the registration)
    from verl.workers.rollout.base import get_rollout_class
    from verl_ext.rollout.hf_adapter import HFServerAdapter

    assert get_rollout_class("hf", "async") is HFServerAdapter


def test_register_rollout_adapter_refuses_a_verl_without_the_dict(monkeypatch):
    from verl.workers.rollout import base

    monkeypatch.delattr(base, "_ROLLOUT_REGISTRY")
    with pytest.raises(RuntimeError, match="_ROLLOUT_REGISTRY is gone"):
        verl_patches.register_rollout_adapter("x", "a.B")


# ------------------------------------------------------------------ 2. gloo process group on CPU
def test_process_group_default_backend_is_the_one_the_patch_replaces():
    import verl.utils.distributed as dist_utils
    import verl.workers.engine_workers as workers

    fn = dist_utils.initialize_global_process_group_ray
    fn = getattr(fn, "__wrapped__", fn)
    src = inspect.getsource(dist_utils)
    assert 'backend = backend or f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"' in src
    assert list(inspect.signature(fn).parameters) == ["timeout_second", "backend"]
    # the workers bind it by name and call it without a backend: the default is what runs
    worker_src = inspect.getsource(workers)
    assert "from verl.utils.distributed import initialize_global_process_group_ray" in worker_src
    assert "initialize_global_process_group_ray(timeout_second=None)" in worker_src


def test_gloo_patch_defaults_the_backend_and_rebinds_the_workers(monkeypatch):
    import verl.utils.distributed as dist_utils
    import verl.workers.engine_workers as workers

    calls = []

    def original(timeout_second=None, backend=None):
        calls.append(backend)

    monkeypatch.setattr(dist_utils, "initialize_global_process_group_ray", original)
    monkeypatch.setattr(workers, "initialize_global_process_group_ray", original)
    verl_patches.patch_gloo_process_group()
    workers.initialize_global_process_group_ray(timeout_second=None)
    dist_utils.initialize_global_process_group_ray(backend="cpu:gloo")  # an explicit backend is kept
    assert calls == ["gloo", "cpu:gloo"]
    patched = dist_utils.initialize_global_process_group_ray
    verl_patches.patch_gloo_process_group()  # idempotent
    assert dist_utils.initialize_global_process_group_ray is patched


# ------------------------------------------------------------------ 3. optimizer-step guard
def test_engine_train_batch_calls_the_instance_methods_the_guard_wraps():
    from verl.workers.engine.base import BaseEngine

    src = inspect.getsource(BaseEngine.train_batch)
    fb, step = src.index("self.forward_backward_batch(data, loss_function, forward_only=False)"), \
        src.index("self.optimizer_step()")
    assert fb < step
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    params = list(inspect.signature(FSDPEngine.forward_backward_batch).parameters)
    assert params[:4] == ["self", "data", "loss_function", "forward_only"]
    assert list(inspect.signature(FSDPEngine.optimizer_step).parameters) == ["self"]


def test_fsdp_optimizer_step_has_the_branches_the_guard_repeats():
    """``_total_grad_norm`` mirrors these: unscale before clip (so the guard, which runs before,
    divides by the scale), FSDP1 / FSDP2 / plain clip, DTensor gathered, scaler skips non-finite."""
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    src = inspect.getsource(FSDPEngine.optimizer_step)
    order = ["scaler.unscale_(self.optimizer)", "isinstance(self.module, FSDP)",
             "self.module.clip_grad_norm_(", "isinstance(self.module, FSDPModule)", "fsdp2_clip_grad_norm_(",
             "torch.nn.utils.clip_grad_norm_(", "grad_norm.full_tensor()", "scaler.step(self.optimizer)",
             "if not torch.isfinite(grad_norm):", "self.optimizer.zero_grad()", "self.optimizer.step()"]
    positions = [src.index(s) for s in order]
    assert positions == sorted(positions), dict(zip(order, positions))


def test_guard_norm_equals_verls_pre_clip_norm_on_a_plain_module():
    from tests.unit.hpt.test_reliability import _data, _mse, _StubEngine

    eng = _StubEngine()
    _mse(eng.module, _data(scale=50.0)).backward()
    ours = float(verl_patches._total_grad_norm(eng))
    grads = [p.grad.clone() for p in eng.module.parameters()]
    verls = float(eng.optimizer_step())  # verl's FSDPEngine.optimizer_step, unbound: clips, returns the norm
    assert ours == pytest.approx(verls, rel=1e-6) and ours > eng.optimizer_config.clip_grad
    assert torch.allclose(torch.cat([g.flatten() for g in grads]).norm(), torch.tensor(ours))


def test_no_verl_patch_outside_the_patch_module():
    """The upstream names the patches touch appear in project code only in verl_patches.py."""
    patterns = ["_ROLLOUT_REGISTRY", "initialize_global_process_group_ray", ".optimizer_step =",
                ".forward_backward_batch =", ".train_batch =", ".compute_data_metrics ="]
    for pattern in patterns:
        out = subprocess.run(["git", "grep", "--untracked", "-l", "-F", pattern, "--", "*.py", ":!tests/"],
                             cwd=REPO, capture_output=True, text=True).stdout.split()
        assert out == ["verl_ext/verl_patches.py"], (pattern, out)


# ------------------------------------------------------------------ staged generation's chunk dispatch
def test_agent_loop_manager_dispatch_is_the_one_the_staged_manager_repeats():
    """``StagedRolloutManager._generate`` dispatches the workers' chunks as verl's manager does and
    only adds the key alignment verl's concatenation lacks across chunks."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopManager, AgentLoopWorker

    src = inspect.getsource(AgentLoopManager.generate_sequences)
    assert "prompts.chunk(len(self.agent_loop_workers))" in src
    assert "worker.generate_sequences.remote(chunk)" in src
    assert "DataProto.concat(outputs)" in src
    assert 'output.meta_info.pop("metrics")' in src and "self._performance_metrics(metrics, output)" in src
    assert list(inspect.signature(AgentLoopManager._performance_metrics).parameters) == ["self", "metrics", "output"]
    # within a chunk verl fills missing extra fields with None; across chunks it does not
    post = inspect.getsource(AgentLoopWorker._postprocess)
    assert "input.extra_fields.get(key) for input in inputs" in post


def test_staged_dispatch_aligns_extra_fields_that_verls_concat_refuses():
    """Two chunks with different extra fields (a plain row's and a whole-demonstration row's): verl's
    concatenation raises, the staged manager's alignment makes them one batch with None filled in."""
    import numpy as np
    from verl import DataProto

    from verl_ext.hpt.staging.manager import _align_non_tensor_keys

    def chunk(**fields):
        return DataProto.from_dict(tensors={"x": torch.zeros(1, 2)},
                                   non_tensors={k: np.asarray([v], dtype=object) for k, v in fields.items()})

    plain, demo = chunk(global_steps=3, num_cached_tokens=0), chunk(hpt_prefix_len=5)
    with pytest.raises(AssertionError, match="not present"):
        DataProto.concat([plain, demo])
    _align_non_tensor_keys([plain, demo])
    out = DataProto.concat([plain, demo])
    assert list(out.non_tensor_batch["hpt_prefix_len"]) == [None, 5]
    assert list(out.non_tensor_batch["global_steps"]) == [3, None]


# ------------------------------------------------------------------ 4. verl's data metrics of the rollouts
def test_fit_logs_the_module_level_compute_data_metrics_after_the_update():
    """``fit`` looks ``compute_data_metrics`` up in its module at call time (the patch rebinds that
    name) and calls it on the batch that went through the hook, after the update."""
    from verl.trainer.ppo import ray_trainer

    src = inspect.getsource(ray_trainer.RayPPOTrainer.fit)
    call = "metrics.update(compute_data_metrics(batch=batch, use_critic=self.use_critic))"
    assert call in src
    assert src.index("self._balance_batch(batch, metrics=metrics)") < src.index("self._update_actor(batch)") \
        < src.index(call) < src.index("logger.log(data=metrics, step=self.global_steps)")
    assert "compute_data_metrics," in inspect.getsource(ray_trainer).split("class ")[0]  # a module-level import


def test_rollout_data_metrics_patch_overrides_only_batches_that_carry_them():
    import numpy as np
    from verl import DataProto
    from verl.trainer.ppo import ray_trainer

    verl_patches.install_rollout_data_metrics()
    verl_patches.install_rollout_data_metrics()  # idempotent
    assert getattr(ray_trainer.compute_data_metrics, verl_patches._METRICS_PATCHED_FLAG)
    scores = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    ones = torch.ones(2, 2, dtype=torch.long)
    batch = DataProto.from_dict(tensors={
        "token_level_scores": scores, "token_level_rewards": scores, "advantages": scores, "returns": scores,
        "prompts": ones, "responses": ones, "response_mask": ones,
        "attention_mask": torch.ones(2, 4, dtype=torch.long)},
        non_tensors={"uid": np.array(["a", "b"], dtype=object)})
    assert ray_trainer.compute_data_metrics(batch=batch, use_critic=False)["critic/score/mean"] == 0.5
    batch.meta_info[verl_patches.ROLLOUT_DATA_METRICS] = {"critic/score/mean": 0.125}
    out = ray_trainer.compute_data_metrics(batch=batch, use_critic=False)
    assert out["critic/score/mean"] == 0.125 and out["critic/advantages/mean"] == 0.25  # verl's own
