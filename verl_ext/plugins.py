"""Registrations of hpt-verl's extensions in verl's registries.

Imported in every process through ``VERL_USE_EXTERNAL_MODULES=verl_ext.plugins`` (verl's
``__init__`` imports the listed modules), because verl's registries are per process: a
registration made in the driver is invisible to a Ray worker.
"""

from verl.workers.rollout import base as _rollout_base
from verl.workers.rollout.replica import RolloutReplicaRegistry

from verl_ext import loss as _loss  # noqa: F401  (registers the upge* policy losses)
from verl_ext.cpu import platform as _cpu_platform  # noqa: F401  (registers the "cpu" platform)


def _load_hf_replica():
    from verl_ext.rollout.hf_server import HFReplica

    return HFReplica


# verl resolves the worker-side adapter from this plain dict (workers/rollout/base.py) and the
# server side from RolloutReplicaRegistry; both are keyed by `actor_rollout_ref.rollout.name`.
_rollout_base._ROLLOUT_REGISTRY[("hf", "async")] = "verl_ext.rollout.hf_adapter.HFServerAdapter"
RolloutReplicaRegistry.register("hf", _load_hf_replica)

if _cpu_platform.cpu_platform_selected():
    _cpu_platform.patch_gloo_process_group()
