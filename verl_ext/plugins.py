"""Registrations of hpt-verl's extensions in verl's registries.

Imported in every process through ``VERL_USE_EXTERNAL_MODULES=verl_ext.plugins`` (verl's
``__init__`` imports the listed modules), because verl's registries are per process: a
registration made in the driver is invisible to a Ray worker. The two registrations verl has no
public function for go through :mod:`verl_ext.verl_patches`.
"""

from verl.workers.rollout.replica import RolloutReplicaRegistry

from verl_ext import loss as _loss  # noqa: F401  (registers the upge* policy losses)
from verl_ext import verl_patches
from verl_ext.cpu import platform as _cpu_platform  # registers the "cpu" platform


def _load_hf_replica():
    from verl_ext.rollout.hf_server import HFReplica

    return HFReplica


verl_patches.check_verl_version()
# verl resolves the server side of a rollout from RolloutReplicaRegistry and the worker-side
# adapter from a plain dict (verl_patches 1); both are keyed by `actor_rollout_ref.rollout.name`.
RolloutReplicaRegistry.register("hf", _load_hf_replica)
verl_patches.register_rollout_adapter("hf", "verl_ext.rollout.hf_adapter.HFServerAdapter")

# The demonstration-prefix agent loop (staged generation's continue_with_prefix), registered with
# verl's public `register` decorator as the module is imported. Safe here: verl's __init__ imports
# this module after its own protocol and utilities, and the agent-loop package imports only those
# (tests/unit/hpt/staging/test_prefix.py checks the registration in a fresh `import verl`).
from verl_ext.hpt.staging import prefix_agent_loop as _prefix_agent_loop  # noqa: E402,F401

if _cpu_platform.cpu_platform_selected():
    verl_patches.patch_gloo_process_group()  # verl_patches 2
