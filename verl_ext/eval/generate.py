"""Sampling backends for evaluation: vLLM (GPU) and Hugging Face ``generate`` (CPU fallback).

Both take already-templated prompt strings (so prompt formatting is identical across
backends), tokenise them without adding special tokens (the chat template already contains
them), and return ``n`` decoded completions per prompt with special tokens removed.
"""

from __future__ import annotations

import logging
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


class HFGenerator:
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


class VLLMGenerator:
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
