"""verl's hybrid ``ActorRolloutRefWorker`` with the HPT loss installed.

verl builds ``self.loss_fn = partial(ppo_loss, config=actor_config)`` in ``init_model``; a
registered policy loss only ever sees old/new log-probs, advantages and the mask, so the
per-row demonstration flag HPT needs cannot reach it. The worker therefore swaps the whole
``loss_fn`` (verl's own ``set_loss_fn`` hook) for ``verl_ext.loss.actor_loss.hpt_actor_loss``
bound to the ``hpt.loss`` config. Every extra batch key (``hpt_is_demo`` ...) reaches it split
per micro-batch.
"""

from __future__ import annotations

import verl_ext.plugins  # noqa: F401  (registries are per process: register in the worker too)
from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.engine_workers import ActorRolloutRefWorker


class HPTActorRolloutRefWorker(ActorRolloutRefWorker):
    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        super().init_model()
        self._install_hpt_loss()

    def _install_hpt_loss(self):
        hpt_cfg = self.config.get("hpt_loss", None) if hasattr(self.config, "get") else None
        if hpt_cfg is None or getattr(self, "actor", None) is None:
            return  # plain verl loss (e.g. GRPO baseline runs without the hpt node)
        from functools import partial

        from verl_ext.loss.actor_loss import hpt_actor_loss
        from verl_ext.loss.config import load_upge_config

        self.loss_fn = partial(hpt_actor_loss, config=self.loss_fn.keywords["config"],
                               upge=load_upge_config(hpt_cfg))
        self.actor.set_loss_fn(self.loss_fn)
