"""verl reward function: binary correctness of the final ``\\boxed{}`` answer.

``compute_score(data_source, solution_str, ground_truth, extra_info=None, timeout=5, grader=None, **kwargs)``
returns ``{"score": 1.0|0.0, "acc": 1.0|0.0, "pred": str, "timeout": 1.0|0.0, "grader_error": 1.0|0.0}``
and never raises.

* math: ``pred`` = the final answer: the last ``\\boxed{}``/``\\fbox{}``/``\\boxed x``, together with the
  boxes joined to it only by commas, "and", "or" (several boxes are graded as one list of
  answers, see :func:`verl_ext.reward.extract.final_answers`). No closed box -> 0 (no format
  reward or penalty, as in the release). A ground truth that itself contains ``\\boxed`` is
  unwrapped; a list ground truth is correct if any element matches.
* ``"gpqa"`` in ``data_source`` (case-insensitive): multiple choice; ``pred`` is the letter
  (see :func:`verl_ext.reward.extract.extract_choice_letter`), compared to the letter answer.

Grading path for math answers (``grader="default"``; see ``verl_ext/reward/README.md``):

1. in-process, parser-free, not timed: both answers cleaned (:mod:`verl_ext.reward.rewrite`);
   when both are cheap canonical forms (numbers in any spelling, infinity, angles, clock times,
   option letters: :mod:`verl_ext.reward.canonical`) the verdict is decided here, so it cannot
   depend on machine load;
2. otherwise a worker process (:mod:`verl_ext.reward.pool`) runs the judge
   (:mod:`verl_ext.reward.judge`: math-verify, then string equality if math-verify cannot judge)
   with a HARD per-answer ``timeout`` (seconds, default 5): an overrun kills the worker, the
   answer scores 0 and ``timeout`` = 1.0.

``grader_error`` = 1.0 flags an answer on which some layer raised: the exception is logged and
counted (:data:`LAYER_ERRORS`, the pool's ``errors``), and the next judge gave the verdict; only
when no judge is left (the extraction itself failed, a bad multiple-choice ground truth, a worker
that died) is the answer scored 0 because of it.

``grader="release"`` (or ``HPT_GRADER=release``) selects the release-style grader of earlier
versions instead (:mod:`verl_ext.reward.release`), for exact reproduction.

The worker pool is a per-process singleton of ``HPT_REWARD_WORKERS`` (default 2) processes,
re-created after a fork.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from typing import Any

from verl_ext.reward import release
from verl_ext.reward.canonical import decide_pair
from verl_ext.reward.extract import extract_choice_letter, final_answers, last_boxed_content
from verl_ext.reward.pool import GraderPool, PoolVerdict
from verl_ext.reward.rewrite import clean, squeeze

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
# Longer boxed contents are degenerate outputs; they are graded by string equality only, so
# that a 100 kB box cannot occupy a worker. Benchmark answers are < 300 characters.
MAX_ANSWER_CHARS = 5000
GRADERS = ("default", "release")

# Exceptions raised in an in-process layer of this process, by layer; each one fell through to
# the next judge and set grader_error on its answer. (Worker-side ones are in the pool's stats.)
LAYER_ERRORS: Counter = Counter()
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


def grader_mode(grader: str | None = None) -> str:
    mode = grader or os.environ.get("HPT_GRADER") or "default"
    if mode not in GRADERS:
        raise ValueError(f"unknown grader {mode!r}; expected one of {GRADERS}")
    return mode


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


def _fast(pred: str, gts: list[str]) -> tuple[bool | None, bool]:
    """(verdict or None, whether a layer raised). See :func:`fast_verdict`."""
    if len(pred) > MAX_ANSWER_CHARS:
        # degenerate output: exact text only (no pass over a huge string can be allowed to be slow)
        return any(pred.strip() == g.strip() for g in gts), False
    try:
        p = clean(pred)
        verdicts = []
        for g in gts:
            cg = clean(g)
            if p and squeeze(p) == squeeze(cg):
                return True, False
            verdicts.append(decide_pair(p, cg))
    except Exception as exc:  # counted; the judge in the worker decides instead
        LAYER_ERRORS["canonical"] += 1
        logger.warning("in-process grading layer raised (%s: %s); falling through to the judge. pred=%r gts=%r",
                       type(exc).__name__, str(exc)[:200], pred[:200], [g[:200] for g in gts])
        return None, True
    if any(v is True for v in verdicts):
        return True, False
    if verdicts and all(v is False for v in verdicts):
        return False, False
    return None, False


def fast_verdict(pred: str, gts: list[str]) -> bool | None:
    """In-process verdict from cheap canonical forms (equal cleaned strings, or two canonical
    values, :mod:`verl_ext.reward.canonical`): True/False, or None = needs the judge."""
    return _fast(pred, gts)[0]


def _result(correct: bool, pred: str | None, timed_out: bool = False, error: bool = False) -> dict:
    s = 1.0 if correct else 0.0
    return {"score": s, "acc": s, "pred": pred if pred is not None else "", "timeout": 1.0 if timed_out else 0.0,
            "grader_error": 1.0 if error else 0.0}


def final_prediction(solution_str: str) -> str | None:
    """The graded answer of a response: its final box(es), several joined by ", " (duplicates
    dropped), or None without a closed box."""
    last = last_boxed_content(solution_str)
    if last is None:
        return None
    boxes = final_answers(solution_str) or [last]
    unique = list(dict.fromkeys(boxes))
    return ", ".join(unique) if len(unique) > 1 else unique[0]


def score_math(solution_str: str, ground_truth: Any, timeout: float = DEFAULT_TIMEOUT_S,
               pool: GraderPool | None = None, grader: str | None = None) -> dict:
    mode = grader_mode(grader)
    if mode == "release":
        pred = last_boxed_content(solution_str)
        fast_fn = release.fast_verdict
    else:
        pred = final_prediction(solution_str)
        fast_fn = None
    if pred is None:
        return _result(False, None)
    gts = _ground_truths(ground_truth)
    if fast_fn is not None:
        fast, layer_error = fast_fn(pred, gts), False
    else:
        fast, layer_error = _fast(pred, gts)
    if fast is not None:
        return _result(fast, pred)
    verdict: PoolVerdict = (pool or get_pool()).grade(pred, gts, timeout, mode=mode)
    if mode == "release":  # the release flags errors only on answers they cost
        return _result(verdict.correct, pred, verdict.timed_out and not verdict.correct,
                       error=verdict.error is not None and not verdict.correct)
    return _result(verdict.correct, pred, verdict.timed_out and not verdict.correct,
                   error=layer_error or verdict.error is not None)


def score_choice(solution_str: str, ground_truth: Any) -> dict:
    letters = [extract_choice_letter(g if "\\boxed" in str(g) else f"\\boxed{{{g}}}", "ABCDEFGHIJ")
               for g in _as_list(ground_truth)]
    letters = [x for x in letters if x]
    if not letters:
        raise ValueError(f"multiple-choice ground truth is not a letter: {ground_truth!r}")
    pred = extract_choice_letter(solution_str, "ABCDEFGHIJ")
    return _result(pred is not None and pred in letters, pred)


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  timeout: float = DEFAULT_TIMEOUT_S, grader: str | None = None, **kwargs) -> dict:
    """verl entry point; see the module docstring. ``timeout`` and ``grader`` can be set from the
    verl config via ``reward.custom_reward_function.reward_kwargs``. Extra kwargs are ignored."""
    try:
        if is_gpqa(data_source):
            return score_choice(solution_str, ground_truth)
        return score_math(solution_str, ground_truth, timeout=timeout, grader=grader)
    except Exception as exc:  # no judge left (extraction, bad ground truth): score 0, flagged, never raised
        logger.warning("grader crashed (%s: %s); scored 0. data_source=%r gt=%r solution=%r", type(exc).__name__,
                       str(exc)[:200], data_source, str(ground_truth)[:200], str(solution_str)[-200:])
        return _result(False, None, error=True)
