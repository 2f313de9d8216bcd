"""verl's hybrid ``ActorRolloutRefWorker`` with the HPT loss and the release's step skip.

verl builds ``self.loss_fn = partial(ppo_loss, config=actor_config)`` in ``init_model``; a
registered policy loss only ever sees old/new log-probs, advantages and the mask, so the
per-row demonstration flag HPT needs cannot reach it. The worker therefore swaps the whole
``loss_fn`` (verl's own ``set_loss_fn`` hook) for ``verl_ext.loss.actor_loss.hpt_actor_loss``
bound to the ``hpt.loss`` config. Every extra batch key (``hpt_is_demo`` ...) reaches it split
per micro-batch.

The worker only receives ``actor_rollout_ref``; the TaskRunner copies the user's ``hpt`` node to
``actor_rollout_ref.hpt`` for it (see ``main_hpt.HPTTaskRunner``).
"""

from __future__ import annotations

import logging
import math

import torch

import verl_ext.plugins  # noqa: F401  (registries are per process: register in the worker too)
from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.engine_workers import ActorRolloutRefWorker

logger = logging.getLogger(__name__)


class HPTActorRolloutRefWorker(ActorRolloutRefWorker):
    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        super().init_model()
        hpt_cfg = self.config.get("hpt", None)
        if hpt_cfg is None or getattr(self, "actor", None) is None:
            return  # not an actor, or a plain verl config: verl's own loss stays
        self._install_hpt_loss(hpt_cfg)
        threshold = hpt_cfg.get("skip_grad_norm_above", None)
        if threshold is not None:
            install_grad_norm_skip(self.actor.engine, float(threshold))

    def _install_hpt_loss(self, hpt_cfg):
        from functools import partial

        from verl_ext.loss.actor_loss import hpt_actor_loss
        from verl_ext.loss.config import load_upge_config

        actor_config = self.loss_fn.keywords["config"]
        self.loss_fn = partial(hpt_actor_loss, config=actor_config, upge=load_upge_config(hpt_cfg.loss))
        self.actor.set_loss_fn(self.loss_fn)


def install_grad_norm_skip(engine, threshold: float) -> None:
    """Skip the optimizer step when the pre-clip gradient norm exceeds ``threshold``.

    The release (mix_actor.py ``_optimizer_step``) zeroes the gradients instead of stepping when
    the norm is non-finite *or* above ``max_grad_norm`` (80 in its Qwen script); verl's engine
    only skips non-finite norms. The norm is computed once, unclipped (max_norm=inf), then verl's
    own step clips and steps as usual.
    """
    from torch.distributed.tensor import DTensor
    from verl.utils.fsdp_utils import fsdp2_clip_grad_norm_

    original = engine.optimizer_step

    def optimizer_step():
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if isinstance(engine.module, FSDP):  # FSDP1: its own (collective) norm
            norm = engine.module.clip_grad_norm_(math.inf)
        else:
            params = [p for p in engine.module.parameters() if p.grad is not None]
            norm = fsdp2_clip_grad_norm_(params, max_norm=math.inf) if params else torch.tensor(0.0)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        if torch.isfinite(norm) and float(norm) > threshold:
            logger.warning("HPT: pre-clip grad norm %.2f > %.2f, skipping this optimizer step", float(norm),
                           threshold)
            engine.optimizer.zero_grad()
            return norm
        return original()

    engine.optimizer_step = optimizer_step
