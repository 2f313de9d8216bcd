"""The ``hf`` rollout server (a Ray actor) and its ``RolloutReplica``.

Protocol (verl 0.9.1 ``workers/rollout/llm_server.py`` and ``replica.py``): the agent loop calls
``server.generate(request_id=, prompt_ids=, sampling_params=, ...) -> TokenOutput`` once per
sample; ``CheckpointEngineManager`` calls ``wake_up/sleep/abort_all_requests/resume_generation/
release_kv_cache/resume_kv_cache`` on every replica; in hybrid mode weights arrive from the
training workers through :class:`verl_ext.rollout.hf_adapter.HFServerAdapter`, which calls
:meth:`HFRolloutServer.load_weights` on the named server actor.

Concurrent ``generate`` calls are queued and served in batches (one forward per token for the
whole batch), which is what makes CPU rollout of a group of n samples affordable.

Reproducible sampling: each request draws its tokens from its own random stream, seeded by
:func:`verl_ext.rollout.sampling.row_seed` from (``rollout.seed``, the server's global step, the
prompt's token ids, the request's row index). The row index is verl's ``priority``: the agent-loop
manager numbers the rows of the step's n-times interleaved batch 0..B·n-1 (row = question slot · n
+ copy k), so it names "the k-th copy of this prompt in this step". The global step is the one the
trainer passed with the last weight update (``load_weights``/``set_global_steps``), i.e. step s
generates with s-1. The samples of a step therefore depend neither on the order in which requests
arrive nor on which of them share a forward batch, and a run resumed from a checkpoint at step s
draws exactly the rollouts an uninterrupted run draws. A request without a priority falls back to
the number of identical prompts already seen this step (arrival order).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Optional

import ray
import torch
from omegaconf import DictConfig
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, TokenOutput

from verl_ext.rollout.sampling import SamplingSpec, generator_for, row_seed, sample_batch

logger = logging.getLogger(__name__)

SERVER_NAME_PREFIX = "hf_rollout_server_"
# Batching: a wave of requests is complete when none arrived for QUIET_S; no batch waits longer than
# MAX_WAIT_S for its wave (see HFRolloutServer._wait_for_wave).
QUIET_S = 0.05
MAX_WAIT_S = 0.5


def server_actor_name(replica_rank: int, name_suffix: str = "") -> str:
    """Ray actor name of a replica's server; the hybrid adapter finds its server by this name."""
    return f"{SERVER_NAME_PREFIX}{replica_rank}{name_suffix}"


def requested_log_probs(sampling_params: dict[str, Any], log_probs: list[float]) -> Optional[list[float]]:
    """The sampled tokens' log-probs when the request asks for them, else None, as vLLM's server
    answers (verl's agent loop sends ``logprobs=rollout.calculate_log_probs``). Then every row of an
    agent-loop chunk has them or none has: verl stacks them per chunk, and a demonstration-prefix row
    that needs no server call (``hpt_prefix_agent``) follows the request's flag, not the server's."""
    return list(log_probs) if sampling_params.get("logprobs", True) else None


