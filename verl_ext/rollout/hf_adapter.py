"""Worker-side adapter of the ``hf`` rollout (verl's ``BaseRollout`` "ServerAdapter").

verl's hybrid ``ActorRolloutRefWorker`` builds one of these per training rank
(``get_rollout_class(rollout.name, "async")``) and, after every actor update, calls
``update_weights(per_tensor_param_generator)`` with the FSDP engine's full (gathered) tensors.
Every rank must drain the generator (gathering is collective); the first rank of each replica
forwards the tensors to its replica's server actor.

With LoRA in adapter mode verl's worker (``verl/workers/engine_workers.py:786-806``) makes this call
with ``peft_config`` (peft's ``LoraConfig.to_dict()``) and ``base_sync_done``: at the first update
with the base weights (``base_sync_done=False``; only when ``rollout.load_format`` is dummy, verl's
default), then at every update with the adapter tensors alone (``base_sync_done=True``). Both travel to
the server as they are: it tells the pushes apart by them (``HFRolloutServer.load_weights``).
"""

from __future__ import annotations

import logging
from typing import Generator

import ray
import torch
import torch.distributed as dist
from verl.workers.rollout.base import BaseRollout

from verl_ext.rollout.hf_server import server_actor_name

logger = logging.getLogger(__name__)


class HFServerAdapter(BaseRollout):
    def __init__(self, config, model_config, device_mesh, *args, **kwargs):
        super().__init__(config, model_config, device_mesh, *args, **kwargs)
        rank = dist.get_rank() if dist.is_initialized() else 0
        replica_world = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // replica_world
        self.is_leader = rank % replica_world == 0
        self._server = None

    def _server_handle(self):
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights: Generator[tuple[str, torch.Tensor], None, None],
                             wire_format: str = "named_tensors", **kwargs):
        if wire_format != "named_tensors":
            raise NotImplementedError(f"hf rollout accepts full named tensors only, got wire_format={wire_format}")
        state = {}
        for name, tensor in weights:
            if hasattr(tensor, "full_tensor"):  # DTensor shard -> full tensor (collective)
                tensor = tensor.full_tensor()
            if self.is_leader:
                state[name] = tensor.detach().to("cpu", copy=True)
        if self.is_leader:
            peft_config, base_sync_done = kwargs.get("peft_config"), bool(kwargs.get("base_sync_done", False))
            n = await self._server_handle().load_weights.remote(
                state, kwargs.get("global_steps"), peft_config=peft_config, base_sync_done=base_sync_done)
            kind = "full" if not peft_config else ("LoRA adapter" if base_sync_done else "LoRA base")
            logger.info("hf rollout: pushed %d tensors (%s) to replica %d", n, kind, self.replica_rank)
