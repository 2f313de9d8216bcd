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

LoRA (``actor_rollout_ref.model.lora_rank`` > 0): in merge mode (``model.lora.merge=true``) verl pushes
full merged weights and nothing here differs. In adapter mode verl pushes the frozen base once (peft's
``.base_layer`` names) and then, after every update, only the ``lora_A``/``lora_B`` tensors with the
peft config, which vLLM applies as a LoRA adapter; :meth:`HFRolloutServer.load_weights` serves the
same policy by merging them into the Linears it targets (:func:`merged_lora_weights`).
"""

from __future__ import annotations

import asyncio
import logging
import math
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
# peft's prefix of a PeftModel's names (``base_model.model.<HF name>``); vLLM drops exactly this leading
# prefix when it parses an adapter tensor's name (``parse_fine_tuned_lora_name``).
PEFT_PREFIX = "base_model.model."
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def server_actor_name(replica_rank: int, name_suffix: str = "") -> str:
    """Ray actor name of a replica's server; the hybrid adapter finds its server by this name."""
    return f"{SERVER_NAME_PREFIX}{replica_rank}{name_suffix}"


def requested_log_probs(sampling_params: dict[str, Any], log_probs: list[float]) -> Optional[list[float]]:
    """The sampled tokens' log-probs when the request asks for them, else None, as vLLM's server
    answers (verl's agent loop sends ``logprobs=rollout.calculate_log_probs``). Then every row of an
    agent-loop chunk has them or none has: verl stacks them per chunk, and a demonstration-prefix row
    that needs no server call (``hpt_prefix_agent``) follows the request's flag, not the server's."""
    return list(log_probs) if sampling_params.get("logprobs", True) else None


def lora_base_name(name: str) -> str:
    """HF name of a tensor of verl's LoRA base push.

    verl's FSDP engine names the base as the HF model does, except that it writes peft's ``.base_layer``
    infix into every Linear peft may wrap (``...q_proj.base_layer.weight``: ``replace_lora_wrapper``,
    verl/utils/fsdp_utils.py:792), for vLLM's LoRA-wrapped layers; the served HF model has no wrapper.
    """
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX):]
    return name.replace(".base_layer.", ".")


def lora_adapter_name(name: str) -> str:
    """An adapter tensor's name without peft's ``base_model.model.`` prefix, as vLLM parses it."""
    return name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name


def lora_target_weights(adapter_names) -> list[str]:
    """HF weight names of the Linears an adapter targets (``<module>.lora_A.weight`` -> ``<module>.weight``).

    Raises KeyError naming every tensor that is not a Linear's ``lora_A``/``lora_B`` (embedding LoRA,
    LoRA biases, DoRA magnitudes, ``modules_to_save`` copies): the hf rollout cannot apply those.
    """
    other = [n for n in adapter_names if not n.endswith(LORA_SUFFIXES)]
    if other:
        raise KeyError(
            f"hf rollout: LoRA adapter tensors that are not a Linear's lora_A/lora_B weight, which it cannot "
            f"apply: {other[:5]} (+{max(0, len(other) - 5)})")
    return sorted({n[: -len(".lora_A.weight")] + ".weight" for n in adapter_names})


