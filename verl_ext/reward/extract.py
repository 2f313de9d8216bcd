"""Answer extraction from a model response: the last ``\\boxed{}`` and multiple-choice letters.

Pure string scanning, linear in the response length, so it is safe to run in-process (no timeout).
"""

from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _last_box_command(text: str) -> tuple[int, str] | None:
    """Position and name of the last ``\\boxed``/``\\fbox`` in ``text`` (whichever comes later)."""
    best: tuple[int, str] | None = None
    for cmd in _BOX_COMMANDS:
        start = len(text)
        while True:
            idx = text.rfind(cmd, 0, start)
            if idx < 0:
                break
            # `\boxedfoo` is another macro; only accept the command when a non-letter follows it.
            after = text[idx + len(cmd): idx + len(cmd) + 1]
            if not after.isalpha():
                if best is None or idx > best[0]:
                    best = (idx, cmd)
                break
            start = idx
    return best


def _balanced_group(text: str, open_idx: int) -> str | None:
    """Content of the brace group opening at ``text[open_idx] == '{'``; None if it never closes.

    Escaped braces (``\\{``, ``\\}``) are literal characters in LaTeX, so they do not change the
    depth; this keeps ``\\boxed{\\left\\{1\\right.}`` and ``\\boxed{\\{1,2\\}}`` intact.
    """
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character (and the backslash)
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_idx + 1: i]
        i += 1
    return None


