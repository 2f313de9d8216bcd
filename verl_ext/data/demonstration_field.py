"""The demonstration field and the question id of a data row: what the data contract promises.

A demonstration is the text in ``extra_info[hpt.demo_field]`` of a question's row (the field may
also hold a list of texts, several demonstrations of the question); a question's id is its
``extra_info.index``. These are the rules every reader applies: start-up validation
(:func:`verl_ext.data.contract.check_demo`), the trainer's step (:mod:`verl_ext.hpt.demonstrations`,
:mod:`verl_ext.hpt.step`), the SFT-only stand-in (:mod:`verl_ext.hpt.demo_rollout`) and staged
generation's prefixes (:mod:`verl_ext.hpt.staging.prefix`).

Usable: a string with some non-whitespace text, or a non-empty list of such strings; any bad entry
makes the whole value unusable (:func:`demonstration_problem` says why, naming the entry's index).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

LUFFY_HINT = " (LUFFY/OpenR1 keep a list of messages: convert with scripts/data/convert.py --format luffy)"


def _listed(value: Any) -> Optional[list]:
    """``value`` as a list when it is a list, a tuple or a numpy array (parquet read through pandas
    gives arrays), else None."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        return list(value)
    return None


def demonstration_entry_problem(value: Any) -> Optional[tuple[Optional[int], str, str]]:
    """Why ``value`` (an ``extra_info[demo_field]``) is not a usable demonstration: (index, reason,
    detail), or None when it is one. ``index`` is the bad entry's position in a list (None for the
    value as a whole); ``detail`` does not repeat it.

    The rule: a string with some non-whitespace text, or a non-empty list whose every entry is one.
    Reasons: ``demo_missing`` (absent, None, blank, an empty list, or a list entry that is None or
    blank), ``demo_not_string`` (neither a string nor a list, or a list entry that is not a string:
    a list of ``{role, content}`` messages, LUFFY's layout, is pointed at the converter)."""
    if value is None:
        return None, "demo_missing", "missing"
    if isinstance(value, str):
        return (None, "demo_missing", "is empty") if not value.strip() else None
    entries = _listed(value)
    if entries is None:
        return None, "demo_not_string", f"is a {type(value).__name__}, expected a string or a list of strings"
    if not entries:
        return None, "demo_missing", "is an empty list (several demonstrations: a list of non-empty strings)"
    for j, entry in enumerate(entries):
        if entry is None:
            return j, "demo_missing", "is missing (null); every listed demonstration must be a non-empty string"
        if not isinstance(entry, str):
            hint = LUFFY_HINT if isinstance(entry, dict) or _listed(entry) is not None else ""
            return j, "demo_not_string", f"is a {type(entry).__name__}, expected a string{hint}"
        if not entry.strip():
            return j, "demo_missing", "is empty; every listed demonstration must be a non-empty string"
    return None


def demonstration_problem(value: Any) -> Optional[tuple[str, str]]:
    """Why ``value`` is not a usable demonstration: (reason, detail), or None when it is one
    (:func:`demonstration_entry_problem`'s rule; a bad list entry's detail starts with its ``[index]``)."""
    p = demonstration_entry_problem(value)
    if p is None:
        return None
    index, reason, detail = p
    return reason, detail if index is None else f"[{index}] {detail}"


def is_usable(value: Any) -> bool:
    return demonstration_problem(value) is None


def demonstration_entries(value: Any) -> list[str]:
    """The demonstrations a usable ``value`` holds: ``[value]`` for a string, the list's strings for a list."""
    p = demonstration_problem(value)
    if p is not None:
        raise ValueError(f"not a usable demonstration: {p[1]}")
    return [value] if isinstance(value, str) else [str(e) for e in _listed(value)]


def demonstration_of(extra_info: Any, demo_field: str) -> Any:
    """The raw ``extra_info[demo_field]`` of one row (None when the row has no such field)."""
    return extra_info.get(demo_field) if isinstance(extra_info, dict) else None


# ------------------------------------------------------------------------------------ question id
NO_QUESTION_ID = -1  # the id of a row without a usable extra_info.index


def question_key(index: Any) -> int | str:
    """A raw ``extra_info.index`` as the question's id: ints (and integral floats, as parquet turns
    an int column with nulls into floats) as ints, None/booleans as -1, anything else (``"q-0"``: the
    data contract allows string ids) as its string. The one rule for logged ids (``hpt_state``),
    the uniform demonstration draw and everything else that names a question."""
    if index is None or isinstance(index, (bool, np.bool_)):
        return NO_QUESTION_ID
    if isinstance(index, (int, np.integer)):
        return int(index)
    if isinstance(index, (float, np.floating)) and float(index).is_integer():
        return int(index)
    return str(index)


def question_id(extra_info: Any) -> int | str:
    """The id of the question whose row has this ``extra_info`` (-1 without one)."""
    return question_key(extra_info.get("index", None)) if isinstance(extra_info, dict) else NO_QUESTION_ID
