"""Unbiased pass@k (Chen et al., 2021) and avg@k, per question and per benchmark.

For a question with ``n`` samples of which ``c`` are correct, the unbiased estimator of the
probability that at least one of ``k`` samples (drawn without replacement) is correct is

    pass@k = 1 - C(n-c, k) / C(n, k)

and, as a product that never forms the huge binomials (numerically stable for n in the
thousands),

    C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)        (when n - c >= k; else pass@k = 1).

avg@k is the mean correctness over the k samples of a question (what the paper reports as
pass@1 with n = k samples: "avg@32" on AIME/AMC). A benchmark score is the mean over questions.

This module is the project's one pass@k: the benchmark evaluation (``runner``) and the arena's
report (``verl_ext.arena.report``, through :func:`pass_at_k_curve`) both use it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one question (see module docstring)."""
    if not (0 <= c <= n):
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not (1 <= k <= n):
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_curve(counts: Iterable[int], n: int, ks: Iterable[int]) -> dict[int, float]:
    """Mean pass@k over problems for each k, from every problem's number of correct samples
    (``counts``) out of the same ``n`` samples (the arena's fixed pass@k subset)."""
    counts = list(counts)
    return {int(k): float(np.mean([pass_at_k(n, int(c), int(k)) for c in counts])) for k in ks}


def avg_at_k(scores: Sequence[float]) -> float:
    """Mean correctness of one question's samples."""
    if len(scores) == 0:
        raise ValueError("no samples")
    return float(np.mean(np.asarray(scores, dtype=np.float64)))


def powers_of_two_up_to(n: int) -> list[int]:
    """1, 2, 4, ... <= n (the k grid of the paper's pass@k curves)."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks


def aggregate_benchmark(per_question: Mapping[str, Sequence[float]], ks: Iterable[int] | None = None) -> dict:
    """Benchmark summary from ``{question_id: [0/1 score per sample]}``.

    Returns ``{"num_questions", "n" (min samples per question), "avg@n", "pass@k": {k: value}}``
    with every value a mean over questions. Scores are binarised with ``> 0.5`` for pass@k.
    ``ks`` defaults to the powers of two up to the smallest per-question sample count (pass@k is
    undefined for k > n).
    """
    if not per_question:
        raise ValueError("no questions")
    counts = {q: len(s) for q, s in per_question.items()}
    n_min = min(counts.values())
    if n_min == 0:
        raise ValueError("a question has no samples")
    ks = sorted(set(ks)) if ks is not None else powers_of_two_up_to(n_min)
    bad = [k for k in ks if k > n_min or k < 1]
    if bad:
        raise ValueError(f"k={bad} outside 1..{n_min} (smallest number of samples per question)")
    avg = float(np.mean([avg_at_k(s) for s in per_question.values()]))
    passk = {}
    for k in ks:
        vals = [pass_at_k(len(s), int(sum(1 for x in s if x > 0.5)), k) for s in per_question.values()]
        passk[k] = float(np.mean(vals))
    return {
        "num_questions": len(per_question),
        "n": n_min,
        "n_max": max(counts.values()),
        f"avg@{n_min}": avg,
        "avg": avg,
        "pass@k": passk,
    }


def aggregate_records(records: Iterable[Mapping], ks: Iterable[int] | None = None) -> dict[str, dict]:
    """Per-benchmark summaries from sample records with keys ``benchmark``, ``question_id``,
    ``score`` (the per-sample JSONL rows written by ``scripts/eval/evaluate.py``)."""
    grouped: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        grouped[r["benchmark"]][str(r["question_id"])].append(float(r["score"]))
    return {b: aggregate_benchmark(qs, ks) for b, qs in grouped.items()}
