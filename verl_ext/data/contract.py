"""The data contract: the row schema an HPT run reads, in one place.

A dataset row is what verl's ``RLHFDataset`` reads from a ``.parquet`` (or ``.json``/``.jsonl``)
file, the shape of verl's own ``examples/data_preprocess/gsm8k.py`` plus a demonstration:

.. code-block:: python

    {"data_source": "my_math",                                    # selects / is passed to the reward
     "prompt": [{"role": "user", "content": "What is 2+3?"}],    # chat messages (data.prompt_key)
     "ability": "math",                                           # optional, passed through
     "reward_model": {"style": "rule", "ground_truth": "5"},      # the answer the reward compares with
     "extra_info": {"index": 0,                                   # int or str id, logged per step
                    "split": "train",
                    "target": "2+3=5. \\boxed{5}"}}               # the demonstration (hpt.demo_field)

``extra_info.target`` may also be a list of strings, several demonstrations of the question (e.g. one
per teacher): ``hpt.demo_choice`` says which train (:func:`verl_ext.hpt.demonstrations.choose_entries`).
Every entry must be a non-empty string; a bad one is named with its index (``extra_info.target[2]``).

:data:`CONTRACT` lists every field with its type, when it is required and who reads it;
:func:`contract_markdown` renders it (the README's "Your own data" section carries the same table,
a test keeps the two in step). The ``check_*`` functions below are the per-field checks that
:mod:`verl_ext.checks.rows` runs on every row at start-up; each returns ``None`` for a good
value or ``(reason, detail)``. Every field the trainer reads *after generation* (``data_source``,
``reward_model.ground_truth``, ``extra_info.index``, the demonstration) is among them, so a bad
value stops the start with file, row and field named instead of crashing a step.

``extra_info.index`` may be an int or a string (``"q-0"``): the trainer logs it as the question's
id in its per-step gate decisions (ints stay ints, other ids are kept as strings). A float, a
boolean, a list or a null is refused.

The answer format is part of the contract too, but it is the reward's: the project's math reward
(``verl_ext/reward``, what ``recipe/hpt/config/exp/cpu_default.yaml`` and the GPU scripts use) reads the
*last* ``\\boxed{...}`` of a response; verl's own dispatch on ``data_source``
(``verl.utils.reward_score.default_compute_score``, used when ``reward.custom_reward_function.path``
is null) reads ``#### N`` for ``openai/gsm8k``. Demonstrations must end in the format the run's
reward reads: the start-up demonstration check (:mod:`verl_ext.checks.reward`) scores them with
that reward and stops the run when too few pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

# A check's verdict: None (good) or (reason, human-readable detail).
Problem = Optional[tuple[str, str]]


@dataclass(frozen=True)
class ContractField:
    path: str  # dotted path in the row; {demo} stands for hpt.demo_field, {prompt} for data.prompt_key
    type: str
    required: str  # "yes" | a condition
    read_by: str
    purpose: str


CONTRACT: tuple[ContractField, ...] = (
    ContractField("data_source", "non-empty string", "yes",
                  "verl's reward loop (after generation); the start-up reward check",
                  "passed to the reward function; with no reward.custom_reward_function it *selects* verl's "
                  "scorer (openai/gsm8k, lighteval/MATH, ...; other names are refused at start-up); names the "
                  "validation metrics (`val-core/<data_source>/...`)"),
    ContractField("{prompt}", "list of {role: str, content: str} messages", "yes",
                  "verl's RLHFDataset (chat template, length filter)",
                  "the question; data.prompt_key names the column (default prompt)"),
    ContractField("reward_model.ground_truth", "string (or a list of acceptable strings)", "yes",
                  "the reward function (after generation)",
                  "the reference answer, e.g. \"72\" (not an int, not \"#### 72\")"),
    ContractField("reward_model.style", "string", "no", "nobody in HPT", "verl's convention: \"rule\""),
    ContractField("ability", "string", "no", "nobody in HPT", "verl's convention, e.g. \"math\""),
    ContractField("extra_info", "mapping", "when the gate can choose SFT",
                  "verl (passes it through to the trainer and the reward)", "holds the fields below"),
    ContractField("extra_info.{demo}",
                  "non-empty string, or a non-empty list of non-empty strings (several demonstrations, see "
                  "hpt.demo_choice)", "per hpt.data.on_missing_demo (train files)",
                  "the trainer's merge (after generation); the start-up reward check",
                  "the demonstration (hpt.demo_field, default target): one assistant response, ending in the "
                  "answer format the reward reads; its tokens + EOS should fit data.max_response_length (a list: "
                  "each entry, all of them scored at start-up)"),
    ContractField("extra_info.index", "int or string", "no (absent: logged as -1)",
                  "the trainer (per-step gate decisions, hpt_state)", "the question's id in logs and checkpoints"),
    ContractField("extra_info.split", "string", "no", "nobody in HPT", "verl's convention: train / test"),
)


# hpt.demo_field (the extra_info key that holds the demonstration) has its default in one place, the
# trainer YAML: a run reads it from its config (verl_ext.hpt.config.HPTConfig), a tool without one
# from verl_ext.recipe_defaults.yaml_defaults().


def field_path(f: ContractField, demo_field: str, prompt_key: str = "prompt") -> str:
    return f.path.replace("{demo}", demo_field).replace("{prompt}", prompt_key)


def contract_markdown(demo_field: str, prompt_key: str = "prompt") -> str:
    """The contract as a markdown table (the README's "Your own data" section holds this table)."""
    lines = ["| field | type | required | read by | what for |", "|---|---|---|---|---|"]
    for f in CONTRACT:
        lines.append(f"| `{field_path(f, demo_field, prompt_key)}` | {f.type} | {f.required} | {f.read_by} | "
                     f"{f.purpose} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ checks
def _is_blank(x: Any) -> bool:
    return isinstance(x, str) and not x.strip()


def _type(x: Any) -> str:
    return type(x).__name__


def as_list(x: Any) -> Optional[list]:
    if isinstance(x, (list, tuple)):
        return list(x)
    if type(x).__name__ == "ndarray":
        return list(x)
    return None


def check_data_source(row: dict) -> Problem:
    if "data_source" not in row or row["data_source"] is None:
        return "data_source_missing", "missing (verl's reward loop reads it for every rollout)"
    ds = row["data_source"]
    if not isinstance(ds, str):
        return "data_source_not_string", f"is a {_type(ds)} ({str(ds)[:40]!r}), expected a string"
    if not ds.strip():
        return "data_source_missing", "is blank"
    return None


def check_prompt(value: Any) -> Problem:
    """(reason, detail) of a bad prompt value, or None. A prompt is a list of chat messages."""
    if value is None:
        return "prompt_missing", "missing (null)"
    msgs = as_list(value)
    if msgs is None:
        return "prompt_not_string", f"is a {_type(value)}, expected a list of {{role, content}} messages"
    if not msgs:
        return "prompt_missing", "is an empty message list"
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or "content" not in m or "role" not in m:
            return "prompt_not_string", f"message {j} is not a {{role, content}} mapping: {str(m)[:80]!r}"
        if not isinstance(m["content"], str):
            return "prompt_not_string", f"message {j} content is a {_type(m['content'])}, expected a string"
        if not isinstance(m["role"], str):
            return "prompt_not_string", f"message {j} role is a {_type(m['role'])}, expected a string"
    if not any(m["content"].strip() for m in msgs):
        return "prompt_missing", "every message is empty"
    return None


def check_ground_truth(row: dict) -> Problem:
    rm = row.get("reward_model")
    if rm is None:
        return "ground_truth_missing", "missing (no reward_model)"
    if not isinstance(rm, dict):
        return "ground_truth_not_string", f"reward_model is a {_type(rm)}, expected a mapping with ground_truth"
    if "ground_truth" not in rm or rm["ground_truth"] is None:
        return "ground_truth_missing", "missing (null)"
    gt = rm["ground_truth"]
    if isinstance(gt, str):
        return ("ground_truth_missing", "is blank") if _is_blank(gt) else None
    items = as_list(gt)
    if items is None:
        return "ground_truth_not_string", (f"is a {_type(gt)} ({str(gt)[:40]!r}), expected a string "
                                           f"(write it as {str(gt)[:40]!r} in quotes)")
    if not items:
        return "ground_truth_missing", "is an empty list"
    for j, g in enumerate(items):
        if not isinstance(g, str):
            return "ground_truth_not_string", f"element {j} is a {_type(g)}, expected a string"
        if _is_blank(g):
            return "ground_truth_missing", f"element {j} is blank"
    return None


def check_extra_info(row: dict) -> Problem:
    info = row.get("extra_info")
    if info is not None and not isinstance(info, dict):
        return "extra_info_not_mapping", f"is a {_type(info)}, expected a mapping (a struct column)"
    return None


def check_index(row: dict) -> Problem:
    """``extra_info.index``: absent, an int or a non-blank string (see the module docstring)."""
    info = row.get("extra_info")
    if not isinstance(info, dict) or "index" not in info:
        return None
    idx = info["index"]
    if isinstance(idx, bool) or not isinstance(idx, (int, str)) or (isinstance(idx, str) and not idx.strip()):
        what = "null" if idx is None else f"a {_type(idx)} ({str(idx)[:40]!r})"
        return "index_bad_type", f"is {what}, expected an int or a non-empty string (or no index at all)"
    return None


def demo_path(demo_field: str, index: Optional[int] = None) -> str:
    """The dotted name of a row's demonstration field, or of entry ``index`` of a list of them:
    ``extra_info.target``, ``extra_info.target[2]``."""
    return f"extra_info.{demo_field}" + ("" if index is None else f"[{index}]")


def check_demo(row: dict, demo_field: str) -> Problem:
    """The row's demonstration (a string or a list of strings), judged by
    :func:`verl_ext.data.demonstration_field.demonstration_problem` (a bad list entry's detail starts with
    its ``[index]``)."""
    from verl_ext.data.demonstration_field import demonstration_of, demonstration_problem

    return demonstration_problem(demonstration_of(row.get("extra_info"), demo_field))


def check_demo_field(row: dict, demo_field: str) -> Optional[tuple[str, str, str]]:
    """:func:`check_demo` with the field named: (``extra_info.<demo>`` or, for a bad list entry,
    ``extra_info.<demo>[i]``, reason, detail), or None."""
    from verl_ext.data.demonstration_field import demonstration_entry_problem, demonstration_of

    p = demonstration_entry_problem(demonstration_of(row.get("extra_info"), demo_field))
    return None if p is None else (demo_path(demo_field, p[0]), p[1], p[2])
