"""Surface clean-up of an answer before it is judged: markup, unicode spellings, e-notation.

Each rewrite exists because the grading corpus (``tests/data/grading_corpus.jsonl``) has pairs that
math-verify alone gets wrong without it and none that it gets wrong with it; see
``verl_ext/reward/README.md`` for the measured table. A rewrite never changes the value of an
answer: it removes presentation (``**73**``, ``\\color{red}{73}``, ``\\text{Answer: } 14``,
a final period) or replaces a spelling math-verify's LaTeX parser does not know by one it knows
(``∞`` -> ``\\infty``, ``\\mathrm{i}`` -> ``i``, ``7.4e-12`` -> ``7.4\\times10^{-12}``).

All passes are regex/str operations bounded by the input length (answers are capped at
``MAX_ANSWER_CHARS`` before they get here), so they run in-process, before any timed path.
"""

from __future__ import annotations

import re
import unicodedata

# Unicode symbols models emit, and the LaTeX math-verify parses.
_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ", "\u22c5": "\\cdot ",
    "\u221e": "\\infty ", "\u03c0": "\\pi ", "\u2264": "\\le ", "\u2265": "\\ge ", "\u2260": "\\ne ",
    "\u00bd": "\\frac{1}{2}", "\u00bc": "\\frac{1}{4}", "\u00be": "\\frac{3}{4}", "\u2153": "\\frac{1}{3}",
    "\u2154": "\\frac{2}{3}", "\u00b0": "^\\circ", "\u2032": "'", "\u2033": "''", "\u2205": "\\emptyset ",
    "\u222a": "\\cup ", "\u2229": "\\cap ", "\u00b1": "\\pm ", "\u2026": "\\ldots ",
}
_SQRT_UNICODE_RE = re.compile(r"\u221a\s*(\d+|[A-Za-z]|\{[^{}]*\}|\([^()]*\))")

# Wrappers that are presentation only: the whole answer is their argument.
_WRAPPER_CMDS = ("textbf", "mathbf", "boldsymbol", "bm", "underline", "boxed", "fbox", "emph", "textit",
                 "mathit", "textnormal", "displaystyle")
_WRAPPER_RE = re.compile(r"^\\(?:%s)\s*\{(.*)\}$" % "|".join(_WRAPPER_CMDS), re.S)
_COLOR_RE = re.compile(r"^\\(?:color|textcolor)\s*\{[A-Za-z!0-9]*\}\s*\{(.*)\}$", re.S)
_MATH_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_MARKDOWN_RE = re.compile(r"^(\*\*|\*|__)(.+)\1$", re.S)
# "Answer: 14", "\text{Answer: } 14", "Final answer: 14"
_LABEL_RE = re.compile(r"^(?:\\text\{\s*)?(?:the\s+)?(?:final\s+)?answer\s*(?:is)?\s*[:=]?\s*\}?\s*:?\s*", re.I)
_UPRIGHT_CONST_RE = re.compile(r"\\(?:mathrm|operatorname|text|rm)\s*\{\s*([ie])\s*\}")
_DISPLAYSTYLE_RE = re.compile(r"\\(?:displaystyle|textstyle)\b\s*")
_INF_WORD_RE = re.compile(r"(?:\\text\{\s*)?(?<![A-Za-z\\])(?:inf|infinity|Infinity|INF)(?![A-Za-z])(?:\s*\})?")
# e-notation numbers (7.4e-12, 6.02E+23), not followed or preceded by a letter (2e is 2 times e).
E_NOTATION_RE = re.compile(r"(?<![\w\\.])(\d+(?:\.\d*)?|\.\d+)[eE]([+-]?\d{1,4})(?![\w.])")
_DOTS_RE = re.compile(r"\\(?:dots|cdots|dotsc|dotso)\b|\.\.\.")


def _unicode(s: str) -> str:
    # full-width digits/letters/punctuation (U+FF01..FF5E) are their ASCII characters
    s = "".join(unicodedata.normalize("NFKC", c) if "\uff01" <= c <= "\uff5e" else c for c in s)
    s = _SQRT_UNICODE_RE.sub(lambda m: "\\sqrt{%s}" % m.group(1).strip("{}()"), s)
    for a, b in _UNICODE.items():
        if a in s:
            s = s.replace(a, b)
    return s


def strip_markup(s: str) -> str:
    """Remove presentation around the whole answer, repeatedly (``\\textbf{\\underline{73}}``)."""
    s = _DISPLAYSTYLE_RE.sub("", s).strip()
    for _ in range(8):
        before = s
        s = s.strip()
        # a final period is punctuation ("73." is 73), but not the "." of "\right." or "\ldots"
        if s.endswith(".") and not s.endswith("..") and not re.search(r"\\(?:right|left|big|Big)\s*\.$", s):
            s = s[:-1].rstrip()
        for a, b in _MATH_DELIMS:
            if len(s) > len(a) + len(b) and s.startswith(a) and s.endswith(b):
                s = s[len(a): -len(b)].strip()
                break
        m = _MARKDOWN_RE.match(s) or _WRAPPER_RE.match(s) or _COLOR_RE.match(s)
        if m:
            inner = m.group(m.lastindex)
            if _balanced(inner):
                s = inner.strip()
        s = _LABEL_RE.sub("", s, count=1) if _LABEL_RE.match(s) and len(_LABEL_RE.match(s).group(0)) < len(s) else s
        if s.startswith("{") and s.endswith("}") and _balanced(s[1:-1]):
            s = s[1:-1].strip()
        if s == before:
            break
    return s


def _balanced(s: str) -> bool:
    depth = 0
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        depth += c == "{"
        depth -= c == "}"
        if depth < 0:
            return False
        i += 1
    return depth == 0


def clean(answer: str) -> str:
    """The answer with presentation removed and unicode spelled in LaTeX (value unchanged)."""
    s = _unicode(str(answer)).replace("\n", " ").strip()
    s = strip_markup(s)
    s = _UPRIGHT_CONST_RE.sub(lambda m: m.group(1), s)  # \mathrm{i} is i, \mathrm{e} is e
    s = _INF_WORD_RE.sub(lambda m: "\\infty" if _balanced(m.group(0)) else m.group(0), s)
    s = s.replace("\\varnothing", "\\emptyset").replace("\\geqslant", "\\ge").replace("\\leqslant", "\\le")
    s = _DOTS_RE.sub(r"\\ldots", s)
    return s


_SPACE_RE = re.compile(r"\s+")
_KEEP_SPACE_RE = re.compile(r"(?<=\d) (?=\d)|(?<=[A-Za-z]) (?=[A-Za-z])")


def squeeze(answer: str) -> str:
    """A cleaned answer without spaces, for string comparison. A space between two digits or two
    letters is kept: ``4 2`` is two numbers, not 42 (thousands groups are read in
    :mod:`verl_ext.reward.canonical`), ``\\pi r`` is not ``\\pir``; ``4 i`` is ``4i``."""
    s = _SPACE_RE.sub(" ", answer.strip())
    s = _KEEP_SPACE_RE.sub("\x00", s).replace(" ", "")
    return s.replace("\x00", " ")


def for_math_verify(answer: str) -> str:
    """:func:`clean` plus spellings only math-verify needs: e-notation as a power of ten (its
    parser reads ``7.4e-12`` as ``7.4*e - 12``)."""
    return E_NOTATION_RE.sub(lambda m: "%s\\times10^{%s}" % (m.group(1), m.group(2).lstrip("+")), clean(answer))
