"""verl's hybrid ``ActorRolloutRefWorker`` with the HPT loss and the optimizer-step guard.

verl builds ``self.loss_fn = partial(ppo_loss, config=actor_config)`` in ``init_model``; a
registered policy loss only ever sees old/new log-probs, advantages and the mask, so the
per-row demonstration flag HPT needs cannot reach it. The worker therefore swaps the whole
``loss_fn`` (verl's own ``set_loss_fn`` hook) for ``verl_ext.loss.actor_loss.hpt_actor_loss``
bound to the ``hpt.loss`` config. Every extra batch key (``hpt_row_kind`` ...) reaches it split
per micro-batch.

The step guard (:func:`verl_ext.verl_patches.install_step_guard`, one of the three documented
verl patches) wraps the engine's ``optimizer_step``: a non-finite loss or gradient skips the
optimizer step (gradients zeroed, the optimizer never called, so parameters and AdamW
moments/step counts stay as they were), and so does, as in the release, a finite pre-clip gradient
norm above ``hpt.skip_grad_norm_above``. Each optimizer step reports ``hpt/skip_nonfinite``,
``hpt/skip_grad_norm`` and ``hpt/fp16_overflow`` (0/1) in its metrics; the trainer counts them and
stops the run after ``hpt.max_consecutive_skips`` skipped steps in a row.

The worker only receives ``actor_rollout_ref``; the TaskRunner copies the user's ``hpt`` node to
``actor_rollout_ref.hpt`` for it (see ``main_hpt.HPTTaskRunner``).
"""

from __future__ import annotations

import verl_ext.plugins  # noqa: F401  (registries are per process: register in the worker too)
from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.engine_workers import ActorRolloutRefWorker

from verl_ext.verl_patches import install_step_guard


class HPTActorRolloutRefWorker(ActorRolloutRefWorker):
    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        super().init_model()
        hpt_cfg = self.config.get("hpt", None)
        if hpt_cfg is None or getattr(self, "actor", None) is None:
            return  # not an actor, or a plain verl config: verl's own loss stays
        self._install_hpt_loss(hpt_cfg)
        self._install_step_guard(hpt_cfg)

    def _install_hpt_loss(self, hpt_cfg):
        from functools import partial

        from verl_ext.loss.actor_loss import hpt_actor_loss
        from verl_ext.loss.config import load_upge_config

        actor_config = self.loss_fn.keywords["config"]
        self.loss_fn = partial(hpt_actor_loss, config=actor_config, upge=load_upge_config(hpt_cfg.loss))
        self.actor.set_loss_fn(self.loss_fn)

    def _install_step_guard(self, hpt_cfg):
        threshold = hpt_cfg.get("skip_grad_norm_above", None)
        install_step_guard(self.actor.engine, None if threshold is None else float(threshold))