def last_boxed_content(text: str | None) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x`` in ``text``.

    Returns None when there is no box or the last box is never closed (a truncated response has
    not given its final answer, so it must not be graded on an earlier, superseded box).
    """
    if not text:
        return None
    found = _last_box_command(text)
    if found is None:
        return None
    idx, cmd = found
    j = idx + len(cmd)
    while j < len(text) and text[j] in " \t":
        j += 1
    if j < len(text) and text[j] == "{":
        content = _balanced_group(text, j)
        return content.strip() if content is not None else None
    # `\boxed 5$` form (Hendrycks MATH): the argument runs to the end of the math span or line.
    if j == idx + len(cmd):
        return None  # `\boxed` immediately followed by something that is not a space or brace
    tail = re.split(r"[$\n]", text[j:], maxsplit=1)[0].strip()
    tail = tail.rstrip(".")
    return tail or None


# --- multiple choice -------------------------------------------------------------------------

# Wrappers a model may put around the letter inside a box: \text{C}, \textbf{(C)}, \mathrm{C} ...
_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|textit|mathit)\s*\{([^{}]*)\}")
# Letter at the start of a short answer: "C", "(C)", "C)", "C.", "C: 42", "Option C", "[C]".
_LEADING_LETTER_RE = re.compile(
    r"^(?:option|choice|answer)?[\s:\-]*[\(\[]?\s?([A-Z])\s?(?:[\)\]\.:,]|$|\s)", re.IGNORECASE
)
# "The answer is (C)", "Answer: C", "final answer is **C**" -- last occurrence wins.
# (One character class for all separators: adjacent optional runs like `\s*[:]?\s*` backtrack
# polynomially on long whitespace, and this regex runs in-process on raw responses.)
_ANSWER_PHRASE_RE = re.compile(
    r"answer(?:\s+is)?[\s:\-\*]*(?:option\s?)?[\(\[]?([A-Z])[\)\]]?(?![A-Za-z])", re.IGNORECASE
)
# A bare "(C)" or "C)" mention anywhere (weakest evidence, used last).
_PAREN_LETTER_RE = re.compile(r"(?:\(([A-Z])\)|(?<![A-Za-z\(])([A-Z])\))")


def _letter_from_short(answer: str, letters: str) -> str | None:
    s = answer.strip()
    for _ in range(3):  # nested wrappers such as \textbf{\text{C}}
        s2 = _WRAPPER_RE.sub(r"\1", s)
        if s2 == s:
            break
        s = s2
    s = s.replace("$", "").replace("*", "").strip()
    m = _LEADING_LETTER_RE.match(s)
    if m:
        letter = m.group(1).upper()
        # A lone lower-case letter is ambiguous (GPQA lists items as a) b) c)), so only accept
        # lower case when the whole answer is just that letter.
        if m.group(1).islower() and len(s.strip("()[]. ")) != 1:
            return None
        return letter if letter in letters else None
    return None


def extract_choice_letter(text: str | None, letters: str = "ABCD") -> str | None:
    """The multiple-choice letter a response commits to, or None.

    Evidence, strongest first (and the last occurrence within each kind):
    1. the last ``\\boxed{...}``: ``\\boxed{C}``, ``\\boxed{(C)}``, ``\\boxed{\\text{C}}``, ``\\boxed{C. 42}``;
    2. an answer phrase: "the answer is (C)", "Answer: C";
    3. a bare ``(C)`` or ``C)``.
    Only upper-case letters count outside a box: GPQA questions enumerate items with
    lower-case ``a)``..``d)``, which are not the options.
    """
    if not text:
        return None
    boxed = last_boxed_content(text)
    if boxed is not None:
        return _letter_from_short(boxed, letters)
    phrase = [m.group(1) for m in _ANSWER_PHRASE_RE.finditer(text) if m.group(1).isupper()]
    phrase = [c for c in phrase if c in letters]
    if phrase:
        return phrase[-1]
    bare = [a or b for a, b in _PAREN_LETTER_RE.findall(text)]
    bare = [c for c in bare if c in letters]
    if bare:
        return bare[-1]
    return None


# --- several boxes ---------------------------------------------------------------------------

# What may stand between two boxes of one answer: commas, semicolons, spaces, "and"/"or" (also as
# \text{and}), \quad spacers and math delimiters ($, \( \), \[ \]), in any sequence, and the next
# box's own variable (``x = \boxed{2} or x = \boxed{3}``, ``y_2 = \boxed{..}``). Anything else (another
# word, an expression) means the earlier box is a separate statement.
_JOIN_TOKEN = r"(?:and|or|\\text\{\s*(?:and|or)\s*\}|\\quad|\\qquad|\\[()\[\]])"
_NEXT_VARIABLE = r"(?:[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?\s*=\s*)"
_BOX_JOINER_RE = re.compile(rf"[\s$,;]*(?:{_JOIN_TOKEN}[\s$,;]*)*{_NEXT_VARIABLE}?", re.IGNORECASE)


def all_boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, content)`` of every closed ``\\boxed{...}``/``\\fbox{...}`` at top level, in order."""
    out: list[tuple[int, int, str]] = []
    i = 0
    while True:
        cands = [(text.find(c, i), c) for c in _BOX_COMMANDS]
        cands = [(j, c) for j, c in cands if j >= 0]
        if not cands:
            return out
        j, cmd = min(cands)
        k = j + len(cmd)
        while k < len(text) and text[k] in " \t":
            k += 1
        if k < len(text) and text[k] == "{" and not text[j + len(cmd): j + len(cmd) + 1].isalpha():
            content = _balanced_group(text, k)
            if content is None:
                return out
            end = k + len(content) + 2
            out.append((j, end, content.strip()))
            i = end
        else:
            i = j + len(cmd)


def final_answers(text: str | None) -> list[str]:
    """The boxes that make up the final answer: the last box plus the boxes right before it that
    are joined to it only by commas, "and", "or", spacers or math delimiters, each box possibly
    naming its variable (``\\boxed{2}, \\boxed{3}``; ``x=\\boxed{2} or x=\\boxed{3}``;
    ``\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}``). Stated rule for several boxes:
    they are graded together as one list of answers, so a list of solutions matches a list ground
    truth and two different values offered for one answer (hedging) match no single value. A box
    separated from the last one by other text (``\\boxed{4}. Checking again ... \\boxed{5}``) was
    superseded and is not graded.
    Empty when the response has no closed last box (see :func:`last_boxed_content`)."""
    if last_boxed_content(text) is None:
        return []
    spans = all_boxed_spans(text)
    if not spans:
        return [last_boxed_content(text)]
    group = [spans[-1]]
    for prev in reversed(spans[:-1]):
        gap = text[prev[1]: group[0][0]]
        if len(gap) > 40 or not _BOX_JOINER_RE.fullmatch(gap):
            break
        group.insert(0, prev)
    return [c for _, _, c in group]
