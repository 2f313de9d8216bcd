"""Release mode only (``grader="release"``, see :mod:`verl_ext.reward.release`): string
normalisation of final answers (the cheap, parser-free part of that grader).

Two normalisers, as in the Hendrycks-MATH / Dr.GRPO grader lineage the HPT release uses:

* :func:`normalize_string` -- LaTeX-level canonical form (``\\dfrac``->``\\frac``, no ``\\left``,
  no units/degrees/percent/``$``/spaces, ``\\frac12``->``\\frac{1}{2}``, ``a/b``->``\\frac{a}{b}``,
  ``0.5``->``\\frac{1}{2}`` ...). Two answers with equal forms are graded correct without any
  parser; this is the fast path that runs in-process.
* :func:`normalize_for_sympy` -- plain-text form for sympy (LaTeX rendered to text with
  pylatexenc, braces dropped, lower case). Only used inside the grading worker process.

All operations are regex/str passes that are linear in the input, so neither can hang.
Deliberate difference from the release: its unit list also strips single letters such as
``a``, ``c``, ``m``, ``s`` as whole words, which makes ``a+1`` equal ``c+1``; only multi-letter
unit words are stripped here.
"""

from __future__ import annotations

import re

# Unit words stripped as whole words (optionally plural). Multi-letter only (see module doc).
UNIT_WORDS = (
    "degree", "degrees", "radian", "radians", "cm", "mm", "km", "meter", "metre", "centimeter",
    "kilometer", "millimeter", "mile", "inch", "inches", "foot", "feet", "yard", "ft", "mph",
    "kmh", "kmph", "second", "sec", "minute", "min", "hour", "hr", "day", "week", "month", "year",
    "yr", "dollar", "cent", "unit", "square", "sq", "cubic", "kg", "gram", "gm", "lb", "pound",
    "liter", "litre", "gallon", "acre", "hectare", "percent", "point", "way", "student",
    "people", "person", "times", "rs", "rupee",
)
_UNIT_RE = re.compile(
    r"(?<![A-Za-z\\])(?:%s)(?:e?s)?(?![A-Za-z])" % "|".join(sorted(UNIT_WORDS, key=len, reverse=True)))
_THOUSANDS_RE = re.compile(r"(\d),(\d\d\d)(?=$|\D)")
_TEXT_ONLY_RE = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\{(?P<inner>[^{}]*)\}$")


def strip_thousands_separators(s: str) -> str:
    """``1,234,567`` -> ``1234567``; commas between tuple elements (``1,2``) are kept."""
    while True:
        new = _THOUSANDS_RE.sub(r"\1\2", s)
        if new == s:
            return s
        s = new


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{72}`` -> ``\\frac{1}{72}``, ``\\frac{a}b`` -> ``\\frac{a}{b}``."""
    out, i = [], 0
    while True:
        j = s.find("\\frac", i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        out.append(s[i:j] + "\\frac")
        k = j + len("\\frac")
        args = []
        for _ in range(2):
            if k < len(s) and s[k] == "{":
                depth, m = 0, k
                while m < len(s):
                    depth += s[m] == "{"
                    depth -= s[m] == "}"
                    if depth == 0:
                        break
                    m += 1
                args.append(s[k: m + 1])
                k = m + 1
            elif k < len(s) and (s[k].isalnum()):
                args.append("{" + s[k] + "}")
                k += 1
            else:
                break
        out.append("".join(args))
        i = k


def _fix_sqrt(s: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``."""
    return re.sub(r"\\sqrt(?![{\[a-zA-Z])\s*(\w)", r"\\sqrt{\1}", s)


def _fix_a_slash_b(s: str) -> str:
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    return "\\frac{%s}{%s}" % (m.group(1), m.group(2)) if m else s


def _canonical_number(s: str) -> str:
    """``10.50`` -> ``10.5``, ``10.0`` -> ``10``, ``.5`` -> ``0.5``, ``-0`` -> ``0`` for plain decimals."""
    m = re.fullmatch(r"(-?)(\d*)\.(\d+)|(-?)(\d+)", s)
    if not m:
        return s
    if m.group(5) is not None:
        sign, whole, frac = m.group(4), m.group(5), ""
    else:
        sign, whole, frac = m.group(1), m.group(2) or "0", m.group(3).rstrip("0")
    whole = whole.lstrip("0") or "0"
    out = whole + ("." + frac if frac else "")
    return "0" if out == "0" else sign + out


