"""The judge: math-verify, then a string comparison when math-verify cannot judge.

Runs inside a grading worker process (``verl_ext.reward.worker``), under a soft SIGALRM limit and
the parent's hard kill, because parsing and sympy can take unbounded time on some inputs.

Order (each a fall-through, never a silent 0):

1. **math-verify** on both answers after :func:`verl_ext.reward.rewrite.for_math_verify`, called
   as verl's own ``math_verify`` scorer calls it: the ground truth boxed and parsed with
   ``LatexExtractionConfig``, the prediction boxed and parsed with ``ExprExtractionConfig`` +
   ``LatexExtractionConfig``, correct when any parsed pair verifies. Its verdict is final when
   both sides parse.
2. **string**: equal cleaned strings (:func:`verl_ext.reward.rewrite.squeeze`). Used when math-verify raised, timed out,
   or could not parse one side (it then has nothing to compare); an exception or a timeout in
   step 1 is recorded in ``errors``/``timed_out`` and reported to the caller, who counts it.

The project's own sympy grader of earlier versions is not in the default path: on the grading
corpus math-verify alone was right at least as often on every kind it decided.
"""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass, field

from verl_ext.reward.rewrite import clean, for_math_verify, squeeze


class StageTimeout(BaseException):
    """Raised by the SIGALRM soft limit. A BaseException so that the ``except Exception`` blocks
    inside sympy and math-verify cannot swallow it."""


@contextlib.contextmanager
def soft_time_limit(seconds: float | None):
    """Raise :class:`StageTimeout` after ``seconds`` (main thread only; no-op for None/<=0)."""
    if not seconds or seconds <= 0:
        yield
        return

    def _raise(signum, frame):
        raise StageTimeout()

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Verdict:
    correct: bool
    stage: str  # the judge that decided: "math_verify" | "string"
    timed_out: bool = False
    errors: list[str] = field(default_factory=list)  # exceptions of judges that fell through


_GOLD_CFG = None
_PRED_CFG = None


def _configs():
    global _GOLD_CFG, _PRED_CFG
    if _GOLD_CFG is None:
        from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

        _GOLD_CFG = (LatexExtractionConfig(),)
        _PRED_CFG = (ExprExtractionConfig(), LatexExtractionConfig())
    return _GOLD_CFG, _PRED_CFG


def math_verify_judge(pred: str, gt: str) -> bool | None:
    """math-verify's verdict, or None when one side does not parse (nothing to compare).
    Its own signal timeouts are off: the caller's soft limit and the parent's kill bound it."""
    from math_verify.grader import verify
    from math_verify.parser import parse

    gold_cfg, pred_cfg = _configs()
    gold = parse("\\boxed{" + for_math_verify(gt) + "}", gold_cfg, parsing_timeout=None)
    parsed = parse("\\boxed{" + for_math_verify(pred) + "}", pred_cfg, parsing_timeout=None)
    if not gold or not parsed:
        return None
    return any(verify(g, p, timeout_seconds=None) for g in gold for p in parsed)


def string_judge(pred: str, gt: str) -> bool:
    a, b = squeeze(clean(pred)), squeeze(clean(gt))
    return bool(a) and a == b


def grade(pred: str, gt: str, time_limit: float | None = None) -> Verdict:
    """Judge ``pred`` against one ground truth (see the module docstring)."""
    errors: list[str] = []
    timed_out = False
    try:
        with soft_time_limit(time_limit):
            mv = math_verify_judge(pred, gt)
        if mv is not None:
            return Verdict(mv, "math_verify")
    except StageTimeout:
        timed_out = True
    except Exception as exc:  # a math-verify bug: counted, and the next judge decides
        errors.append(f"math_verify: {type(exc).__name__}: {exc}"[:200])
    return Verdict(string_judge(pred, gt), "string", timed_out, errors)
