"""Converters from the formats users have into the HPT row contract (:mod:`verl_ext.data.contract`).

One entry, ``scripts/data/convert.py --format F``; each format is a pure function of the source
rows that returns the contract rows and a :class:`ConvertReport` (rows kept, rows dropped and why).

``verl_gsm8k``  verl's ``examples/data_preprocess/gsm8k.py`` parquet: ``extra_info.answer`` is the
    worked solution ending in ``#### N``; it becomes the demonstration. ``--answer-format boxed``
    (default) rewrites it into the answer format of this project's math reward: calculator
    annotations ``<<48/2=24>>`` removed, ``#### N`` replaced by ``The answer is \\boxed{N}.``, the
    prompt's ``output the final answer after "####"`` instruction replaced by ``within \\boxed{}``,
    the original kept in ``extra_info.<field>_original``, and ``data_source: openai/gsm8k`` renamed
    ``gsm8k_boxed`` (verl's own gsm8k scorer reads only ``####``; grade with
    ``reward.custom_reward_function.path=verl_ext/reward/verl_entry.py``). ``--answer-format hash``
    keeps ``#### N`` and ``data_source: openai/gsm8k`` for verl's gsm8k scorer
    (``reward.custom_reward_function.path=null``).
``verl_math``   verl's ``examples/data_preprocess/math_dataset.py`` parquet (answers already in
    ``\\boxed{}``); the demonstration is taken from ``extra_info.<field>``, ``extra_info.solution`` or
    a top-level ``solution`` column.
``luffy``       LUFFY / OpenR1 files (``Elliott/Openr1-Math-46k-8192``): a top-level ``target`` list
    of messages; the first message's content becomes ``extra_info.target`` (system prompt removed,
    as :mod:`verl_ext.data.openr1` does for the release).
``jsonl``       a plain JSONL (or JSON list / parquet) of ``question`` (or ``problem``), ``answer``
    (or ``ground_truth``) and ``demonstration`` (or ``solution``/``target``), optional ``id``. A
    demonstration may be a list of strings (several teachers per question; ``hpt.demo_choice``
    picks among them): empty entries are dropped and counted; when any row has a list, every row's
    demonstration is written as a list (parquet keeps one type per column).

Rows are dropped (counted by reason) when they have no question or no ground truth; a row without a
demonstration is kept (``no_demonstration``) unless ``drop_missing_demo``; train it with
``hpt.data.on_missing_demo=rl`` (or ``skip``). Every kept demonstration is also scored with the
reward the output is meant for (``demos_passing_reward``: this project's math reward, or verl's
dispatch for ``--answer-format hash``), the number the start-up check reports with that reward.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from verl_ext.data.contract import as_list
from verl_ext.data.prompts import build_messages

FORMATS = ("verl_gsm8k", "verl_math", "luffy", "jsonl")
ANSWER_FORMATS = ("boxed", "hash")
GSM8K_HASH_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
BOXED_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
_CALC = re.compile(r"<<[^<>]*>>")
_HASH = re.compile(r"####\s*(.+?)\s*$", re.S)


@dataclass
class ConvertReport:
    format: str
    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> rows
    no_demonstration: int = 0  # kept rows without a demonstration
    demo_lists: int = 0  # rows whose demonstration is a list of several
    demo_entries_dropped: int = 0  # empty or non-text entries of a demonstration list
    demos_rewritten: int = 0  # '#### N' -> '\boxed{N}'
    demos_scored: int = 0
    demos_passing_reward: int = 0
    scored_with: str = "this project's math reward (verl_ext/reward/verl_entry.py)"
    data_sources: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["dropped"] = dict(self.dropped)
        d["data_sources"] = dict(self.data_sources)
        return d

    def lines(self) -> list[str]:
        out = [f"format {self.format}: {self.kept} of {self.total} rows kept"]
        for reason, n in sorted(self.dropped.items()):
            out.append(f"  dropped {n}: {reason}")
        if self.no_demonstration:
            out.append(f"  kept without a demonstration: {self.no_demonstration} (train with "
                       f"hpt.data.on_missing_demo=rl or skip)")
        if self.demo_lists:
            out.append(f"  rows with several demonstrations: {self.demo_lists} "
                       f"({self.demo_entries_dropped} empty or non-text list entries dropped)")
        if self.demos_rewritten:
            out.append(f"  demonstrations rewritten '#### N' -> '\\boxed{{N}}': {self.demos_rewritten} "
                       f"(originals in extra_info.<field>_original)")
        if self.demos_scored:
            out.append(f"  demonstrations graded correct by {self.scored_with}: "
                       f"{self.demos_passing_reward}/{self.demos_scored}")
        out.append(f"  data_source: {dict(self.data_sources)}")
        return out


class DropRow(Exception):
    """A source row that cannot become a contract row (the message is the counted reason)."""


# ------------------------------------------------------------------------------------ helpers
def _text(x: Any) -> Optional[str]:
    if isinstance(x, str) and x.strip():
        return x
    if isinstance(x, (int, float)) and not isinstance(x, bool) and x == x:
        return str(int(x)) if float(x).is_integer() else str(x)
    return None


def _demonstrations(x: Any) -> tuple[Any, int]:
    """A text demonstration, a list of them (several teachers), or None; and how many list entries
    were dropped (empty or not text). A list left with one entry becomes that string."""
    items = as_list(x)
    if items is None:
        return _text(x), 0
    kept = [t for t in (_text(i) if isinstance(i, str) else None for i in items) if t is not None]
    dropped = len(items) - len(kept)
    if not kept:
        return None, dropped
    return (kept[0] if len(kept) == 1 else kept), dropped


def _ground_truth(x: Any) -> Any:
    """A string (or list of strings) ground truth; numbers become strings."""
    items = as_list(x)
    if items is not None:
        out = [_text(i) for i in items]
        if not out or any(o is None for o in out):
            raise DropRow("ground truth missing or not text")
        return [o.strip() for o in out]
    t = _text(x)
    if t is None:
        raise DropRow("ground truth missing")
    return t.strip()


def _index(info: Any, i: int) -> Any:
    idx = info.get("index") if isinstance(info, dict) else None
    return idx if (isinstance(idx, (int, str)) and not isinstance(idx, bool) and str(idx).strip()) else i


def gsm8k_to_boxed(solution: str) -> Optional[str]:
    """A GSM8K worked solution with ``#### N`` rewritten for a ``\\boxed{}`` reward, or None when it
    has no ``#### N`` line."""
    m = _HASH.search(solution)
    if m is None:
        return None
    answer = m.group(1).strip().replace(",", "")
    body = _CALC.sub("", solution[: m.start()]).rstrip()
    return (body + "\n" if body else "") + f"The answer is \\boxed{{{answer}}}."


