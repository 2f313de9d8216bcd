"""Sampling backends of the evaluator (``verl_ext.eval.evaluator``): vLLM (GPU), Hugging Face
``generate`` (CPU fallback) and :class:`TorchSampler` (an in-memory model sampled by the ``hf``
rollout's own sampler; the arithmetic task's and the arena's evaluations).

Every backend is a :class:`Generator`: ``render`` turns chat messages into the prompts its
``generate`` takes, and ``generate`` returns ``n`` decoded completions per prompt with special
tokens removed. vLLM and HF take templated prompt strings (so prompt formatting is identical across
those two) and tokenise them without adding special tokens (the chat template already contains
them); :class:`TorchSampler` takes the template's token ids, as the ``hf`` rollout does.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

logger = logging.getLogger(__name__)


@dataclass
class SamplingConfig:
    n: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 8192
    seed: int = 0


def vllm_available() -> bool:
    try:
        import torch
        import vllm  # noqa: F401
    except Exception:
        return False
    return bool(torch.cuda.is_available())


def resolve_backend(name: str) -> str:
    """``auto`` -> ``vllm`` when vLLM imports and a GPU is visible, else ``hf``."""
    if name == "auto":
        return "vllm" if vllm_available() else "hf"
    if name not in ("vllm", "hf"):
        raise ValueError(f"unknown backend {name!r}")
    return name


def render_prompts(tokenizer, messages_list: Sequence[list[dict]]) -> list[str]:
    """Apply the tokenizer's chat template (generation prompt opened). A tokenizer without a
    template (a base model) gets the messages' contents joined by newlines."""
    out = []
    for messages in messages_list:
        if getattr(tokenizer, "chat_template", None):
            out.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        else:
            out.append("\n".join(m["content"] for m in messages))
    return out


class Generator(ABC):
    """A sampling backend as the evaluator drives it: ``tokenizer``, ``render`` and ``generate``."""

    tokenizer = None

    def render(self, messages_list: Sequence[list[dict]]) -> list:
        """The prompts :meth:`generate` takes: templated strings (:func:`render_prompts`)."""
        return render_prompts(self.tokenizer, messages_list)

    @abstractmethod
    def generate(self, prompts: Sequence, cfg: SamplingConfig, progress=None) -> list[list[str]]:
        """``cfg.n`` decoded completions per prompt, in prompt order; ``progress`` (a tqdm bar or
        None) is advanced by one per prompt done."""


class TorchSampler(Generator):
    """An in-memory Hugging Face model sampled with ``verl_ext.rollout.sampling.sample_batch``, the
    sampler the ``hf`` rollout trains with, so that an evaluation samples exactly as training does.

    Prompts are the chat template's token ids. ``generate`` repeats each prompt ``n`` times in a
    row and cuts that list into batches of ``batch_size`` (a batch may hold several prompts' samples)
    drawn from one ``torch.Generator`` seeded with ``cfg.seed``; the samples therefore depend on
    ``batch_size``, which callers keep fixed for comparable numbers. ``cfg.top_p`` applies as given
    (pass 1.0 for plain temperature sampling); no top-k.
    """

    def __init__(self, model, tokenizer, batch_size: int = 128):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def render(self, messages_list: Sequence[list[dict]]) -> list[list[int]]:
        out = []
        for messages in messages_list:
            ids = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
            out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
        return out

    def generate(self, prompts: Sequence[list[int]], cfg: SamplingConfig, progress=None) -> list[list[str]]:
        import torch

        from verl_ext.rollout.sampling import SamplingSpec, sample_batch

        gen = torch.Generator().manual_seed(cfg.seed)
        spec = SamplingSpec(temperature=cfg.temperature, top_p=cfg.top_p, top_k=-1, max_new_tokens=cfg.max_tokens)
        stop = {self.tokenizer.eos_token_id}
        flat = [p for p in prompts for _ in range(cfg.n)]
        texts: list[str] = []
        for start in range(0, len(flat), self.batch_size):
            outs = sample_batch(self.model, flat[start: start + self.batch_size], spec, stop,
                                self.tokenizer.pad_token_id, gen)
            texts.extend(self.tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outs)
            if progress is not None:
                progress.update(len(texts) // cfg.n - (len(texts) - len(outs)) // cfg.n)
        return [texts[i * cfg.n: (i + 1) * cfg.n] for i in range(len(prompts))]


class HFGenerator(Generator):
    """``transformers`` sampling; batches of prompts, ``n`` return sequences each."""

    def __init__(self, model_path: str, batch_size: int = 8, device: str | None = None, dtype: str | None = None,
                 trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if self.device == "cuda" else torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"  # decoder-only generation needs left padding
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype,
                                                          trust_remote_code=trust_remote_code).to(self.device)
        self.model.eval()
        self.batch_size = batch_size

    def generate(self, prompts: Sequence[str], cfg: SamplingConfig, progress=None) -> list[list[str]]:
        import torch

        torch.manual_seed(cfg.seed)
        results: list[list[str]] = []
        sample = cfg.temperature > 0
        gen_kwargs = dict(max_new_tokens=cfg.max_tokens, num_return_sequences=cfg.n, do_sample=sample,
                          pad_token_id=self.tokenizer.pad_token_id)
        if sample:
            gen_kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start: start + self.batch_size])
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            with torch.no_grad():
                out = self.model.generate(**enc, **gen_kwargs)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for i in range(len(chunk)):
                results.append(texts[i * cfg.n: (i + 1) * cfg.n])
            if progress is not None:
                progress.update(len(chunk))
        return results


class VLLMGenerator(Generator):
    """vLLM offline engine (GPU)."""

    def __init__(self, model_path: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None, seed: int = 0, dtype: str = "auto",
                 hf_overrides: dict | None = None, trust_remote_code: bool = False):
        from vllm import LLM

        kwargs = dict(model=model_path, tensor_parallel_size=tensor_parallel_size,
                      gpu_memory_utilization=gpu_memory_utilization, seed=seed, dtype=dtype,
                      trust_remote_code=trust_remote_code)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if hf_overrides:
            kwargs["hf_overrides"] = hf_overrides
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: Sequence[str], cfg: SamplingConfig, progress=None) -> list[list[str]]:
        from vllm import SamplingParams

        params = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                                skip_special_tokens=True)
        token_prompts = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]}
                         for p in prompts]
        outs = self.llm.generate(token_prompts, params, use_tqdm=True)
        if progress is not None:
            progress.update(len(prompts))
        return [[o.text for o in out.outputs] for out in outs]
