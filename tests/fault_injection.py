"""Test-only fault injection: NaN gradients at chosen optimizer steps of the HPT worker, and LoRA
adapter pushes to the ``hf`` rollout that never arrive (``HPT_FAULT_DROP_LORA_ADAPTER``, at the end).

Not part of the production path: nothing in ``recipe/`` or ``verl_ext/`` refers to it. An end-to-end
test enables it in every process by adding this module to ``VERL_USE_EXTERNAL_MODULES`` (verl's
``__init__`` imports the listed modules; ``recipe.hpt.runtime`` forwards the variable to Ray) and
chooses the steps with ``HPT_FAULT_NONFINITE_GRAD`` ("all", or 1-based ordinals "1,3"). Importing
it wraps ``HPTActorRolloutRefWorker._install_step_guard``: after the real guard is installed, the
engine's ``optimizer_step`` first poisons the gradients, so the guard sees what a real NaN would be.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

FAULT_ENV = "HPT_FAULT_NONFINITE_GRAD"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What an end-to-end run needs in its environment to get NaN gradients at every optimizer step.
FAULT_INJECTION_ENV = {"VERL_USE_EXTERNAL_MODULES": "tests.fault_injection", FAULT_ENV: "all",
                       "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
logger = logging.getLogger(__name__)


def parse_fault_spec(spec: Optional[str]):
    """``None`` (no injection), ``"all"``, or a set of 1-based optimizer-step ordinals."""
    if not spec:
        return None
    if spec.strip() == "all":
        return "all"
    return {int(x) for x in spec.split(",") if x.strip()}


def inject_nonfinite_gradients(engine, inject) -> None:
    """Wrap ``engine.optimizer_step`` (already guarded) to fill every gradient with NaN on the
    optimizer steps named by ``inject``."""
    if not inject:
        return
    guarded_step = engine.optimizer_step
    count = {"n": 0}

    def optimizer_step():
        count["n"] += 1
        if inject == "all" or count["n"] in inject:
            for p in engine.module.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("nan"))
            logger.warning("HPT fault injection: NaN gradients at optimizer step %d", count["n"])
        return guarded_step()

    engine.optimizer_step = optimizer_step


def _enable_in_worker() -> None:
    from recipe.hpt.hpt_worker import HPTActorRolloutRefWorker

    original = HPTActorRolloutRefWorker._install_step_guard
    if getattr(original, "_fault_injection", False):
        return

    def _install_step_guard(self, hpt_cfg):
        original(self, hpt_cfg)
        inject_nonfinite_gradients(self.actor.engine, parse_fault_spec(os.environ.get(FAULT_ENV)))

    _install_step_guard._fault_injection = True
    HPTActorRolloutRefWorker._install_step_guard = _install_step_guard


if os.environ.get(FAULT_ENV):  # a process of a run the test launched with FAULT_INJECTION_ENV
    _enable_in_worker()


# ---------------------------------------------------------------- a LoRA adapter push that never arrives
LORA_FAULT_ENV = "HPT_FAULT_DROP_LORA_ADAPTER"  # "all": every adapter push; "after_first": all but the first


def drop_lora_adapter_pushes(adapter_cls, spec: str) -> None:
    """Wrap the ``hf`` rollout's worker-side ``update_weights`` so that adapter pushes (``peft_config``
    with ``base_sync_done``) never reach the server, as ``spec`` says: the rollout keeps serving the
    base (or the first adapter) while the actor trains, the symptom verl issue #7495 reports for vLLM.
    The dropped push's tensors are still drained (gathering them is collective)."""
    original = adapter_cls.update_weights
    seen = {"n": 0}

    async def update_weights(self, weights, wire_format="named_tensors", **kwargs):
        if kwargs.get("peft_config") and kwargs.get("base_sync_done"):
            seen["n"] += 1
            if spec == "all" or (spec == "after_first" and seen["n"] > 1):
                for _ in weights:
                    pass
                logger.warning("HPT fault injection: LoRA adapter push %d dropped", seen["n"])
                return None
        return await original(self, weights, wire_format, **kwargs)

    adapter_cls.update_weights = update_weights


def _drop_lora_pushes_in_this_process() -> None:
    import sys

    server = sys.modules.get("verl_ext.rollout.hf_server")
    if server is not None and not hasattr(server, "HFRolloutServer"):
        return  # the server actor, importing its own module (and verl) right now: pushes are sent elsewhere
    from verl_ext.rollout.hf_adapter import HFServerAdapter

    drop_lora_adapter_pushes(HFServerAdapter, os.environ[LORA_FAULT_ENV])


if os.environ.get(LORA_FAULT_ENV):
    _drop_lora_pushes_in_this_process()
