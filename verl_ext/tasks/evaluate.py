"""Held-out accuracy of a model on a verl RL test file, overall and per group.

Greedy decoding (or sampling with ``temperature``) with the batched sampler the ``hf`` rollout
uses, graded by the project's math reward (or any ``score_fn`` with verl's reward signature).
Groups: ``extra_info.level`` when every row has one (the arithmetic task: ``level_1`` ...), else the
row's ``data_source`` (a user's file; one group per source). Used for the CPU route's before/after
summary (``scripts/run_default.py``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Optional

import pandas as pd
import torch

from verl_ext.rollout.sampling import SamplingSpec, sample_batch


def row_group(row) -> str:
    """``level_<n>`` for rows with ``extra_info.level``, else the row's ``data_source``."""
    info = row["extra_info"] if isinstance(row.get("extra_info", None), dict) else {}
    level = info.get("level", None)
    if level is not None:
        return f"level_{int(level)}"
    return str(row.get("data_source", "all"))


def group_accuracy(model, tokenizer, rows: pd.DataFrame, max_new_tokens: int = 48, temperature: float = 0.0,
                   samples: int = 1, batch_size: int = 128, seed: int = 0,
                   score_fn: Optional[Callable[..., Any]] = None, prompt_key: str = "prompt") -> dict:
    """Mean accuracy overall and per group (:func:`row_group`): {"all": a, "level_1": a1, ...}.

    A response is correct when ``score_fn(data_source, text, ground_truth)`` (default: the project's
    math reward) scores >= 1."""
    if score_fn is None:
        from verl_ext.reward import compute_score as score_fn

    gen = torch.Generator().manual_seed(seed)
    spec = SamplingSpec(temperature=temperature, top_p=1.0, top_k=-1, max_new_tokens=max_new_tokens)
    stop = {tokenizer.eos_token_id}
    prompts, meta = [], []
    for _, row in rows.iterrows():
        ids = tokenizer.apply_chat_template(list(row[prompt_key]), add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        for _ in range(samples):
            prompts.append(ids)
            meta.append((row_group(row), row["reward_model"]["ground_truth"], row["data_source"]))
    scores = []
    for i in range(0, len(prompts), batch_size):
        outs = sample_batch(model, prompts[i: i + batch_size], spec, stop, tokenizer.pad_token_id, gen)
        for out, (group, gt, src) in zip(outs, meta[i: i + batch_size]):
            text = tokenizer.decode(out.token_ids, skip_special_tokens=True)
            res = score_fn(src, text, gt)
            s = res["score"] if isinstance(res, dict) else res
            scores.append((group, float(float(s) >= 1.0)))
    by_group = defaultdict(list)
    for group, s in scores:
        by_group[group].append(s)
    result = {"all": sum(s for _, s in scores) / max(len(scores), 1)}
    for group in sorted(by_group, key=lambda g: (not g.startswith("level_"), len(g), g)):
        result[group] = sum(by_group[group]) / len(by_group[group])
    return result


def level_accuracy(model, tokenizer, rows: pd.DataFrame, max_new_tokens: int = 48, temperature: float = 0.0,
                   samples: int = 1, batch_size: int = 128, seed: int = 0) -> dict:
    """The arithmetic task's accuracy per difficulty level: {"all": a, "level_1": a1, ...}."""
    return group_accuracy(model, tokenizer, rows, max_new_tokens, temperature, samples, batch_size, seed)
