"""OpenR1-Math-46k-8192 (LUFFY's demonstration set) -> verl RL rows with the demonstration.

Source rows (``Elliott/Openr1-Math-46k-8192``): ``prompt`` = [LUFFY system message, user
message], ``target`` = [one assistant message: the DeepSeek-R1 solution, ``<think>`` included],
``reward_model.ground_truth``, plus ``data_source``/``ability``/``extra_info``.

Output rows: ``data_source``, ``prompt`` (chat list), ``ability``, ``reward_model {style: rule,
ground_truth}``, ``extra_info {index, split, target}``; ``extra_info["target"]`` is the
demonstration text (verl passes ``extra_info`` through to the trainer and the reward, whereas
other columns are dropped from the generation batch).

Prompt handling, as the release's ``prepare_train.py``: system messages are removed (the model's
chat template then supplies its default system prompt). ``prompt_style="zero"`` instead writes
the LLaMA plain template (see :mod:`verl_ext.data.prompts`); ``"simplerl"`` puts the evaluation
system prompt in place of LUFFY's.

Demonstration length: counted in tokens of the given tokenizer without special tokens, plus one
for the EOS the trainer appends, against ``max_target_tokens`` (8192 in the release, where the
trainer truncated longer ones). ``length_policy`` "filter" drops longer rows, "truncate" cuts
the text to fit, "keep" only counts them.

RL-only data (``demonstrations=False``; ``prepare_openr1.py --no-demonstrations``): the demonstration
field is neither required nor read, and rows carry no ``extra_info["target"]``. For a run whose gate
never routes to SFT (plain GRPO, e.g. stage 2 of SFT -> GRPO on ``Elliott/Openr1-Math-48k-Complement``):
it reads no demonstration (the start-up data check skips them when the gate cannot choose SFT), so a
source without ``target``, or with an odd one, must not stop its preparation, and a demonstration
length limit (which needs a tokenizer) has nothing to measure.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from verl_ext.data.prompts import build_messages

HF_DATASET_ID = "Elliott/Openr1-Math-46k-8192"
LENGTH_POLICIES = ("filter", "truncate", "keep")


class BadRowError(ValueError):
    """A source row lacks a required field (message names the row and the field)."""


@dataclass
class PrepReport:
    total: int = 0
    written: int = 0
    skipped_bad: int = 0
    bad_reasons: Counter = field(default_factory=Counter)
    filtered_long_target: int = 0
    truncated_target: int = 0
    long_target_kept: int = 0
    filtered_long_prompt: int = 0
    max_target_tokens_seen: int = 0
    demonstrations: bool = True  # False: RL-only rows, no extra_info["target"]

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["bad_reasons"] = dict(self.bad_reasons)
        return d


def _as_list(x: Any) -> list | None:
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        return list(x)
    if isinstance(x, (list, tuple)):
        return list(x)
    return None


def _message_list(x: Any, row: int, name: str) -> list[dict]:
    msgs = _as_list(x)
    if not msgs:
        raise BadRowError(f"row {row}: field {name!r} is missing or empty")
    out = []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
            raise BadRowError(f"row {row}: field {name!r}[{j}] is not a {{role, content}} message")
        out.append({"role": str(m["role"]), "content": m["content"]})
    return out


def parse_source_row(row: dict, index: int, demonstrations: bool = True) -> tuple[list[dict], str | None, str]:
    """(messages without system prompt, demonstration text, ground truth) or BadRowError.
    ``demonstrations=False``: the ``target`` field is not read (the text is None)."""
    if "prompt" not in row:
        raise BadRowError(f"row {index}: missing field 'prompt'")
    messages = [m for m in _message_list(row["prompt"], index, "prompt") if m["role"] != "system"]
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise BadRowError(f"row {index}: field 'prompt' has no non-empty user message")

    target = _parse_target(row, index) if demonstrations else None

    rm = row.get("reward_model")
    gt = rm.get("ground_truth") if isinstance(rm, dict) else None
    if gt is None or (isinstance(gt, str) and not gt.strip()):
        raise BadRowError(f"row {index}: missing field 'reward_model.ground_truth'")
    gt_list = _as_list(gt)
    if gt_list is not None:  # a list of acceptable answers stays a list
        gt = [str(g) for g in gt_list]
    else:
        gt = str(gt)
    return messages, target, gt


def _parse_target(row: dict, index: int) -> str:
    if "target" not in row or row["target"] is None:
        raise BadRowError(f"row {index}: missing field 'target'")
    tgt = row["target"]
    if isinstance(tgt, str):
        target = tgt
    else:
        target = _message_list(tgt, index, "target")[0]["content"]
    if not target.strip():
        raise BadRowError(f"row {index}: field 'target' is empty")
    return target


def _restyle(messages: list[dict], style: str) -> list[dict]:
    if style == "user":
        return messages
    question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return build_messages(question, style)


def convert_rows(
    rows: Iterable[dict],
    tokenizer=None,
    max_target_tokens: int | None = 8192,
    length_policy: str = "filter",
    max_prompt_tokens: int | None = None,
    prompt_style: str = "user",
    skip_bad: bool = False,
    split: str = "train",
    data_source: str | None = None,
    demonstrations: bool = True,
) -> tuple[list[dict], PrepReport]:
    """Convert source rows; see the module docstring. ``tokenizer`` is needed for any token
    limit (``max_target_tokens``/``max_prompt_tokens``); pass ``max_target_tokens=None`` to skip
    length handling entirely. ``demonstrations=False`` writes RL-only rows (no ``target`` read or
    written; ``max_target_tokens`` must then be None)."""
    if length_policy not in LENGTH_POLICIES:
        raise ValueError(f"length_policy must be one of {LENGTH_POLICIES}")
    if not demonstrations and max_target_tokens is not None:
        raise ValueError("max_target_tokens limits demonstrations, which demonstrations=False does not write; "
                         "pass max_target_tokens=None")
    if (max_target_tokens is not None or max_prompt_tokens is not None) and tokenizer is None:
        raise ValueError("a tokenizer is required for token-length limits")
    report = PrepReport(demonstrations=demonstrations)
    out: list[dict] = []
    for i, row in enumerate(rows):
        report.total += 1
        try:
            messages, target, gt = parse_source_row(row, i, demonstrations)
        except BadRowError as e:
            if not skip_bad:
                raise
            report.skipped_bad += 1
            report.bad_reasons[str(e).split(": ", 1)[1]] += 1
            continue

        messages = _restyle(messages, prompt_style)
        if max_prompt_tokens is not None:
            n_prompt = _prompt_tokens(tokenizer, messages)
            if n_prompt > max_prompt_tokens:
                report.filtered_long_prompt += 1
                continue

        if max_target_tokens is not None:
            ids = tokenizer(target, add_special_tokens=False)["input_ids"]
            n = len(ids) + 1  # + the EOS the trainer appends
            report.max_target_tokens_seen = max(report.max_target_tokens_seen, n)
            if n > max_target_tokens:
                if length_policy == "filter":
                    report.filtered_long_target += 1
                    continue
                if length_policy == "truncate":
                    target = tokenizer.decode(ids[: max_target_tokens - 1], skip_special_tokens=False)
                    report.truncated_target += 1
                else:
                    report.long_target_kept += 1

        src_extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
        extra = {"index": src_extra.get("index", i), "split": split}
        if demonstrations:
            extra["target"] = target
        out.append(
            {
                "data_source": data_source or row.get("data_source") or "openr1_math",
                "prompt": messages,
                "ability": row.get("ability") or "math",
                "reward_model": {"style": "rule", "ground_truth": gt},
                "extra_info": extra,
            }
        )
        report.written += 1
    return out, report


def _prompt_tokens(tokenizer, messages: list[dict]) -> int:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        return len(ids)
    return len(tokenizer("\n".join(m["content"] for m in messages))["input_ids"])


def load_source(source: str, split: str = "train") -> list[dict]:
    """Rows from a local .parquet/.json/.jsonl file, or a Hugging Face dataset id."""
    import pandas as pd

    if os.path.exists(source):
        if source.endswith(".parquet"):
            df = pd.read_parquet(source)
        elif source.endswith(".jsonl"):
            df = pd.read_json(source, lines=True)
        elif source.endswith(".json"):
            with open(source) as f:
                df = pd.DataFrame(json.load(f))
        else:
            raise ValueError(f"unsupported file type: {source} (use .parquet, .json or .jsonl)")
        return df.to_dict(orient="records")
    import datasets  # network access: only at preparation time, never during training

    return list(datasets.load_dataset(source, split=split))