def _messages(prompt: Any, row: int) -> list[dict]:
    msgs = as_list(prompt)
    if msgs is None:
        t = _text(prompt)
        if t is None:
            raise DropRow("no question")
        return build_messages(t)
    out = []
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise DropRow("prompt is not a list of {role, content} messages")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["content"].strip() for m in out):
        raise DropRow("no question")
    return out


def _row(data_source: str, messages: list[dict], ability: Any, gt: Any, info: dict) -> dict:
    return {"data_source": data_source, "prompt": messages, "ability": ability if isinstance(ability, str) else "math",
            "reward_model": {"style": "rule", "ground_truth": gt}, "extra_info": info}


# ------------------------------------------------------------------------------------ formats
def _verl_gsm8k(row: dict, i: int, opts: dict) -> tuple[dict, bool]:
    info = dict(row.get("extra_info") or {}) if isinstance(row.get("extra_info"), dict) else {}
    messages = _messages(row.get("prompt"), i)
    field_ = opts["demo_field"]
    demo = _text(info.get(field_)) or _text(info.get("answer"))
    rm = row.get("reward_model") if isinstance(row.get("reward_model"), dict) else {}
    gt_raw = rm.get("ground_truth")
    if gt_raw is None and demo is not None and _HASH.search(demo):
        gt_raw = _HASH.search(demo).group(1).replace(",", "")
    gt = _ground_truth(gt_raw)
    ds = row.get("data_source") if isinstance(row.get("data_source"), str) else "openai/gsm8k"
    rewritten = False
    if opts["answer_format"] == "boxed":
        messages = [dict(m, content=m["content"].replace(GSM8K_HASH_INSTRUCTION, BOXED_INSTRUCTION)) for m in messages]
        if demo is not None:
            boxed = gsm8k_to_boxed(demo)
            if boxed is None and "\\boxed" not in demo:
                raise DropRow("demonstration has neither '#### N' nor \\boxed{}")
            if boxed is not None:
                info[f"{field_}_original"] = demo
                demo, rewritten = boxed, True
        if ds == "openai/gsm8k":
            ds = "gsm8k_boxed"  # verl's gsm8k scorer reads only '#### N'
    info[field_] = demo
    info.setdefault(f"{field_}_original", None)
    info["index"] = _index(info, i)
    info.setdefault("split", opts["split"])
    return _row(opts["data_source"] or ds, messages, row.get("ability"), gt, info), rewritten


def _verl_math(row: dict, i: int, opts: dict) -> tuple[dict, bool]:
    info = dict(row.get("extra_info") or {}) if isinstance(row.get("extra_info"), dict) else {}
    messages = _messages(row.get("prompt"), i)
    field_ = opts["demo_field"]
    demo = _text(info.get(field_)) or _text(info.get("solution")) or _text(row.get("solution"))
    rm = row.get("reward_model") if isinstance(row.get("reward_model"), dict) else {}
    gt_raw = rm.get("ground_truth")
    if gt_raw is None and demo is not None:
        from verl_ext.reward.extract import last_boxed_content

        gt_raw = last_boxed_content(demo)
    gt = _ground_truth(gt_raw)
    info[field_] = demo
    info["index"] = _index(info, i)
    info.setdefault("split", opts["split"])
    ds = row.get("data_source") if isinstance(row.get("data_source"), str) else "DigitalLearningGmbH/MATH-lighteval"
    return _row(opts["data_source"] or ds, messages, row.get("ability"), gt, info), False


