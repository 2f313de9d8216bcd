"""verl reward function: binary correctness of the last ``\\boxed{}`` answer (HPT release style).

``compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs)`` returns
``{"score": 1.0|0.0, "acc": 1.0|0.0, "pred": str, "timeout": 1.0|0.0, "grader_error": 1.0|0.0}``
and never raises: a grader crash (an exception in this process, a worker that died or reported
an error) scores 0 with ``grader_error`` = 1.0 and a logged warning, so one bad answer or ground
truth cannot kill a training step (the HPT trainer sums both flags into ``hpt/reward/*``):

* math: ``pred`` = content of the last ``\\boxed{}``/``\\fbox{}``/``\\boxed x`` (no box -> 0, no
  format reward or penalty, as in the release). A ground truth that itself contains ``\\boxed``
  is unwrapped; a list ground truth is correct if any element matches.
* ``"gpqa"`` in ``data_source`` (case-insensitive): multiple choice; ``pred`` is the letter
  (see :func:`verl_ext.reward.extract.extract_choice_letter`), compared to the letter answer.

Grading path for math answers:
1. fast path, in-process and parser-free: equal normalised strings -> 1; plain numbers or
   integer fractions on both sides -> compared as exact rationals (equal -> 1; apart by more
   than 1e-4 relative -> 0, which no grader would accept);
2. otherwise the answer goes to a worker process (``verl_ext.reward.pool``) that runs
   string/sympy/math-verify with a HARD per-answer ``timeout`` (seconds, default 5): the worker
   is killed when it overruns, the answer scores 0, and ``timeout`` = 1.0 in the result (and a
   warning is logged), so a timed-out answer is never silently indistinguishable from a wrong one.

The worker pool is a per-process singleton of ``HPT_REWARD_WORKERS`` (default 2) processes,
re-created after a fork.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

from verl_ext.reward.extract import extract_choice_letter, last_boxed_content
from verl_ext.reward.normalize import normalize_string, simple_rational
from verl_ext.reward.pool import GraderPool, PoolVerdict

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
# Longer boxed contents are degenerate outputs; they are graded by string equality only, so
# that a 100 kB box cannot occupy a worker. Benchmark answers are < 300 characters.
MAX_ANSWER_CHARS = 5000

_INT_RE = re.compile(r"-?\d+")
_pool: GraderPool | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def get_pool() -> GraderPool:
    """The process-wide grading pool (created on first use; a forked child gets its own)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = GraderPool(num_workers=int(os.environ.get("HPT_REWARD_WORKERS", "2")))
            _pool_pid = os.getpid()
        return _pool


def is_gpqa(data_source: str | None) -> bool:
    return data_source is not None and "gpqa" in str(data_source).lower()


def _as_list(ground_truth: Any) -> list:
    """A list ground truth may arrive as a numpy array (parquet list column via verl)."""
    if isinstance(ground_truth, (list, tuple)) or type(ground_truth).__name__ == "ndarray":
        return list(ground_truth)
    return [ground_truth]


def _ground_truths(ground_truth: Any) -> list[str]:
    gts = _as_list(ground_truth)
    out = []
    for gt in gts:
        gt = str(gt).strip()
        if "\\boxed" in gt or "\\fbox" in gt:
            gt = last_boxed_content(gt) or gt
        out.append(gt)
    return out


def fast_verdict(pred: str, gts: list[str]) -> bool | None:
    """Decide without any parser when possible: True/False, or None = needs the full graders."""
    if len(pred) > MAX_ANSWER_CHARS:
        # checked before normalising: some normalisation passes are quadratic in the worst case
        return any(pred.strip() == g.strip() for g in gts)
    p = normalize_string(pred)
    norm_gts = [normalize_string(g) for g in gts]
    if any(p == g for g in norm_gts):
        return True
    if _INT_RE.fullmatch(p or "") and all(_INT_RE.fullmatch(g or "") for g in norm_gts):
        return False
    # Plain numbers/fractions on both sides: compare exact values. Equal values are accepted by
    # math-verify anyway; values further apart than its float rounding (6 decimals) can be
    # accepted by no grader. Anything in between goes to the full graders.
    pv = simple_rational(p)
    gvs = [simple_rational(g) for g in norm_gts]
    if pv is not None and all(g is not None for g in gvs):
        if any(pv == g for g in gvs):
            return True
        if all(abs(pv - g) > 1e-4 * max(1, abs(g)) for g in gvs):
            return False
    return None


def _result(correct: bool, pred: str | None, timed_out: bool = False, error: bool = False) -> dict:
    s = 1.0 if correct else 0.0
    return {"score": s, "acc": s, "pred": pred if pred is not None else "", "timeout": 1.0 if timed_out else 0.0,
            "grader_error": 1.0 if error else 0.0}


def score_math(solution_str: str, ground_truth: Any, timeout: float = DEFAULT_TIMEOUT_S,
               pool: GraderPool | None = None) -> dict:
    pred = last_boxed_content(solution_str)
    if pred is None:
        return _result(False, None)
    gts = _ground_truths(ground_truth)
    fast = fast_verdict(pred, gts)
    if fast is not None:
        return _result(fast, pred)
    verdict: PoolVerdict = (pool or get_pool()).grade(pred, gts, timeout)
    return _result(verdict.correct, pred, verdict.timed_out and not verdict.correct,
                   error=verdict.error is not None and not verdict.correct)


def score_choice(solution_str: str, ground_truth: Any) -> dict:
    letters = [extract_choice_letter(g if "\\boxed" in str(g) else f"\\boxed{{{g}}}", "ABCDEFGHIJ")
               for g in _as_list(ground_truth)]
    letters = [x for x in letters if x]
    if not letters:
        raise ValueError(f"multiple-choice ground truth is not a letter: {ground_truth!r}")
    pred = extract_choice_letter(solution_str, "ABCDEFGHIJ")
    return _result(pred is not None and pred in letters, pred)


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  timeout: float = DEFAULT_TIMEOUT_S, **kwargs) -> dict:
    """verl entry point; see the module docstring. ``timeout`` can be set from the verl config
    via ``reward.custom_reward_function.reward_kwargs.timeout``. Extra kwargs are ignored."""
    try:
        if is_gpqa(data_source):
            return score_choice(solution_str, ground_truth)
        return score_math(solution_str, ground_truth, timeout=timeout)
    except Exception as exc:  # a grader bug or bad ground truth: score 0, flagged, never raised
        logger.warning("grader crashed (%s: %s); scored 0. data_source=%r gt=%r solution=%r", type(exc).__name__,
                       str(exc)[:200], data_source, str(ground_truth)[:200], str(solution_str)[-200:])
        return _result(False, None, error=True)
