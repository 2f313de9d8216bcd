"""Every change hpt-verl makes to verl beyond its public registries and hooks, in one place.

Everything else plugs in through what verl offers for it: the platform registry (``cpu``), the
rollout-replica registry (``hf``), the policy-loss registry (``upge*``), the actor's ``set_loss_fn``
and the trainer's overridable methods (``recipe/hpt/hpt_ray_trainer.py``). The four patches below
have no public hook in verl 0.9.1. Each names the upstream behaviour it relies on; the module
checks the verl version it was written for (:data:`VERL_VERSION`) and ``tests/unit/test_verl_patches.py``
fails when one of those upstream contracts changes (it reads verl's source and signatures).

1. :func:`register_rollout_adapter` -- ``verl.workers.rollout.base._ROLLOUT_REGISTRY``.
   ``get_rollout_class(name, mode)`` resolves the worker-side rollout adapter from this private
   dict; verl has no function that adds to it (the server side has ``RolloutReplicaRegistry``).
   Used for ``rollout.name=hf`` (``verl_ext.plugins``).
2. :func:`patch_gloo_process_group` -- ``verl.utils.distributed.initialize_global_process_group_ray``.
   Its default backend is ``f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"``, which on the
   ``cpu`` platform is ``"cpu:gloo,cpu:gloo"``: torch rejects it ("Duplicate device type cpu").
   The patched function defaults to plain ``gloo``. CPU platform only.
3. :func:`install_step_guard` -- instance attributes over ``forward_backward_batch``,
   ``optimizer_step`` and ``train_batch`` of verl's ``FSDPEngine``. ``Engine.train_batch`` calls
   ``self.forward_backward_batch`` then ``self.optimizer_step`` and verl offers no callback between
   backward and the optimizer step; HPT needs one there to skip a step on a non-finite loss or a
   pre-clip gradient norm above ``hpt.skip_grad_norm_above`` (the release's ``_optimizer_step``).
   :func:`_total_grad_norm` repeats the three norm branches of ``FSDPEngine.optimizer_step``
   (FSDP1 / FSDP2 / plain module) with ``max_norm = inf`` and reads the norm of the *unscaled*
   gradients under fp16 (verl unscales inside ``optimizer_step``, after the guard has run).
4. :func:`install_rollout_data_metrics` -- ``verl.trainer.ppo.ray_trainer.compute_data_metrics``.
   ``fit`` computes verl's data metrics (``critic/score/*``, ``response_length/*``, ...) on the
   trained batch after the update and logs them with no hook in between. On HPT's merged batch
   they would mix the RL-gated rollouts with the demonstration rows, and rise whenever the gate
   sends more questions to SFT. The patched name returns verl's values updated with the batch's
   ``meta_info[ROLLOUT_DATA_METRICS]`` (the same metrics of the step's sampled rollouts, which the
   HPT trainer puts there in its ``_balance_batch`` hook); a batch without it is untouched.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Optional

import torch

logger = logging.getLogger(__name__)

VERL_VERSION = "0.9.1"  # the verl release whose internals the patches below were written against

# Per-optimizer-step flags of the step guard (0/1; verl prefixes them with actor/ in the metrics).
SKIP_NONFINITE = "hpt/skip_nonfinite"
SKIP_GRAD_NORM = "hpt/skip_grad_norm"
SKIP_OVERFLOW = "hpt/fp16_overflow"  # fp16 only: the GradScaler skipped the step and lowered its scale


def check_verl_version() -> bool:
    """True when the installed verl is :data:`VERL_VERSION`; warns otherwise (the patches may no
    longer match verl's internals: run ``tests/unit/test_verl_patches.py``)."""
    import verl

    found = getattr(verl, "__version__", "unknown")
    if found != VERL_VERSION:
        warnings.warn(f"hpt-verl patches verl internals written for verl {VERL_VERSION}, found {found}: "
                      "run tests/unit/test_verl_patches.py before trusting a run", stacklevel=2)
        return False
    return True


# ------------------------------------------------------------------ 1. rollout adapter registry
def register_rollout_adapter(name: str, fqdn: str, mode: str = "async") -> None:
    """Make ``get_rollout_class(name, mode)`` return the class at ``fqdn`` (imported lazily)."""
    from verl.workers.rollout import base

    registry = getattr(base, "_ROLLOUT_REGISTRY", None)
    if not isinstance(registry, dict):
        raise RuntimeError("verl.workers.rollout.base._ROLLOUT_REGISTRY is gone: hpt-verl's rollout "
                           f"registration (verl_ext/verl_patches.py) was written for verl {VERL_VERSION}")
    registry[(name, mode)] = fqdn


# ------------------------------------------------------------------ 2. gloo process group on CPU
_PATCHED_FLAG = "_hpt_cpu_patched"


def patch_gloo_process_group() -> None:
    """Default ``initialize_global_process_group_ray``'s backend to ``gloo`` (see the module docstring).

    verl's workers import the function by name (``verl.workers.engine_workers``), so the module
    attribute is replaced and, when that module was already imported, its binding too.
    """
    import sys

    import verl.utils.distributed as dist_utils

    original = dist_utils.initialize_global_process_group_ray
    if getattr(original, _PATCHED_FLAG, False):
        return

    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    setattr(initialize_global_process_group_ray, _PATCHED_FLAG, True)
    dist_utils.initialize_global_process_group_ray = initialize_global_process_group_ray
    workers = sys.modules.get("verl.workers.engine_workers")
    if workers is not None and getattr(workers, "initialize_global_process_group_ray", None) is original:
        workers.initialize_global_process_group_ray = initialize_global_process_group_ray


# ------------------------------------------------------------------ 3. optimizer-step guard
def _total_grad_norm(engine) -> torch.Tensor:
    """Pre-clip global L2 gradient norm (collective under FSDP), without changing the gradients.

    Under fp16 verl's engine holds a ``GradScaler`` (``engine.scaler``) and the gradients are still
    multiplied by its scale S here: verl unscales them inside ``optimizer_step``, after this guard
    has run. ‖g/S‖ = ‖g‖/S, so the true norm is the scaled one divided by S, read without touching
    the scaler's state (calling ``scaler.unscale_`` here would make verl's own call raise).
    """
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.tensor import DTensor
    from verl.utils.fsdp_utils import FSDPModule, fsdp2_clip_grad_norm_

    # The same three branches as verl's FSDPEngine.optimizer_step, with max_norm = inf.
    params = [p for p in engine.module.parameters() if p.grad is not None]
    if isinstance(engine.module, FSDP):  # FSDP1: its own (collective) norm
        norm = engine.module.clip_grad_norm_(math.inf)
    elif not params:
        norm = torch.tensor(0.0)
    elif FSDPModule is not None and isinstance(engine.module, FSDPModule):  # FSDP2 (DTensor shards)
        norm = fsdp2_clip_grad_norm_(params, max_norm=math.inf)
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=math.inf)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    scaler = getattr(engine, "scaler", None)
    if scaler is not None and getattr(scaler, "is_enabled", lambda: True)():
        norm = norm / float(scaler.get_scale())
    return norm


