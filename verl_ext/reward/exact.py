"""Exact values of answers that are arithmetic on numbers: ``2^{10}``, ``\\frac{1}{2^{56}}``, ``5!``.

math-verify compares numbers with an absolute tolerance, so every tiny value equals every other
(``\\frac{1}{2^{55}}`` is accepted for ``\\frac{1}{2^{56}}``): a wrong answer a policy can learn to
give. An answer built only from numbers with ``+ - * / ^ !``, ``\\cdot``, ``\\times``, ``\\div``,
``\\frac{a}{b}`` and parentheses/braces is evaluated here exactly (:class:`fractions.Fraction`) and
compared by :mod:`verl_ext.reward.canonical` exactly or at relative tolerance, never by absolute
tolerance, in bounded time: exponents up to ``MAX_EXP``, factorials up to ``MAX_FACTORIAL``, results
up to ``MAX_BITS`` bits; anything larger, anything with a symbol (``x``, ``\\pi``, ``\\sqrt``) and
anything ambiguous (``2^10``, implicit products such as ``2(3)``) returns None and is left to the judge.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Optional

MAX_EXP = 400  # |exponent| (also the canonical layer's bound on scientific notation)
MAX_FACTORIAL = 500
MAX_BITS = 20_000  # numerator or denominator of any intermediate value
MAX_CHARS = 200  # longer answers are not decided in-process (also the canonical layer's bound)

_TOKEN = re.compile(r"\s*(\d+\.\d+|\d+|\\frac|\\dfrac|\\tfrac|\\cdot|\\times|\\div|[-+*/^!(){}\[\]])")
_BINARY = {"\\cdot": "*", "\\times": "*", "\\div": "/"}


class _Refuse(Exception):
    """Not an exact arithmetic expression (or too large to evaluate): the judge decides."""


def _tokens(s: str) -> list[str]:
    out, pos = [], 0
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if m is None:
            if s[pos:].strip() == "":
                break
            raise _Refuse
        tok = m.group(1)
        out.append(_BINARY.get(tok, "\\frac" if tok in ("\\dfrac", "\\tfrac") else tok))
        pos = m.end()
    return out


def _check(v: Fraction) -> Fraction:
    if v.numerator.bit_length() > MAX_BITS or v.denominator.bit_length() > MAX_BITS:
        raise _Refuse
    return v


class _Parser:
    def __init__(self, tokens: list[str]):
        self.t, self.i = tokens, 0

    def peek(self) -> Optional[str]:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, want: Optional[str] = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise _Refuse
        self.i += 1
        return tok

    def expr(self) -> Fraction:  # term (('+'|'-') term)*
        v = self.term()
        while self.peek() in ("+", "-"):
            v = _check(v + self.term() if self.take() == "+" else v - self.term())
        return v

    def term(self) -> Fraction:  # unary (('*'|'/') unary)*
        v = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()
            w = self.unary()
            if op == "/" and w == 0:
                raise _Refuse
            v = _check(v * w if op == "*" else v / w)
        if self.peek() in ("(", "{", "[", "\\frac") or (self.peek() or "").replace(".", "").isdigit():
            raise _Refuse  # an implicit product (2(3), 3\frac{1}{2} is a mixed number): not decided here
        return v

    def unary(self) -> Fraction:
        if self.peek() in ("-", "+"):
            return -self.unary() if self.take() == "-" else self.unary()
        return self.power()

    def power(self) -> Fraction:  # postfix ('^' exponent)?, right-associative
        base = self.postfix()
        if self.peek() != "^":
            return base
        self.take()
        if self.peek() in ("{",):
            self.take("{")
            e = self.expr()
            self.take("}")
        else:
            tok = self.take()
            if not (tok.isdigit() and len(tok) == 1):
                raise _Refuse  # 2^10 (reads as 2^1 0 in LaTeX), 2^(3): ambiguous
            e = Fraction(int(tok))
        if e.denominator != 1 or abs(e.numerator) > MAX_EXP or (base == 0 and e < 0):
            raise _Refuse
        if base.numerator and abs(e.numerator) * max(base.numerator.bit_length(), base.denominator.bit_length()) \
                > MAX_BITS:
            raise _Refuse
        return _check(base ** e.numerator)

    def postfix(self) -> Fraction:
        v = self.atom()
        while self.peek() == "!":
            self.take()
            if v.denominator != 1 or not 0 <= v.numerator <= MAX_FACTORIAL:
                raise _Refuse
            n, acc = v.numerator, 1
            for k in range(2, n + 1):
                acc *= k
            v = _check(Fraction(acc))
        return v

    def atom(self) -> Fraction:
        tok = self.take()
        if tok[0].isdigit():
            return Fraction(tok)
        closing = {"(": ")", "{": "}", "[": "]"}
        if tok in closing:
            v = self.expr()
            self.take(closing[tok])
            return v
        if tok == "\\frac":
            num, den = self.arg(), self.arg()
            if den == 0:
                raise _Refuse
            return _check(num / den)
        raise _Refuse

    def arg(self) -> Fraction:  # {expr} or one digit (\frac12)
        if self.peek() == "{":
            self.take()
            v = self.expr()
            self.take("}")
            return v
        tok = self.take()
        if tok.isdigit() and len(tok) == 1:
            return Fraction(int(tok))
        if tok.isdigit():  # \frac123 is \frac{1}{2}3: an implicit product, not decided
            raise _Refuse
        raise _Refuse


def exact_value(s: str) -> Optional[Fraction]:
    """The exact value of ``s`` when it is arithmetic on numbers (see the module docstring) with at
    least one operation, else None (a plain number is :mod:`verl_ext.reward.canonical`'s)."""
    if not s or len(s) > MAX_CHARS:
        return None
    try:
        tokens = _tokens(s)
        if not any(t in ("+", "*", "/", "^", "!", "\\frac") or (t == "-" and i > 0) for i, t in enumerate(tokens)):
            return None
        p = _Parser(tokens)
        v = p.expr()
        if p.peek() is not None:
            return None
        return v
    except (_Refuse, ZeroDivisionError, ValueError, OverflowError, RecursionError):
        return None