def _luffy(row: dict, i: int, opts: dict) -> tuple[dict, bool]:
    from verl_ext.data.openr1 import BadRowError, parse_source_row

    try:
        messages, target, gt = parse_source_row(row, i)
    except BadRowError as e:
        raise DropRow(str(e).split(": ", 1)[1]) from e
    src = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
    info = {"index": _index(src, i), "split": opts["split"], opts["demo_field"]: target}
    ds = row.get("data_source") if isinstance(row.get("data_source"), str) and row.get("data_source") else "openr1_math"
    return _row(opts["data_source"] or ds, messages, row.get("ability"), _ground_truth(gt), info), False


def _first(row: dict, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in row and row[k] is not None:
            return row[k]
    return None


def _jsonl(row: dict, i: int, opts: dict) -> tuple[dict, bool]:
    q = _text(_first(row, ("question", "problem", "prompt")))
    if q is None:
        raise DropRow("no question (question/problem)")
    gt = _ground_truth(_first(row, ("answer", "ground_truth")))
    demo, dropped_entries = _demonstrations(_first(row, ("demonstration", "solution", "target")))
    opts["demo_entries_dropped"] += dropped_entries  # counted in the report
    idx = _first(row, ("id", "index"))
    info = {"index": idx if isinstance(idx, (int, str)) and not isinstance(idx, bool) else i,
            "split": opts["split"], opts["demo_field"]: demo}
    return _row(opts["data_source"] or "user_math", build_messages(q, opts["prompt_style"]), row.get("ability"),
                gt, info), False


CONVERTERS: dict[str, Callable[[dict, int, dict], tuple[dict, bool]]] = {
    "verl_gsm8k": _verl_gsm8k, "verl_math": _verl_math, "luffy": _luffy, "jsonl": _jsonl}


def convert_rows(rows: Iterable[dict], fmt: str, answer_format: str = "boxed", data_source: Optional[str] = None,
                 demo_field: Optional[str] = None, split: str = "train", prompt_style: str = "user",
                 drop_missing_demo: bool = False, score_demos: bool = True) -> tuple[list[dict], ConvertReport]:
    """Source rows of format ``fmt`` -> contract rows and the report (see the module docstring).
    ``demo_field``: the extra_info key of the demonstration; None: ``hpt.demo_field``'s default."""
    if demo_field is None:
        from verl_ext.recipe_defaults import yaml_defaults

        demo_field = yaml_defaults()["demo_field"]
    if fmt not in CONVERTERS:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer format {answer_format!r}; choose from {ANSWER_FORMATS}")
    opts = {"answer_format": answer_format, "data_source": data_source, "demo_field": demo_field, "split": split,
            "prompt_style": prompt_style, "demo_entries_dropped": 0}
    report = ConvertReport(format=fmt)
    out: list[dict] = []
    for i, row in enumerate(rows):
        report.total += 1
        try:
            new, rewritten = CONVERTERS[fmt](row, i, opts)
        except DropRow as e:
            report.dropped[str(e)] += 1
            continue
        if new["extra_info"].get(demo_field) is None:
            if drop_missing_demo:
                report.dropped["no demonstration (--drop-missing-demo)"] += 1
                continue
            report.no_demonstration += 1
        report.demos_rewritten += rewritten
        report.kept += 1
        report.data_sources[new["data_source"]] += 1
        out.append(new)
    report.demo_entries_dropped = opts["demo_entries_dropped"]
    report.demo_lists = sum(isinstance(r["extra_info"].get(demo_field), list) for r in out)
    if report.demo_lists:  # parquet keeps one type per column: every demonstration becomes a list
        for r in out:
            if isinstance(r["extra_info"].get(demo_field), str):
                r["extra_info"][demo_field] = [r["extra_info"][demo_field]]
    kinds = {type(r["extra_info"]["index"]) for r in out}
    if len(kinds) > 1:  # parquet keeps one type per column: mixed ids become strings
        for r in out:
            r["extra_info"]["index"] = str(r["extra_info"]["index"])
    if score_demos:
        if fmt == "verl_gsm8k" and answer_format == "hash":  # meant for verl's gsm8k scorer
            from verl.utils.reward_score import default_compute_score as score_fn

            report.scored_with = "verl's default_compute_score (data_source dispatch)"
        else:
            from verl_ext.reward import compute_score as score_fn
        for r in out:
            demo = r["extra_info"].get(demo_field)
            for text in (demo if isinstance(demo, list) else [] if demo is None else [demo]):
                report.demos_scored += 1
                res = score_fn(r["data_source"], text, r["reward_model"]["ground_truth"])
                s = res["score"] if isinstance(res, dict) else res
                report.demos_passing_reward += float(s) >= 1.0
    return out, report
