"""Held-out accuracy of a model on the arithmetic task, per difficulty level.

Greedy decoding (or sampling with ``temperature``) with the batched sampler the ``hf`` rollout
uses, graded by the project's math reward. Used for the embedded default's before/after summary.
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd
import torch

from verl_ext.rollout.sampling import SamplingSpec, sample_batch


def level_accuracy(model, tokenizer, rows: pd.DataFrame, max_new_tokens: int = 48, temperature: float = 0.0,
                   samples: int = 1, batch_size: int = 128, seed: int = 0) -> dict:
    """Mean accuracy overall and per ``extra_info.level``: {"all": a, "level_1": a1, ...}."""
    from verl_ext.reward import compute_score

    gen = torch.Generator().manual_seed(seed)
    spec = SamplingSpec(temperature=temperature, top_p=1.0, top_k=-1, max_new_tokens=max_new_tokens)
    stop = {tokenizer.eos_token_id}
    prompts, meta = [], []
    for _, row in rows.iterrows():
        ids = tokenizer.apply_chat_template(list(row["prompt"]), add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        for _ in range(samples):
            prompts.append(ids)
            meta.append((row["extra_info"]["level"], row["reward_model"]["ground_truth"], row["data_source"]))
    scores = []
    for i in range(0, len(prompts), batch_size):
        outs = sample_batch(model, prompts[i: i + batch_size], spec, stop, tokenizer.pad_token_id, gen)
        for out, (level, gt, src) in zip(outs, meta[i: i + batch_size]):
            text = tokenizer.decode(out.token_ids, skip_special_tokens=True)
            scores.append((level, float(compute_score(src, text, gt)["score"])))
    by_level = defaultdict(list)
    for level, s in scores:
        by_level[int(level)].append(s)
    result = {"all": sum(s for _, s in scores) / max(len(scores), 1)}
    for level in sorted(by_level):
        result[f"level_{level}"] = sum(by_level[level]) / len(by_level[level])
    return result
