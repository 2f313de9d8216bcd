"""Per-problem evaluation of one model for the arena: greedy correctness, sampled pass counts, texts.

The project's one evaluator (``verl_ext.eval.evaluator.evaluate_rows``: the ``hf`` rollout's
sampler, the training reward as grader), kept per problem here so that intervals and paired tests
can resample problems. Also the probe's check of a correct answer's written chain
(``verl_ext.arena.probe``, ``scripts/bench/arena_probe.py``).
"""

from __future__ import annotations

import re

import pandas as pd

from verl_ext.eval.evaluator import evaluate_rows


def level_of(row) -> int:
    return int(row["extra_info"]["level"])


def correct_counts(model, tokenizer, rows: pd.DataFrame, temperature: float = 0.0, samples: int = 1,
                   max_new_tokens: int = 48, seed: int = 0, batch_size: int = 256,
                   keep_text: int = 0) -> tuple[list[int], list[dict]]:
    """For each row, how many of ``samples`` responses are correct (score >= 1), and the first
    response of the first ``keep_text`` rows as {"question", "answer", "response", "correct"}."""
    model.eval()
    ev = evaluate_rows(model, tokenizer, rows, temperature=temperature, samples=samples,
                       max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    correct = ev.correct()
    texts = [{"question": row["extra_info"]["question"], "answer": row["reward_model"]["ground_truth"],
              "response": ev.texts[i][0], "correct": correct[i][0]}
             for i, row in enumerate(rows.to_dict("records")[:keep_text]) if samples > 0]
    return [sum(c) for c in correct], texts


def chain_is_wrong(text: str, demonstration: str) -> bool:
    """A written step that is false (``a+b=c`` with a + b != c; also ``-``, ``*``), or any chain but the
    demonstration's."""
    steps = re.findall(r"(\d+)([-+*])(\d+)=(\d+)", text)
    value = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    false = any(value[op](int(a), int(b)) != int(c) for a, op, b, c in steps)
    return false or text.strip() != demonstration.strip()
