"""verl's hybrid ``ActorRolloutRefWorker`` with the HPT loss and the optimizer-step guard.

verl builds ``self.loss_fn = partial(ppo_loss, config=actor_config)`` in ``init_model``; a
registered policy loss only ever sees old/new log-probs, advantages and the mask, so the
per-row demonstration flag HPT needs cannot reach it. The worker therefore swaps the whole
``loss_fn`` (verl's own ``set_loss_fn`` hook) for ``verl_ext.loss.actor_loss.hpt_actor_loss``
bound to the ``hpt.loss`` config. Every extra batch key (``hpt_is_demo`` ...) reaches it split
per micro-batch.

The step guard (:func:`install_step_guard`) wraps the engine's ``optimizer_step``: a non-finite
loss or gradient skips the optimizer step (gradients zeroed, the optimizer never called, so
parameters and AdamW moments/step counts stay as they were), and so does, as in the release, a
finite pre-clip gradient norm above ``hpt.skip_grad_norm_above``. Each optimizer step reports
``hpt/skip_nonfinite`` and ``hpt/skip_grad_norm`` (0/1) in its metrics; the trainer counts them
and stops the run after ``hpt.max_consecutive_skips`` non-finite skips in a row.

The worker only receives ``actor_rollout_ref``; the TaskRunner copies the user's ``hpt`` node to
``actor_rollout_ref.hpt`` for it (see ``main_hpt.HPTTaskRunner``).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Optional

import torch

import verl_ext.plugins  # noqa: F401  (registries are per process: register in the worker too)
from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.engine_workers import ActorRolloutRefWorker

logger = logging.getLogger(__name__)

# Test-only fault injection: poison the gradients with NaN on these optimizer steps of the worker
# process ("all", or 1-based ordinals "1,3"), to exercise the skip/stop path end to end.
FAULT_ENV = "HPT_FAULT_NONFINITE_GRAD"
SKIP_NONFINITE = "hpt/skip_nonfinite"
SKIP_GRAD_NORM = "hpt/skip_grad_norm"
SKIP_OVERFLOW = "hpt/fp16_overflow"  # fp16 only: the GradScaler skipped the step and lowered its scale


class HPTActorRolloutRefWorker(ActorRolloutRefWorker):
    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        super().init_model()
        hpt_cfg = self.config.get("hpt", None)
        if hpt_cfg is None or getattr(self, "actor", None) is None:
            return  # not an actor, or a plain verl config: verl's own loss stays
        self._install_hpt_loss(hpt_cfg)
        threshold = hpt_cfg.get("skip_grad_norm_above", None)
        install_step_guard(self.actor.engine, None if threshold is None else float(threshold),
                           inject=parse_fault_spec(os.environ.get(FAULT_ENV)))

    def _install_hpt_loss(self, hpt_cfg):
        from functools import partial

        from verl_ext.loss.actor_loss import hpt_actor_loss
        from verl_ext.loss.config import load_upge_config

        actor_config = self.loss_fn.keywords["config"]
        self.loss_fn = partial(hpt_actor_loss, config=actor_config, upge=load_upge_config(hpt_cfg.loss))
        self.actor.set_loss_fn(self.loss_fn)


def parse_fault_spec(spec: Optional[str]):
    """``None`` (no injection), ``"all"``, or a set of 1-based optimizer-step ordinals."""
    if not spec:
        return None
    if spec.strip() == "all":
        return "all"
    return {int(x) for x in spec.split(",") if x.strip()}


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


def install_step_guard(engine, grad_norm_threshold: Optional[float] = None, inject=None) -> None:
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
    """
    original_step = engine.optimizer_step
    original_fb = engine.forward_backward_batch
    original_train = engine.train_batch
    state = {"loss_nonfinite": False, "last": None, "count": 0}
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
        state["count"] += 1
        if inject == "all" or (inject and state["count"] in inject):
            for p in engine.module.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("nan"))
            logger.warning("HPT fault injection: NaN gradients at optimizer step %d", state["count"])
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


