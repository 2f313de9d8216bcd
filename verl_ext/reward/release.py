"""The release-style grader of earlier versions of this project, kept as an opt-in mode
(``compute_score(..., grader="release")`` or ``HPT_GRADER=release``) for exact reproduction of
numbers produced with it.

It follows the HPT release's ``entropy_math`` grading (``fast=False``): the last ``\\boxed{}``
only; an in-process fast path (:func:`fast_verdict`: equal Hendrycks-normalised strings, or two
plain numbers/integer fractions compared exactly); then, in a worker, string -> sympy ->
math-verify (:mod:`verl_ext.reward.equivalence`, :mod:`verl_ext.reward.normalize`).

Differences from the default grader, all measured on the grading corpus
(``tests/data/grading_corpus.jsonl``; table in ``verl_ext/reward/README.md``): the
normalisation drops units, ``\\text{}``, ``\\%`` and short left-hand sides before comparing
(``5\\text{ apples}`` and ``x > 5`` both lose information), numbers within 1e-4 relative
are left to math-verify's 6-decimal absolute rounding (``7.4e-12`` equals ``0``), e-notation is
read by math-verify as ``7.4 e - 12``, repeating decimals, bases, minutes/seconds, clock times,
unicode and markdown markup are not understood, several boxes are graded by the last one only,
and an exception in a grader scores the answer 0 (flagged) instead of falling through.
"""

from __future__ import annotations

import re

from verl_ext.reward.normalize import normalize_string, simple_rational

# Longer boxed contents are degenerate outputs, graded by string equality only.
MAX_ANSWER_CHARS = 5000
_INT_RE = re.compile(r"-?\d+")


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
