"""Held-out accuracy of a model on a verl RL test file, overall and per group.

Greedy decoding (or sampling with ``temperature``) with the batched sampler the ``hf`` rollout
uses, graded by the project's math reward (or any ``score_fn`` with verl's reward signature): the
project's one evaluator (``verl_ext.eval.evaluator.evaluate_rows``), summed up per group here.
Groups: ``extra_info.level`` when every row has one (the arithmetic task: ``level_1`` ...), else the
row's ``data_source`` (a user's file; one group per source). Used for the CPU route's before/after
summary (``scripts/run_default.py``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Optional

import pandas as pd

from verl_ext.eval.evaluator import evaluate_rows


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
    ev = evaluate_rows(model, tokenizer, rows, temperature=temperature, samples=samples,
                       max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, score_fn=score_fn,
                       prompt_key=prompt_key)
    by_group = defaultdict(list)
    for row, correct in zip(rows.to_dict("records"), ev.correct()):
        by_group[row_group(row)].extend(float(ok) for ok in correct)
    scores = [s for group in by_group.values() for s in group]
    result = {"all": sum(scores) / max(len(scores), 1)}
    for group in sorted(by_group, key=lambda g: (not g.startswith("level_"), len(g), g)):
        result[group] = sum(by_group[group]) / len(by_group[group])
    return result


def level_accuracy(model, tokenizer, rows: pd.DataFrame, max_new_tokens: int = 48, temperature: float = 0.0,
                   samples: int = 1, batch_size: int = 128, seed: int = 0) -> dict:
    """The arithmetic task's accuracy per difficulty level: {"all": a, "level_1": a1, ...}."""
    return group_accuracy(model, tokenizer, rows, max_new_tokens, temperature, samples, batch_size, seed)