class HFRolloutServer:
    """Serves one rollout replica with a Hugging Face causal LM on the local CPU (or device)."""

    def __init__(self, config, model_config, rollout_mode: RolloutMode, replica_rank: int,
                 max_batch_size: int = 1024):
        from transformers import AutoModelForCausalLM

        self.config = omega_conf_to_dataclass(config) if isinstance(config, DictConfig) else config
        self.model_config = (
            omega_conf_to_dataclass(model_config) if isinstance(model_config, DictConfig) else model_config
        )
        self.rollout_mode = rollout_mode
        self.replica_rank = replica_rank
        self.max_batch_size = max_batch_size
        threads = int(os.environ.get("HPT_HF_ROLLOUT_THREADS", "0")) or os.cpu_count() or 1
        torch.set_num_threads(threads)

        path = self.model_config.local_path
        override = dict(self.model_config.override_config or {})
        attn = override.get("attn_implementation", "sdpa")
        if attn.startswith("flash"):
            attn = "sdpa"  # no flash-attn on CPU; sdpa is numerically the same attention
        self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation=attn)
        self.model.eval()
        tok = self.model_config.tokenizer
        stop = set()
        gen_cfg = self.model_config.generation_config
        for src in (getattr(gen_cfg, "eos_token_id", None), getattr(tok, "eos_token_id", None)):
            if isinstance(src, int):
                stop.add(src)
            elif src:
                stop.update(int(x) for x in src)
        self.stop_token_ids = stop
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else min(stop)
        self.max_model_len = int(self.config.max_model_len or (self.config.prompt_length + self.config.response_length))
        self.seed = int(getattr(self.config, "seed", 0) or 0)
        self._occurrences: dict[tuple, int] = {}  # (step, prompt) -> requests seen without a priority

        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._weights_version = 0
        self._gate_open = True
        self._gate_event: asyncio.Event | None = None
        self.global_steps: Optional[int] = None

    # -- generation -------------------------------------------------------------------------
    def _ensure_worker(self):
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._gate_event = asyncio.Event()
            self._gate_event.set()
            self._worker = asyncio.get_running_loop().create_task(self._serve())

    async def generate(self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str,
                       image_data=None, video_data=None, audio_data=None, mm_processor_kwargs=None,
                       priority: Optional[int] = None, **kwargs) -> TokenOutput:
        if image_data or video_data or audio_data:
            raise NotImplementedError("the hf rollout serves text-only models")
        self._ensure_worker()
        await self._gate_event.wait()
        prompt_ids = [int(t) for t in prompt_ids]
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"request {request_id}: prompt length {len(prompt_ids)} leaves no room within max_model_len "
                f"{self.max_model_len}"
            )
        spec = SamplingSpec.from_request(sampling_params, min(room, int(self.config.response_length)))
        seed = self.request_seed(prompt_ids, priority)
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((prompt_ids, spec, fut, seed))
        result = await fut
        return TokenOutput(
            token_ids=result.token_ids,
            log_probs=requested_log_probs(sampling_params, result.log_probs),
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    def request_seed(self, prompt_ids: list[int], priority: Optional[int]) -> int:
        """Seed of one request's random stream (see the module docstring)."""
        step = -1 if self.global_steps is None else int(self.global_steps)
        if priority is None:
            key = (step, tuple(prompt_ids))
            slot = self._occurrences.get(key, 0)
            self._occurrences[key] = slot + 1
            row = ("arrival", slot)
        else:
            row = ("row", int(priority))
        return row_seed("hf-rollout", self.seed, step, prompt_ids, *row)

    async def _wait_for_wave(self) -> None:
        """Let the rest of this agent-loop wave arrive before the batch is cut.

        The agent-loop workers send one request per sample, spread over tens of milliseconds. A batch
        cut at a fixed instant (5 ms after the first request) held 1-8 of the main job's 128 requests
        and cost a whole decode loop of its own (0.25-0.48 s) before the other ~124 ran: a decode
        loop's time hardly depends on its batch size on CPU. So wait while requests keep arriving
        (one more ``QUIET_S`` with no new request ends the wait), at most ``MAX_WAIT_S``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MAX_WAIT_S
        seen = -1
        while self._queue.qsize() != seen and loop.time() < deadline:
            seen = self._queue.qsize()
            await asyncio.sleep(QUIET_S)

    async def _serve(self):
        """Drain the queue into batches of identical sampling specs and run them off the loop."""
        while True:
            first = await self._queue.get()
            await self._wait_for_wave()
            items = [first]
            while not self._queue.empty() and len(items) < self.max_batch_size:
                items.append(self._queue.get_nowait())
            groups: dict[SamplingSpec, list] = {}
            for item in items:
                groups.setdefault(item[1], []).append(item)
            for spec, group in groups.items():
                try:
                    results = await asyncio.to_thread(
                        sample_batch, self.model, [g[0] for g in group], spec, self.stop_token_ids,
                        self.pad_token_id, generators=[generator_for(g[3]) for g in group],
                    )
                    for (_, _, fut, _), res in zip(group, results):
                        if not fut.done():
                            fut.set_result(res)
                except Exception as exc:  # surface the failure to every waiting request
                    logger.exception("hf rollout batch failed")
                    for _, _, fut, _ in group:
                        if not fut.done():
                            fut.set_exception(exc)

    # -- weights ----------------------------------------------------------------------------
    def load_weights(self, state_dict: dict[str, torch.Tensor], global_steps: Optional[int] = None) -> int:
        """Copy trainer weights (HF parameter names) into the served model; returns #tensors."""
        own = self.model.state_dict()
        unknown = [k for k in state_dict if k not in own]
        if unknown:
            raise KeyError(f"hf rollout: weights not in the served model: {unknown[:5]} (+{max(0, len(unknown) - 5)})")
        with torch.no_grad():
            for name, tensor in state_dict.items():
                own[name].copy_(tensor.to(own[name].dtype))
        if self.model.config.tie_word_embeddings and "lm_head.weight" not in state_dict:
            self.model.tie_weights()
        self._weights_version += 1
        if global_steps is not None:
            self._set_step(global_steps)
        return len(state_dict)

    def weights_version(self) -> int:
        return self._weights_version

    # -- control plane (no device memory to free on CPU) ----------------------------------------
    async def wake_up(self, tags: list[str] | None = None):
        return None

    async def sleep(self):
        return None

    async def clear_kv_cache(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def abort_all_requests(self, reject_request: bool = False, **kwargs) -> dict[str, Any]:
        # Requests are short and batched; nothing is interrupted mid-batch. New ones wait.
        self._ensure_worker()
        self._gate_event.clear()
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self):
        self._ensure_worker()
        self._gate_event.set()

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None

    async def set_global_steps(self, global_steps: int):
        self._set_step(global_steps)

    def _set_step(self, global_steps: int) -> None:
        if global_steps != self.global_steps:
            self._occurrences.clear()
        self.global_steps = int(global_steps)


class HFReplica(RolloutReplica):
    """One ``HFRolloutServer`` actor per replica, placed on the node of the replica's workers."""

    def __init__(self, replica_rank, config, model_config, gpus_per_node: int = 8, is_reward_model=False,
                 is_teacher_model=False, name_suffix: str = ""):
        super().__init__(replica_rank, config, model_config, gpus_per_node, is_reward_model, is_teacher_model,
                         name_suffix)
        self.server_class = ray.remote(HFRolloutServer)

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self):
        node_id = ray.get_runtime_context().get_node_id()
        if self.workers:
            node_id = await self.workers[0].__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
        name = server_actor_name(self.replica_rank, self.name_suffix)
        server = self.server_class.options(
            scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=node_id,
                                                                                            soft=True),
            name=name,
            num_cpus=0,  # it only runs while the training workers wait for rollouts
            max_concurrency=self.max_concurrency,
        ).remote(
            config=self.config,
            model_config=self.model_config,
            rollout_mode=self.rollout_mode,
            replica_rank=self.replica_rank,
        )
        self.servers = [server]
        self._server_handle = server
        self._server_address = name  # token-in-token-out only; there is no HTTP endpoint