def _any_rank(engine, flag: bool) -> bool:
    """True if ``flag`` is set on any data-parallel rank (all ranks must take the same decision,
    or the FSDP shards would drift apart)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    group = engine.get_data_parallel_group() if hasattr(engine, "get_data_parallel_group") else None
    if torch.distributed.get_world_size(group) == 1:
        return flag
    from verl.utils.device import get_device_id

    t = torch.tensor([1.0 if flag else 0.0], device=get_device_id())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=group)
    return bool(t.item() > 0)


def install_step_guard(engine, grad_norm_threshold: Optional[float] = None) -> None:
    """Wrap ``engine.forward_backward_batch``, ``optimizer_step`` and ``train_batch`` (instance
    attributes, so verl's ``Engine.train_batch`` calls the wrappers):

    - non-finite loss on any rank (any micro-batch) -> zero the gradients, skip the step;
    - otherwise, with a threshold: the pre-clip norm is computed first (unclipped, max_norm=inf);
      non-finite -> skip; finite and > threshold -> skip (the release's ``_optimizer_step``: 80
      in its Qwen script); else verl's own step (clip + ``optimizer.step()``);
    - without a threshold, verl's own step, which already skips (zero_grad, no ``step()``) on a
      non-finite norm; the returned norm tells whether it did.

    A skipped step never calls ``optimizer.step()``: parameters, AdamW ``exp_avg``/``exp_avg_sq``
    and ``step`` stay untouched. The learning-rate scheduler still advances once per training step
    (verl calls it separately; it is a function of the training step, not of the updates made).
    Each ``train_batch`` reports :data:`SKIP_NONFINITE`, :data:`SKIP_GRAD_NORM` and
    :data:`SKIP_OVERFLOW` (0/1) in its metrics.
    """
    original_step = engine.optimizer_step
    original_fb = engine.forward_backward_batch
    original_train = engine.train_batch
    state = {"loss_nonfinite": False, "last": None}
    engine._hpt_step_guard = state

    def forward_backward_batch(data, loss_function, forward_only=False):
        out = original_fb(data, loss_function, forward_only=forward_only)
        if not forward_only and isinstance(out, dict):
            losses = out.get("loss") or []
            vals = [float(x) for x in (losses if isinstance(losses, (list, tuple)) else [losses])]
            state["loss_nonfinite"] = state["loss_nonfinite"] or any(not math.isfinite(v) for v in vals)
        return out

    def _skip(reason: str, norm):
        engine.optimizer.zero_grad()
        state["last"] = reason
        return norm

    def optimizer_step():
        loss_bad = _any_rank(engine, state["loss_nonfinite"])
        state["loss_nonfinite"] = False
        if loss_bad:
            logger.warning("HPT: non-finite loss, skipping this optimizer step")
            return _skip("nonfinite", float("nan"))
        if grad_norm_threshold is not None:
            norm = _total_grad_norm(engine)
            if not torch.isfinite(norm) and getattr(engine, "scaler", None) is not None:
                # fp16 overflow: the scaler's own business. verl's step lets ``scaler.step`` skip
                # the update and ``scaler.update`` lower the scale, as every fp16 run does while
                # its scale calibrates; reported apart, not counted as a failure.
                original_step()
                state["last"] = "overflow"
                return norm
            if not torch.isfinite(norm):
                logger.warning("HPT: non-finite gradient norm %s, skipping this optimizer step", float(norm))
                return _skip("nonfinite", norm)
            if float(norm) > grad_norm_threshold:
                logger.warning("HPT: pre-clip grad norm %.2f > %.2f, skipping this optimizer step", float(norm),
                               grad_norm_threshold)
                return _skip("grad_norm", norm)
        norm = original_step()  # verl: clip, then zero_grad (non-finite) or optimizer.step()
        value = float(norm.item() if isinstance(norm, torch.Tensor) else norm)
        if math.isfinite(value):
            state["last"] = None
        else:  # with a scaler verl's step already let it skip and back off: an fp16 overflow
            state["last"] = "overflow" if getattr(engine, "scaler", None) is not None else "nonfinite"
        return norm

    def train_batch(data, loss_function):
        state["last"] = None
        outputs = original_train(data, loss_function)
        if isinstance(outputs, dict) and isinstance(outputs.get("metrics"), dict):
            # lists, like the per-micro-batch metrics verl gathers over DP and flattens
            outputs["metrics"][SKIP_NONFINITE] = [1.0 if state["last"] == "nonfinite" else 0.0]
            outputs["metrics"][SKIP_GRAD_NORM] = [1.0 if state["last"] == "grad_norm" else 0.0]
            outputs["metrics"][SKIP_OVERFLOW] = [1.0 if state["last"] == "overflow" else 0.0]
        return outputs

    engine.forward_backward_batch = forward_backward_batch
    engine.optimizer_step = optimizer_step
    engine.train_batch = train_batch


# ------------------------------------------------------------------ 4. verl's data metrics of the rollouts
ROLLOUT_DATA_METRICS = "hpt_rollout_data_metrics"  # batch.meta_info key: {verl metric key: the rollouts' value}
_METRICS_PATCHED_FLAG = "_hpt_rollout_metrics_patched"


def install_rollout_data_metrics() -> None:
    """Make ``fit``'s ``compute_data_metrics`` report the sampled rollouts' values where the batch
    carries them (see the module docstring). Idempotent; a no-op for batches of other trainers."""
    from verl.trainer.ppo import ray_trainer

    original = ray_trainer.compute_data_metrics
    if getattr(original, _METRICS_PATCHED_FLAG, False):
        return

    def compute_data_metrics(batch, use_critic: bool = True):
        out = original(batch=batch, use_critic=use_critic)
        out.update(batch.meta_info.get(ROLLOUT_DATA_METRICS) or {})
        return out

    setattr(compute_data_metrics, _METRICS_PATCHED_FLAG, True)
    ray_trainer.compute_data_metrics = compute_data_metrics
