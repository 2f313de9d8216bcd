"""verl's hybrid ``ActorRolloutRefWorker`` with the HPT loss and the optimizer-step guard.

verl builds ``self.loss_fn = partial(ppo_loss, config=actor_config)`` in ``init_model``; a
registered policy loss only ever sees old/new log-probs, advantages and the mask, so the
per-row demonstration flag HPT needs cannot reach it. The worker therefore swaps the whole
``loss_fn`` (verl's own ``set_loss_fn`` hook) for ``verl_ext.loss.actor_loss.hpt_actor_loss``
bound to the ``hpt.loss`` config. Every extra batch key (``hpt_row_kind`` ...) reaches it split
per micro-batch.

The step guard (:func:`verl_ext.verl_patches.install_step_guard`, one of the documented
verl patches) wraps the engine's ``optimizer_step``: a non-finite loss or gradient skips the
optimizer step (gradients zeroed, the optimizer never called, so parameters and AdamW
moments/step counts stay as they were), and so does, as in the release, a finite pre-clip gradient
norm above ``hpt.skip_grad_norm_above``. Each optimizer step reports ``hpt/skip_nonfinite``,
``hpt/skip_grad_norm`` and ``hpt/fp16_overflow`` (0/1) in its metrics; the trainer counts them and
stops the run after ``hpt.max_consecutive_skips`` skipped steps in a row.

On the ``cpu`` platform the worker sets its torch thread count (:func:`cpu_threads`): Ray starts every
actor with ``OMP_NUM_THREADS`` = its CPU request, so verl's FSDP worker would compute the old
log-probs and the update on one thread of a machine whose other cores are idle during those phases
(the ``hf`` rollout server and the graders wait for the next step).

The worker only receives ``actor_rollout_ref``; the TaskRunner copies the user's ``hpt`` node to
``actor_rollout_ref.hpt`` for it (see ``main_hpt.HPTTaskRunner``).
"""

from __future__ import annotations

import os

import verl_ext.plugins  # noqa: F401  (registries are per process: register in the worker too)
from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.engine_workers import ActorRolloutRefWorker

from verl_ext.verl_patches import install_step_guard


def cpu_threads(environ=os.environ, cores: int | None = None) -> int:
    """Torch threads for one FSDP rank on the ``cpu`` platform: ``HPT_CPU_WORKER_THREADS`` if set, else
    the cores this process may use shared by the node's ranks (``RAY_LOCAL_WORLD_SIZE``, set by verl)."""
    if environ.get("HPT_CPU_WORKER_THREADS"):
        return max(1, int(environ["HPT_CPU_WORKER_THREADS"]))
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, cores // max(1, int(environ.get("RAY_LOCAL_WORLD_SIZE", "1") or 1)))


class HPTActorRolloutRefWorker(ActorRolloutRefWorker):
    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        from verl.utils.device import get_device_name

        if get_device_name() == "cpu":
            import torch

            torch.set_num_threads(cpu_threads())
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