def normalize_string(answer: str | None) -> str | None:
    """Canonical LaTeX string of a final answer (Hendrycks-style), or None for None."""
    if answer is None:
        return None
    s = str(answer).strip()
    m = _TEXT_ONLY_RE.match(s)
    if m:
        s = m.group("inner").strip()
    s = s.replace("\n", "").replace("\\!", "")
    s = s.replace("\\\\", "\\")  # a doubled backslash from JSON-escaped text
    s = re.sub(r"\\begin\{array\}\{[^}]*\}", r"\\begin{pmatrix}", s)
    s = s.replace("\\end{array}", "\\end{pmatrix}").replace("bmatrix", "pmatrix")
    s = s.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac")
    s = s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\displaystyle", "")
    # thin spaces and explicit spaces in LaTeX
    s = s.replace("\\,", "").replace("\\;", "").replace("\\:", "").replace("\\ ", " ").replace("~", " ")
    # a trailing \text{...} is a unit ("5 \text{ cm}"), unless it is the whole answer
    t = re.sub(r"\\(?:text|mbox|mathrm)\{[^{}]*\}\s*$", "", s).strip()
    if t:
        s = t
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    t = _UNIT_RE.sub("", s).strip()
    if t:
        s = t
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("{,}", ",")
    s = strip_thousands_separators(s)
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    # "x = 5", "k=5": drop a short left-hand side (a variable name)
    parts = s.split("=")
    if len(parts) == 2 and len(parts[0].strip()) <= 2:
        s = parts[1]
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = s.rstrip(".")
    s = _fix_fracs(s)
    s = _canonical_number(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    s = _fix_a_slash_b(s)
    return s


# --- sympy-oriented form ---------------------------------------------------------------------

_SYMPY_UNIT_RE = re.compile(
    r"(?:degree|cm|centimeter|meter|mile|second|minute|hour|day|week|month|year|foot|feet|inch|yard)"
    r"(?:es)?(?:s)? *(?:\^[0-9]+)?"
)


_LATEX2TEXT = None


def _latex_to_text(expr: str) -> str:
    global _LATEX2TEXT
    if _LATEX2TEXT is None:  # building the converter (its macro database) costs more than a conversion
        from pylatexenc import latex2text  # imported lazily: only the worker process needs it

        _LATEX2TEXT = latex2text.LatexNodes2Text()
    expr = expr.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac")
    expr = expr.replace("\\frac", " \\frac")  # keeps mixed numbers "3\frac12" apart
    expr = _LATEX2TEXT.latex_to_text(expr)
    for a, b in (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*")):
        expr = expr.replace(a, b)
    return expr.strip()


def normalize_for_sympy(expr: str | None) -> str | None:
    """Plain-text, lower-case form of an answer for sympy parsing (Dr.GRPO/PRM800K style)."""
    if expr is None:
        return None
    m = _TEXT_ONLY_RE.match(expr)
    if m:
        expr = m.group("inner")
    expr = expr.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
    expr = expr.replace(" or ", " , ").replace(" and ", " , ")
    expr = expr.replace("million", "*10^6").replace("billion", "*10^9").replace("trillion", "*10^12")
    expr = _SYMPY_UNIT_RE.sub("", expr)
    expr = re.sub(r"\^ *\\circ", "", expr)
    if len(expr) > 0 and expr[0] == "{" and expr[-1] == "}":
        expr = expr[1:-1]
    expr = re.sub(r",\\! *", "", expr)
    try:
        f = float(expr)
        if abs(f - round(f)) <= 1e-7 and abs(f) < 1e15:
            expr = str(int(round(f)))
    except ValueError:
        pass
    if "\\" in expr:
        try:
            expr = _latex_to_text(expr)
        except Exception:  # pylatexenc gives up on malformed LaTeX; keep the raw text
            pass
    expr = re.sub(r"- *", "-", expr)
    expr = re.sub(r"([0-9]) +([0-9])", r"\1+\2", expr)  # mixed number "7 3/4" -> "7+3/4"
    expr = expr.replace(" ", "").replace("{", "").replace("}", "")
    expr = expr.lower()
    stripped = strip_thousands_separators(expr)
    try:
        f = float(stripped)
        if abs(f - round(f)) <= 1e-7 and abs(f) < 1e15:
            expr = str(int(round(f)))
    except ValueError:
        pass
    return expr


# --- exact value of simple numbers -----------------------------------------------------------

_FRAC_RE = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")
_SLASH_RE = re.compile(r"(-?\d+)/(-?\d+)")
_DECIMAL_RE = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")


def simple_rational(normalized: str | None):
    """Exact value of a normalised answer that is a plain integer, decimal or integer fraction
    (``3``, ``-0.75``, ``\\frac{3}{4}``, ``-\\frac{3}{4}``, ``3/4``), else None."""
    from fractions import Fraction

    if not normalized or len(normalized) > 40:
        return None
    try:
        if _DECIMAL_RE.fullmatch(normalized):
            return Fraction(normalized)
        m = _FRAC_RE.fullmatch(normalized)
        if m:
            v = Fraction(int(m.group(2)), int(m.group(3)))
            return -v if m.group(1) else v
        m = _SLASH_RE.fullmatch(normalized)
        if m:
            return Fraction(int(m.group(1)), int(m.group(2)))
    except (ValueError, ZeroDivisionError):
        return None
    return None