def lora_scale(peft_config: dict) -> float:
    """The factor vLLM applies to B @ A (its ``PEFTHelper``): ``lora_alpha / r``, or
    ``lora_alpha / sqrt(r)`` with rsLoRA. peft trains with the same factor as long as the adapter has one
    rank and one alpha for every module.

    Raises ValueError for the peft settings under which merging ``W + scale · B @ A`` is not the trained
    policy: verl's own LoraConfig sets none of them (verl/workers/engine/fsdp/transformer_impl.py:358-366),
    an adapter loaded with ``actor_rollout_ref.model.lora_adapter_path`` may.
    """
    problems = []
    if peft_config.get("use_dora"):
        problems.append("use_dora=True (DoRA rescales each column; vLLM refuses it too)")
    if peft_config.get("rank_pattern") or peft_config.get("alpha_pattern"):
        problems.append("rank_pattern/alpha_pattern (peft scales those modules by their own alpha/r, vLLM by the "
                        "global one)")
    if peft_config.get("modules_to_save"):
        problems.append(f"modules_to_save={peft_config['modules_to_save']} (vLLM refuses it too)")
    if str(peft_config.get("bias", "none")) != "none" or peft_config.get("lora_bias"):
        problems.append("bias/lora_bias (trained biases are not lora_A/lora_B)")
    if peft_config.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out=True (Conv1D weights are stored transposed)")
    if peft_config.get("target_parameters"):
        problems.append(f"target_parameters={peft_config['target_parameters']} (LoRA on nn.Parameters, not "
                        "Linears)")
    if problems:
        raise ValueError("hf rollout: the pushed LoRA adapter uses peft settings it cannot apply: "
                         + "; ".join(problems) + ". Set actor_rollout_ref.model.lora.merge=true (verl then pushes "
                         "merged weights) or use vLLM.")
    r, alpha = int(peft_config["r"]), float(peft_config["lora_alpha"])
    return alpha / math.sqrt(r) if peft_config.get("use_rslora") else alpha / r


