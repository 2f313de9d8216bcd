"""Cheap canonical forms, decided in-process before the timed, killable judge.

An answer that is a plain *number* in one of the spellings below, an angle in degrees/minutes/
seconds, a clock time or a multiple-choice letter is turned into an exact value by regular
expressions, and two such values are compared here, without any parser. This is the part of
grading that must not depend on machine load: a verdict reached here is the same on an idle and
on a loaded machine (the judge behind it runs under a time limit and can time out).

Numbers (all exact, as :class:`fractions.Fraction`):

* integers, decimals, ``\\frac{a}{b}``/``a/b``, mixed numbers (``2\\frac{1}{2}``, ``7 3/4``);
* thousands separators *inside one number* only: ``1,234,567``, ``1{,}234``, ``1\\,234``,
  ``1 234 567`` (groups of exactly three digits; ``1,5`` and ``12, 345`` are lists, not numbers);
* scientific notation in every usual spelling: ``7.4e-12``, ``7.4E-12``, ``7.4\\times10^{-12}``,
  ``7.4\\cdot 10^{-12}``, ``10^{-5}``;
* repeating decimals ``0.1\\overline{6}`` (= 1/6);
* numbers in another base with a subscript ``1011_2``/``4210_{5}`` (a prediction without a
  subscript is read in the ground truth's base: the question asked for those digits);
* infinity in every spelling (``\\infty``, ``+\\infty``, ``inf``, ``\\text{infinity}``, ``∞``);
* a percent sign (``50\\%`` matches ``50`` and ``0.5``), a degree sign, a dollar sign, a
  trailing unit word or ``\\text{...}``/``\\mathrm{...}`` unit (never a single letter such as
  ``e`` or ``i``, never ``\\pi``), ``million``/``billion``.

Equality: exact, or within a relative tolerance of 1e-6 of the ground truth (so ``0.333333`` is
``1/3`` and ``7.4e-12`` is never ``0``: no absolute rounding); an integer ground truth is never
matched by a non-integer, whatever the tolerance.

Arithmetic on such numbers (``2^{10}``, ``\\frac{1}{2^{56}}``, ``5!``, ``3\\cdot 10 + 1``) is
evaluated exactly by :mod:`verl_ext.reward.exact` and compared the same way: math-verify's absolute
tolerance would make all tiny values equal.

Everything that is not one of these forms (expressions with symbols, tuples, intervals, matrices,
equations, text) returns ``None`` here and goes to math-verify.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

# |exponent| above MAX_EXP: not a "cheap" number (10^(10^10) goes to the judge); answers over MAX_CHARS neither
from verl_ext.reward.exact import MAX_CHARS, MAX_EXP, exact_value
from verl_ext.reward.extract import _letter_from_short

REL_TOL = Fraction(1, 10**6)

_INT = r"\d+"
_SEP_INT = r"\d{1,3}(?:(?:,|\{,\}|\\,|\\!|\s)\d{3})+"  # one separator kind is checked below
_DEC = r"(?:\d+\.\d*|\.\d+)"
_SIGN = r"(?P<sign>[-+]?)\s*"
_MANT = rf"(?P<mant>{_SEP_INT}(?:\.\d+)?|{_DEC}|{_INT})"
_TEN_POW = r"10\s*\^\s*(?:\{\s*(?P<exp1>[-+]?\s*\d+)\s*\}|(?P<exp2>[-+]?\d))"
_NUMBER_RE = re.compile(
    rf"{_SIGN}(?:"
    rf"{_MANT}(?:\s*[eE](?P<eexp>[-+]?\d+)|\s*(?:\\times|\\cdot|\*|x)\s*{_TEN_POW})?"
    rf"|(?P<bare>{_TEN_POW.replace('exp1', 'bexp1').replace('exp2', 'bexp2')})"
    rf")"
)
def _frac_arg(n: str) -> str:
    return r"(?:\{\s*(?P<%s>[-+]?\d+)\s*\}|(?P<%sd>\d))" % (n, n)



_FRAC_RE = re.compile(
    rf"{_SIGN}(?:(?P<whole>\d+)\s*)?\\[dt]?frac\s*{_frac_arg('num')}\s*{_frac_arg('den')}"
)
_SLASH_RE = re.compile(rf"{_SIGN}(?:(?P<whole>\d+)\s+)?(?P<num>\d+)\s*/\s*(?P<den>\d+)")
_REPEAT_RE = re.compile(rf"{_SIGN}(?P<int>\d*)\.(?P<pre>\d*)\\overline\s*\{{\s*(?P<rep>\d+)\s*\}}")
_BASE_RE = re.compile(r"(?P<sign>-?)(?P<digits>[0-9A-Za-z]+)_\s*(?:\{\s*(?P<b1>\d+)\s*\}|(?P<b2>\d))")
_INF_RE = re.compile(r"(?P<sign>[-+]?)\s*\\infty")
_DMS_RE = re.compile(
    r"(?P<sign>-?)(?P<deg>\d+(?:\.\d+)?)\s*\^\s*\{?\\circ\}?\s*"
    r"(?:(?P<min>\d+(?:\.\d+)?)\s*(?:'|\^\s*\{?\\prime\}?)\s*)?"
    r"(?:(?P<sec>\d+(?:\.\d+)?)\s*(?:''|\"|\^\s*\{?\\prime\\prime\}?)\s*)?"
)
_CLOCK_RE = re.compile(r"(?P<h>\d{1,2}):(?P<m>[0-5]\d)\s*(?:\\text\{\s*)?(?P<ampm>[ap]\.?m\.?)?\s*\}?", re.I)

# Unit words dropped after a number (whole words, length >= 2, never a constant such as "pi").
_UNIT_TAIL_RE = re.compile(
    r"(?<=[\d}%.])\s*(?:\\(?:text|mathrm|mbox|textrm|operatorname)\s*\{[^{}]*\}\s*(?:\^\s*\{?\d\}?)?\s*)+$")
_WORD_TAIL_RE = re.compile(r"(?<=[\d}%])\s+(?:[A-Za-z]{2,}(?:/[A-Za-z]+)?(?:\^\{?\d\}?)?\s*)+$")
_NUMBER_WORDS = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_CONSTANT_WORDS = {"pi", "e", "i", "inf", "infty", "infinity", "and", "or"}
_CHOICE_GT_RE = re.compile(r"^(?:\\text(?:bf)?\s*\{\s*)?\(?\s*([A-E])\s*\)?(?:\s*\})?$")


@dataclass(frozen=True)
class Value:
    """A canonical answer: ``kind`` is "number" | "inf" | "clock" | "choice"."""

    kind: str
    num: Fraction | None = None  # number as written (percent sign removed)
    pct: bool = False  # written with a percent sign
    sign: int = 1  # for "inf"
    digits: str | None = None  # numbers written with a base subscript: their digits ...
    base: int | None = None  # ... and base
    plain_digits: str | None = None  # an unsigned integer written without separators/base
    text: str | None = None  # clock "h:mm" or choice letter
    integer_written: bool = False  # written as an integer (not 2.0, not 4e3)


# "28 percent", "28 \\text{ pct}", "28 percentage": a percent sign in words
_PERCENT_WORD_RE = re.compile(r"\s*(?:\\text\{\s*(?:percent|percentage|pct)\s*\}|\b(?:percent|percentage|pct))\s*$",
                              re.IGNORECASE)


def _strip_units(s: str) -> tuple[str, int]:
    """Drop a trailing unit (``\\text{ cm}``, ``mph``, ``square units``); apply number words.
    Returns the rest and a multiplier (``12 \\text{ million}`` -> ``12``, 10**6)."""
    mult = 1
    m = _UNIT_TAIL_RE.search(s)
    if m:
        words = re.findall(r"\{([^{}]*)\}", m.group(0))
        text = " ".join(words).strip().strip("~").strip().lower()
        if text in _CONSTANT_WORDS or not text:
            return s, 1
        if text in _NUMBER_WORDS:
            mult = _NUMBER_WORDS[text]
        s = s[: m.start()].rstrip()
    m = _WORD_TAIL_RE.search(s)
    if m:
        words = [w.lower() for w in re.findall(r"[A-Za-z]+", m.group(0))]
        if any(w in _CONSTANT_WORDS for w in words):
            return s, mult
        if len(words) == 1 and words[0] in _NUMBER_WORDS:
            mult *= _NUMBER_WORDS[words[0]]
        s = s[: m.start()].rstrip()
    return s, mult


def _exp(*parts) -> int | None:
    for p in parts:
        if p is not None:
            e = int(p.replace(" ", ""))
            return e if abs(e) <= MAX_EXP else None
    return 0


def _plain_number(s: str) -> tuple[Fraction, bool, str | None] | None:
    """Value, written-as-integer, plain digits of a number without units; None if not one."""
    m = _NUMBER_RE.fullmatch(s)
    if m:
        sign = -1 if m.group("sign") == "-" else 1
        if m.group("bare") is not None:
            e = _exp(m.group("bexp1"), m.group("bexp2"))
            return (None if e is None else (sign * Fraction(10) ** e, False, None))
        mant = m.group("mant")
        seps = set(re.findall(r"\{,\}|\\,|\\!|,|\s", mant))
        if len(seps) > 1:
            return None  # "1,234 567": mixed separators are not one number
        digits = re.sub(r"\{,\}|\\,|\\!|,|\s", "", mant)
        e = _exp(m.group("eexp"), m.group("exp1"), m.group("exp2"))
        if e is None:
            return None
        has_exp = any(m.group(g) is not None for g in ("eexp", "exp1", "exp2"))
        v = sign * Fraction(digits) * Fraction(10) ** e
        is_int = "." not in digits and not has_exp
        plain = digits if (is_int and not seps and m.group("sign") == "") else None
        return v, is_int, plain
    for rx in (_FRAC_RE, _SLASH_RE):
        m = rx.fullmatch(s)
        if m:
            sign = -1 if m.group("sign") == "-" else 1
            d = m.groupdict()
            num = int(d["num"] if d["num"] is not None else d["numd"])
            den = int(d["den"] if d["den"] is not None else d["dend"])
            if den == 0:
                return None
            frac = Fraction(num, den)
            if m.group("whole") is not None:
                if num < 0 or den < 0 or frac >= 1:
                    return None  # "3\frac{5}{2}" is not a mixed number
                frac += int(m.group("whole"))
            return sign * frac, False, None
    m = _REPEAT_RE.fullmatch(s)
    if m:
        sign = -1 if m.group("sign") == "-" else 1
        whole = int(m.group("int") or "0")
        pre, rep = m.group("pre"), m.group("rep")
        v = Fraction(int(pre or "0"), 10 ** len(pre)) + Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(pre))
        return sign * (whole + v), False, None
    return None


def parse_value(answer: str | None) -> Value | None:
    """The canonical value of a *cleaned* answer (see :func:`verl_ext.reward.rewrite.clean`),
    or None when it is not one of the cheap forms."""
    if answer is None:
        return None
    s = answer.strip()
    if not s or len(s) > MAX_CHARS:
        return None
    m = _CHOICE_GT_RE.fullmatch(s)
    if m:
        return Value("choice", text=m.group(1))
    s = s.replace("\\left", "").replace("\\right", "").replace("\\$", "").replace("$", "").strip()
    s = re.sub(r"\\[;:]|~", " ", s).strip()
    m = _INF_RE.fullmatch(s)
    if m:
        return Value("inf", sign=-1 if m.group("sign") == "-" else 1)
    m = _CLOCK_RE.fullmatch(s)
    if m:
        h, mm = int(m.group("h")), m.group("m")
        if h <= 24:
            return Value("clock", text=f"{h}:{mm}")
    m = _DMS_RE.fullmatch(s)
    if m and (m.group("min") or m.group("sec")):
        v = Fraction(m.group("deg")) + Fraction(m.group("min") or 0) / 60 + Fraction(m.group("sec") or 0) / 3600
        return Value("number", num=-v if m.group("sign") else v)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s).strip()  # a degree sign does not change the number
    pct = False
    # the percent words first: the unit stripping below would drop "percent" as any other unit word
    m = _PERCENT_WORD_RE.search(s)
    if m:
        s, pct = s[: m.start()].rstrip(), True
    s, mult = _strip_units(s)
    for p in ("\\%", "%"):
        if not pct and s.endswith(p):
            s, pct = s[: -len(p)].rstrip(), True
            break
    m = _BASE_RE.fullmatch(s)
    if m:
        base = int(m.group("b1") or m.group("b2"))
        if not 2 <= base <= 36:
            return None
        try:
            v = int(m.group("digits"), base)
        except ValueError:
            return None
        return Value("number", num=Fraction(-v if m.group("sign") else v), digits=m.group("digits").upper(),
                     base=base, integer_written=True)
    parsed = _plain_number(s)
    if parsed is None:
        # arithmetic on numbers (2^{10}, \frac{1}{2^{56}}, 5!): exact, so never within an absolute tolerance
        exact = exact_value(s)
        if exact is None:
            return None
        return Value("number", num=exact * mult, pct=pct, integer_written=exact.denominator == 1 and "." not in s
                     and mult == 1)
    v, is_int, plain = parsed
    return Value("number", num=v * mult, pct=pct, plain_digits=plain if mult == 1 and not pct else None,
                 integer_written=is_int and mult == 1)


def _close(pred: Fraction, gt: Fraction, gt_integer: bool) -> bool:
    if pred == gt:
        return True
    if gt_integer and gt.denominator == 1:
        return False  # an integer answer is never matched by a nearby non-integer
    return abs(pred - gt) <= REL_TOL * abs(gt)


def _numbers_match(p: Value, g: Value) -> bool:
    gt_int = g.integer_written
    if g.base is not None and p.base is None:
        # the question asked for digits in base g.base: read the prediction's digits in that base
        if p.plain_digits is None:
            return False
        try:
            return int(p.plain_digits, g.base) == g.num
        except ValueError:
            return False
    # a percent sign is optional on either side: compare the numbers as written, or the values
    as_written = _close(p.num, g.num, gt_int)
    if p.pct == g.pct:
        return as_written
    gv = g.num / 100 if g.pct else g.num
    pv = p.num / 100 if p.pct else p.num
    return as_written or _close(pv, gv, gt_int and not g.pct)


def decide(pred: Value | None, gt: Value | None) -> bool | None:
    """Verdict for two canonical values, or None when they are not comparable here."""
    if pred is None or gt is None:
        if gt is not None and gt.kind == "choice" and pred is None:
            return None
        return None
    if gt.kind == "choice":
        return pred.kind == "choice" and pred.text == gt.text if pred.kind == "choice" else None
    if pred.kind == "choice":
        return None
    if gt.kind == "inf" or pred.kind == "inf":
        return gt.kind == pred.kind and gt.sign == pred.sign
    if gt.kind == "clock" or pred.kind == "clock":
        if gt.kind != pred.kind:
            return None  # "3:30" vs "3.5": left to the judge
        return gt.text == pred.text
    return _numbers_match(pred, gt)


def choice_letter(answer: str) -> str | None:
    """The option letter a short boxed answer starts with (``(A) 4`` -> ``A``)."""
    return _letter_from_short(answer, "ABCDE")


def decide_pair(pred: str, gt: str) -> bool | None:
    """In-process verdict for one cleaned prediction and one cleaned ground truth, or None."""
    g = parse_value(gt)
    if g is None:
        return None
    if g.kind == "choice":
        letter = choice_letter(pred)
        return (letter == g.text) if letter is not None else None
    return decide(parse_value(pred), g)
