"""Release mode only (``grader="release"``, see :mod:`verl_ext.reward.release`): mathematical
equivalence of a predicted answer and a ground truth (the parser-based part).

``pred`` is correct for ``gt`` when any of three graders accepts it, tried cheapest first (the
HPT release's ``entropy_math`` order with ``fast=False``):

1. string: ``normalize_string(pred) == normalize_string(gt)``;
2. sympy: both sides rendered to text, split into elements when bracketed (``(a,b)``/``[a,b)``:
   ordered, brackets must agree) or braced (``\\{a,b\\}``: unordered), each element pair equal when
   ``simplify(gt - pred) == 0``. Guards as in the PRM800K grader: unreduced fractions must match
   literally, an integer is only equal to an integer, and expressions with exponent towers,
   multi-digit exponents or more than two unknown letters are not handed to sympy at all;
3. math-verify: ``verify(parse($gt$), parse($pred$))``; skipped for long, highly repetitive
   predictions (degenerate outputs), whose parse is slow and never correct.

This module may hang on pathological inputs (sympy and big-integer arithmetic cannot always be
interrupted), so it is only ever called inside a worker process that the parent can kill
(``verl_ext.reward.pool``). ``stage_timeout`` soft limits use SIGALRM and therefore only work in
the main thread of that worker process.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from verl_ext.reward.judge import StageTimeout, soft_time_limit
from verl_ext.reward.normalize import normalize_for_sympy, normalize_string, strip_thousands_separators


@dataclass
class Verdict:
    correct: bool
    stage: str  # which grader accepted ("string" | "sympy" | "math_verify") or "none"
    timed_out: bool = False  # a soft stage limit fired before any grader accepted


# --- sympy grader ----------------------------------------------------------------------------

_OPEN, _CLOSE = "([", ")]"
_BAD_SUBSTRINGS = ("^{", "^(")
_BAD_REGEXES = (re.compile(r"\^[0-9]+\^"), re.compile(r"\^[0-9][0-9]+"))


def _split_elements(expr: str) -> list[str]:
    """Elements of an ordered tuple/interval ``(a,b)``/``[a,b)``; else ``[expr]``.

    Only a single, un-nested bracket level is split, as nested tuples are rare in these
    benchmarks and would need a real parser. (Sets ``\\{a,b\\}`` are handled by ``_brace_set``.)
    """
    expr = strip_thousands_separators(expr)
    if len(expr) > 2 and expr[0] in _OPEN and expr[-1] in _CLOSE and not any(c in expr[1:-1] for c in "()[]"):
        return [e.strip() for e in expr[1:-1].split(",")]
    return [expr]


def _is_frac_literal(s: str) -> bool:
    return bool(re.fullmatch(r"-?[0-9]+\.?/0*[1-9][0-9]*\.?", s))


def _is_int_string(s: str) -> bool:
    try:
        f = float(strip_thousands_separators(s))
    except ValueError:
        return False
    return abs(f - round(f)) <= 1e-7


def _sympy_allowed(expr: str) -> bool:
    letters = {c for c in expr.replace("sqrt", "").replace("frac", "") if c.isalpha()}
    if len(letters) > 2:
        return False
    if any(b in expr for b in _BAD_SUBSTRINGS):
        return False
    return not any(r.search(expr) for r in _BAD_REGEXES)


def _sympy_equal(gt: str, pred: str) -> bool:
    import sympy
    from sympy.parsing import sympy_parser

    expr = f"({gt})-({pred})"
    if not _sympy_allowed(expr):
        return False
    try:
        diff = sympy_parser.parse_expr(
            expr.replace("^", "**"),
            transformations=sympy_parser.standard_transformations
            + (sympy_parser.implicit_multiplication_application,),
        )
        return sympy.simplify(diff) == 0
    except StageTimeout:
        raise
    except Exception:
        return False


def _element_equal(gt: str, pred: str) -> bool:
    if gt == pred:
        return True
    if _is_frac_literal(gt) and _is_frac_literal(pred):
        return False  # "2/4" is not an acceptable form of "1/2": no simplification here
    if _is_int_string(gt) != _is_int_string(pred):
        return False
    return _sympy_equal(gt, pred)


def sympy_grade(pred: str, gt: str) -> bool:
    """Grader 2 (see module doc)."""
    g, p = normalize_for_sympy(gt), normalize_for_sympy(pred)
    if g is None or p is None or not p:
        return False
    if g == p:
        return True
    g_set, p_set = _brace_set(gt), _brace_set(pred)
    if g_set is not None and p_set is not None:
        return _unordered_equal(g_set, p_set)
    g_elems = _split_elements(g)
    p_elems = _split_elements(p)
    if len(g_elems) > 1 and (g[0] != p[0] or g[-1] != p[-1]):
        return False  # (a,b) vs [a,b): an open and a closed interval differ
    if len(g_elems) != len(p_elems):
        return False
    return all(_element_equal(a, b) for a, b in zip(g_elems, p_elems))


def _brace_set(latex: str) -> list[str] | None:
    """Elements of a LaTeX set ``\\{a, b\\}`` (normalised for sympy), or None if not a set."""
    s = latex.strip().replace("\\left", "").replace("\\right", "")
    if not (s.startswith("\\{") and s.endswith("\\}")):
        return None
    inner = strip_thousands_separators(s[2:-2])
    return [normalize_for_sympy(e.strip()) or "" for e in inner.split(",")]


def _unordered_equal(gts: list[str], preds: list[str]) -> bool:
    """Multiset equality under :func:`_element_equal` (greedy matching is exact for an
    equivalence relation)."""
    if len(gts) != len(preds):
        return False
    remaining = list(preds)
    for g in gts:
        for i, p in enumerate(remaining):
            if _element_equal(g, p):
                del remaining[i]
                break
        else:
            return False
    return True


# --- math-verify grader ----------------------------------------------------------------------


def is_repetitive(s: str, min_len: int = 128, ratio: float = 0.1) -> bool:
    """Long and compressible to under ``ratio`` of its size: a degenerate, looping output."""
    if len(s) <= min_len:
        return False
    data = s.encode("utf-8", "replace")
    return len(zlib.compress(data, 6)) < ratio * len(data)


def math_verify_grade(pred: str, gt: str) -> bool:
    """Grader 3 (see module doc). math-verify's own signal timeouts are disabled: the caller's
    soft limit and the parent's hard kill bound the time instead."""
    import logging

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)

    def _p(s: str):
        s = s.replace("\n", " ")
        if "$" not in s:
            s = f"${s}$"
        return parse(
            s,
            extraction_config=(LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()),
            fallback_mode="no_fallback",
            extraction_mode=["first_match"],
            parsing_timeout=None,
        )

    if is_repetitive(pred) or is_repetitive(gt):
        return False
    try:
        g, p = _p(gt), _p(pred)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=None))
    except StageTimeout:
        raise
    except Exception:
        return False


# --- all graders -----------------------------------------------------------------------------


def grade(pred: str, gt: str, sympy_timeout: float | None = None, math_verify_timeout: float | None = None) -> Verdict:
    """Run graders 1-3 until one accepts. Soft limits per stage (main thread only)."""
    if normalize_string(pred) == normalize_string(gt):
        return Verdict(True, "string")
    timed_out = False
    layers = (("sympy", sympy_grade, sympy_timeout), ("math_verify", math_verify_grade, math_verify_timeout))
    for name, fn, limit in layers:
        try:
            with soft_time_limit(limit):
                if fn(pred, gt):
                    return Verdict(True, name)
        except StageTimeout:
            timed_out = True
    return Verdict(False, "none", timed_out)