def merged_lora_weights(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor],
                        scale: float) -> dict[str, torch.Tensor]:
    """The weights of the Linears an adapter targets, with the adapter merged in, in fp32:

        W = W_base + scale · B @ A

    which is what peft's forward computes (``base(x) + lora_B(lora_A(x)) · scaling``) and vLLM's LoRA
    kernels add to the base layer's output, folded into one weight so the served HF model needs no LoRA
    layer. Always from the base, never from the previous merge, so no rounding accumulates over steps.

    base: HF weight name (``model.layers.0.self_attn.q_proj.weight``) -> W_base [out, in], for at least
        every targeted Linear.
    adapter: ``<module>.lora_A.weight`` -> A [r, in] and ``<module>.lora_B.weight`` -> B [out, r], peft's
        ``base_model.model.`` prefix already removed (:func:`lora_adapter_name`).
    scale: :func:`lora_scale` of the adapter's peft config.
    Returns ``<module>.weight`` -> W [out, in] (fp32) for every targeted Linear, and nothing else: the
    other weights stay the base's.
    """
    merged = {}
    for weight in lora_target_weights(adapter):
        module = weight[: -len(".weight")]
        a, b = adapter.get(f"{module}.lora_A.weight"), adapter.get(f"{module}.lora_B.weight")
        if a is None or b is None:
            raise KeyError(f"hf rollout: LoRA adapter of {module} has lora_A without lora_B or the reverse")
        if weight not in base:
            raise KeyError(f"hf rollout: LoRA targets {module}, whose weight {weight} is not in the served model")
        w = base[weight].to(torch.float32)  # [out, in]
        a, b = a.to(torch.float32), b.to(torch.float32)  # A [r, in], B [out, r]
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise ValueError(
                f"hf rollout: LoRA shapes of {module} do not fit its weight: lora_A {tuple(a.shape)}, lora_B "
                f"{tuple(b.shape)}, weight {tuple(w.shape)} (expected [r, in], [out, r], [out, in])")
        merged[weight] = w + scale * (b @ a)  # [out, r] @ [r, in] -> [out, in]
    return merged


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
        # LoRA adapter mode: fp32 base weights of the Linears an adapter has targeted (HF names); None while
        # the served weights are not known to be the LoRA base (see load_weights).
        self._lora_base: Optional[dict[str, torch.Tensor]] = None
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
    def load_weights(self, state_dict: dict[str, torch.Tensor], global_steps: Optional[int] = None,
                     peft_config: Optional[dict] = None, base_sync_done: bool = False) -> int:
        """Copy trainer weights into the served model; returns #tensors.

        The three pushes verl makes are told apart as verl's vLLM worker tells them
        (verl/workers/rollout/vllm_rollout/utils.py:281,305,373: adapter iff ``peft_config and base_sync_done``):

        - ``peft_config=None``: full weights under their HF names (no LoRA, or LoRA in merge mode);
        - ``peft_config`` with ``base_sync_done=False``: LoRA's frozen base, under HF names with peft's
          ``.base_layer`` infix (:func:`lora_base_name`); it becomes the base the adapters merge into;
        - ``peft_config`` with ``base_sync_done=True``: the adapter alone (``base_model.model.<module>.lora_A|B
          .weight``). vLLM replaces its previous adapter with it; here every Linear it targets becomes
          ``W_base + scale · B @ A`` (:func:`merged_lora_weights`) and every Linear an earlier adapter
          targeted but this one does not is restored to its base.
        """
        if peft_config and base_sync_done:
            self._load_lora_adapter(state_dict, peft_config)
        else:
            if peft_config:
                state_dict = {lora_base_name(k): v for k, v in state_dict.items()}
            own = self.model.state_dict()
            unknown = [k for k in state_dict if k not in own]
            if unknown:
                raise KeyError(
                    f"hf rollout: weights not in the served model: {unknown[:5]} (+{max(0, len(unknown) - 5)})")
            with torch.no_grad():
                for name, tensor in state_dict.items():
                    own[name].copy_(tensor.to(own[name].dtype))
            if self.model.config.tie_word_embeddings and "lm_head.weight" not in state_dict:
                self.model.tie_weights()
            # A LoRA base push makes the served weights the base (copied lazily, per targeted Linear, at the
            # adapter push: untargeted ones are never modified); full weights are no LoRA base.
            self._lora_base = {} if peft_config else None
        self._weights_version += 1
        if global_steps is not None:
            self._set_step(global_steps)
        return len(state_dict)

    def _load_lora_adapter(self, state_dict: dict[str, torch.Tensor], peft_config: dict) -> None:
        """Merge an adapter push into the served model from the fp32 base (see :meth:`load_weights`)."""
        if self._lora_base is None:
            load_format = str(getattr(self.config, "load_format", "dummy"))
            if self._weights_version == 0 and "dummy" not in load_format:
                # verl pushes no base when rollout.load_format is not dummy (its worker starts with
                # base_sync_done=True, verl/workers/engine_workers.py:673): the rollout is to serve the
                # checkpoint it loaded, which for this server is model.path, read at start.
                self._lora_base = {}
            else:
                raise RuntimeError(
                    "hf rollout: LoRA adapter pushed before the base weights "
                    + ("(verl pushes the base first when actor_rollout_ref.rollout.load_format is dummy, "
                       f"load_format={load_format}; verl PR #5769 fixed such an ordering bug for SGLang)"
                       if self._weights_version == 0 else
                       "(the last push was full weights, peft_config=None, so the served weights are no LoRA base)")
                    + ": merging it into these weights would not be the trained policy.")
        scale = lora_scale(peft_config)
        adapter = {lora_adapter_name(k): v for k, v in state_dict.items()}
        targets = set(lora_target_weights(adapter))
        own = self.model.state_dict()
        unknown = sorted(t for t in targets if t not in own)
        if unknown:
            raise KeyError(
                f"hf rollout: LoRA targets weights not in the served model: {unknown[:5]} "
                f"(+{max(0, len(unknown) - 5)})")
        aliases: dict[int, list[str]] = {}
        params = list(self.model.named_parameters(remove_duplicate=False))
        for name, param in params:
            aliases.setdefault(id(param), []).append(name)
        for name, param in params:
            if name in targets and len(aliases[id(param)]) > 1:
                raise ValueError(
                    f"hf rollout: LoRA targets {name}, which the served model shares with "
                    f"{[n for n in aliases[id(param)] if n != name]} (tied embeddings): merging it would change "
                    "those too, while peft and vLLM apply it to this module only. Set "
                    "actor_rollout_ref.model.lora.merge=true or leave the module out of target_modules.")
        for name in sorted(targets):
            if name not in self._lora_base:  # never merged into yet, so the served weight is the base
                self._lora_base[name] = own[name].detach().to(torch.float32, copy=True)
        merged = merged_lora_weights(self._lora_base, adapter, scale)
        with torch.no_grad():
            for name, base in self._lora_base.items():
                own[name].copy_(merged.get(name, base).to(own[name].dtype))

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
