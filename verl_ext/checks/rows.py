"""Row checks of one data file against the data contract, and the reports they fill.

:func:`check_file` checks every row of one train or val file (:mod:`verl_ext.checks.data` runs it
over ``data.train_files`` / ``data.val_files`` at start-up and decides, with :func:`is_fatal`, what
stops the start). A row's first problem is one of

=======================  ==========================================================================
reason                   row problem
=======================  ==========================================================================
prompt_missing           ``data.prompt_key`` (``prompt``) absent, null, an empty list or all blank
prompt_not_string        not a list of ``{role, content}`` messages with string role and content
prompt_too_long          chat-templated prompt (tokenised as verl does) > ``data.max_prompt_length``
data_source_missing      ``data_source`` absent, null or blank (verl's reward loop reads it)
data_source_not_string   ``data_source`` is not a string
extra_info_not_mapping   ``extra_info`` present but not a mapping
index_bad_type           ``extra_info.index`` neither an int nor a non-empty string
ground_truth_missing     ``reward_model.ground_truth`` absent, null or blank
ground_truth_not_string  neither a string nor a non-empty list of strings
demo_missing             ``extra_info[hpt.demo_field]`` absent, null or blank, an empty list, or a
                         null/blank list entry                                    (train, gate can SFT)
demo_not_string          the demonstration is neither a string nor a list of strings (train, gate can SFT)
demo_too_long            demonstration + EOS > ``rollout.response_length`` tokens (train, gate can SFT)
=======================  ==========================================================================

A list of demonstrations (several per question, ``hpt.demo_choice``) is checked entry by entry:
every entry must be a non-empty string and is measured against the response length, and a problem
names the entry as its field (``extra_info.target[2]``).

The field list, types and purposes are the data contract, :mod:`verl_ext.data.contract` (the
per-field checks live there too).

What happens to a bad row is ``hpt.data.on_bad_row``: ``error`` (default) raises one
:class:`DataValidationError` naming file, row (0-based, in the file) and field of the first
problems; ``skip`` removes the row from what verl trains on, counted per reason and logged. Two
exceptions: an over-long prompt is always a counted skip when ``data.filter_overlong_prompts`` is
true (verl would drop it anyway), and an over-long demonstration follows ``hpt.data.on_long_demo``:
``truncate`` (default, the release's behaviour: kept, counted, cut to the response length by the
merge), ``skip`` or ``error``; and a missing demonstration follows ``hpt.data.on_missing_demo``:
``error``, ``skip``, or ``rl`` (kept and counted as ``hpt/data/demos_missing_rl``; when the gate
routes such a question to SFT the trainer trains it with RL on its rollouts instead, counted per step
as ``hpt/demo_missing``); null (default) follows ``on_bad_row``. Demonstration checks only run when
the gate can route a question to SFT (:meth:`GateConfig.can_choose_sft
<verl_ext.hpt.gate.GateConfig.can_choose_sft>`: every strategy but ``never``, ``fixed`` with β = 0, a
soft table without β > 0). A file where *no* row has the demonstration field is a configuration error
in any mode.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

from verl_ext.data.contract import (
    check_data_source,
    check_demo_field,
    check_extra_info,
    check_ground_truth,
    check_index,
    check_prompt,
    demo_path,
)


class DataValidationError(ValueError):
    """Bad dataset rows (message: file, row, field) or a dataset that cannot serve the gate."""


@dataclass(frozen=True)
class RowProblem:
    file: str
    row: int
    field: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}: row {self.row}: field {self.field!r}: {self.detail}"


@dataclass
class FileReport:
    path: str
    split: str  # train | val
    rows: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows removed
    long_demos_truncated: int = 0  # kept rows whose demonstration the merge will cut
    demos_missing_rl: int = 0  # kept rows without a demonstration (on_missing_demo=rl)
    demo_check: Optional[dict] = None  # the demonstration reward check (scored, passed, rate, ...)
    data_sources: dict = field(default_factory=dict)  # data_source -> rows
    used_path: Optional[str] = None  # the filtered copy verl reads, when rows were removed

    def as_dict(self) -> dict:
        return {"path": self.path, "split": self.split, "rows": self.rows, "kept": self.kept,
                "skipped": dict(self.skipped), "long_demos_truncated": self.long_demos_truncated,
                "demos_missing_rl": self.demos_missing_rl, "demo_check": self.demo_check,
                "data_sources": dict(self.data_sources), "used_path": self.used_path or self.path}


@dataclass
class DataReport:
    files: list[FileReport] = field(default_factory=list)
    validated: bool = True
    reward: Optional[str] = None  # which reward function the run uses, and why
    # What verl should read: the input files, a filtered copy in place of each file that lost rows.
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)

    def _sum(self, split: str, attr: str) -> int:
        return sum(getattr(f, attr) for f in self.files if f.split == split)

    def skipped(self, split: str) -> Counter:
        out: Counter = Counter()
        for f in self.files:
            if f.split == split:
                out.update(f.skipped)
        return out

    def demo_check(self) -> Optional[dict]:
        """The demonstration reward check over all train files (None when it did not run)."""
        checks = [f.demo_check for f in self.files if f.split == "train" and f.demo_check]
        if not checks:
            return None
        scored = sum(c["scored"] for c in checks)
        passed = sum(c["passed"] for c in checks)
        return {"scored": scored, "passed": passed, "rate": passed / scored if scored else None}

    def metrics(self) -> dict[str, float]:
        """Logged at the first training step (``hpt/data/...``)."""
        m = {
            "hpt/data/train_rows": self._sum("train", "rows"),
            "hpt/data/train_rows_kept": self._sum("train", "kept"),
            "hpt/data/skipped_rows": sum(self.skipped("train").values()),
            "hpt/data/val_skipped_rows": sum(self.skipped("val").values()),
            "hpt/data/long_demos_truncated": self._sum("train", "long_demos_truncated"),
            "hpt/data/demos_missing_rl": self._sum("train", "demos_missing_rl"),
        }
        for reason, count in sorted(self.skipped("train").items()):
            m[f"hpt/data/skipped/{reason}"] = count
        dc = self.demo_check()
        if dc and dc["rate"] is not None:
            m["hpt/data/demo_reward_pass_rate"] = dc["rate"]
            m["hpt/data/demo_reward_scored"] = dc["scored"]
        return m

    def as_dict(self) -> dict:
        return {"validated": self.validated, "reward": self.reward, "files": [f.as_dict() for f in self.files],
                "train_skipped": dict(self.skipped("train")), "val_skipped": dict(self.skipped("val")),
                "demo_check": self.demo_check()}

    def summary_line(self) -> str:
        tr, va = self.skipped("train"), self.skipped("val")
        line = (f"HPT data: train {self._sum('train', 'kept')}/{self._sum('train', 'rows')} rows kept "
                f"(skipped {dict(tr) or 0}, {self._sum('train', 'long_demos_truncated')} demonstrations to be "
                f"truncated, {self._sum('train', 'demos_missing_rl')} without a demonstration kept for RL); "
                f"val {self._sum('val', 'kept')}/{self._sum('val', 'rows')} kept (skipped {dict(va) or 0})")
        dc = self.demo_check()
        if dc and dc["scored"]:
            line += (f"; demonstrations passing the reward: {dc['passed']}/{dc['scored']} "
                     f"({100 * dc['rate']:.1f}%)")
        return line


@dataclass(frozen=True)
class RowChecks:
    """What to check in one file and the limits. The policies and the demonstration field come from
    the run's :class:`verl_ext.hpt.config.HPTConfig` (no defaults here: their home is the trainer YAML)."""

    demo_field: str  # hpt.demo_field
    on_bad_row: str  # hpt.data.on_bad_row
    on_long_demo: str  # hpt.data.on_long_demo
    on_missing_demo: str  # resolved policy: error | skip | rl (hpt.data.on_missing_demo, else on_bad_row)
    prompt_key: str = "prompt"
    max_prompt_length: Optional[int] = None
    check_demo: bool = False
    max_demo_tokens: Optional[int] = None  # demonstration + EOS
    prompt_too_long_skips: bool = False  # data.filter_overlong_prompts
    apply_chat_template_kwargs: dict = field(default_factory=dict)
    demo_check_rows: int = 0  # demonstrations sampled for the reward check (0: none)
    demo_check_min_rate: Optional[float] = None  # hpt.data.demo_check_min_rate, when demo_check_rows > 0
    correct_threshold: Optional[float] = None  # hpt.gate.correct_threshold, when demo_check_rows > 0
    seed: int = 0


def _prompt_text(tokenizer, messages: list, kwargs: dict) -> str:
    kw = {k: v for k, v in kwargs.items() if k not in ("tokenize", "return_dict", "return_tensors")}
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kw)


def _token_lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    if not texts:
        return []
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [len(x) for x in enc]


def read_table(path: str):
    """A data file as a pyarrow table (verl reads .parquet, .json, .jsonl)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.endswith(".parquet"):
        return pq.read_table(path)
    if path.endswith(".jsonl") or path.endswith(".json"):
        import pandas as pd

        try:
            df = pd.read_json(path, lines=True)
        except ValueError:
            df = pd.read_json(path)
        return pa.Table.from_pandas(df, preserve_index=False)
    raise DataValidationError(f"{path}: unsupported file type (verl reads .parquet, .json, .jsonl)")


@dataclass
class FileScan:
    """What :func:`check_file` found besides the problems: rows for the reward checks."""

    source_rows: dict = field(default_factory=dict)  # data_source -> (row, ground truth, text, extra_info)
    demo_sample: list = field(default_factory=list)  # (row, data_source, ground truth, demo or list, extra_info)


def _sample_rows(n_rows: int, k: int, seed: int) -> set[int]:
    """All rows when ``n_rows <= k``, else a seeded sample of ``k`` (the same for the same file)."""
    if k <= 0:
        return set()
    if n_rows <= k:
        return set(range(n_rows))
    import numpy as np

    return set(int(i) for i in np.random.default_rng(seed).choice(n_rows, size=k, replace=False))


def _row_problem(row: dict, checks: RowChecks) -> Optional[tuple[str, str, str]]:
    """(field, reason, detail) of the first contract violation of one row, or None."""
    if checks.prompt_key not in row:
        return checks.prompt_key, "prompt_missing", f"missing (no {checks.prompt_key!r} column)"
    p = check_prompt(row.get(checks.prompt_key))
    if p:
        return (checks.prompt_key, *p)
    for fld, check in (("data_source", check_data_source), ("extra_info", check_extra_info),
                       ("extra_info.index", check_index), ("reward_model.ground_truth", check_ground_truth)):
        p = check(row)
        if p:
            return (fld, *p)
    if checks.check_demo:
        p = check_demo_field(row, checks.demo_field)
        if p:
            return p
    return None


def check_file(path: str, split: str, checks: RowChecks, tokenizer=None, batch_rows: int = 512,
               display_path: Optional[str] = None, scan: Optional[FileScan] = None
               ) -> tuple[FileReport, list[RowProblem], list[int]]:
    """Check every row of one file. Returns (report, problems that make a row bad, kept row indices).

    Problems are only *collected* here; the caller decides to raise or skip. ``tokenizer`` is needed
    for the length limits (skipped when None). ``scan`` (optional) receives the rows the reward
    checks score: the first good row of each data_source and the sampled demonstrations.
    """
    name = display_path or path
    table = read_table(path)
    report = FileReport(path=name, split=split, rows=table.num_rows)
    cols = set(table.column_names)
    if checks.check_demo:
        if "extra_info" not in cols:
            raise DataValidationError(
                f"{name}: no 'extra_info' column, so no demonstration (extra_info[{checks.demo_field!r}]) for the "
                f"gate to route questions to SFT. Set hpt.demo_field, or hpt.gate.strategy=never for pure RL.")
    needed = [c for c in (checks.prompt_key, "data_source", "reward_model", "extra_info") if c in cols]
    sub = table.select(needed)
    sample = _sample_rows(table.num_rows, checks.demo_check_rows, checks.seed) if checks.check_demo else set()
    problems: list[RowProblem] = []
    kept: list[int] = []
    any_demo_field = False
    sources: Counter = Counter()
    offset = 0
    for rb in sub.to_batches(max_chunksize=batch_rows):
        rows = rb.to_pylist()
        prompt_texts: dict[int, str] = {}
        demo_texts: dict[int, str] = {}
        bad: dict[int, RowProblem] = {}
        no_demo: set[int] = set()
        for j, row in enumerate(rows):
            i = offset + j
            info = row.get("extra_info")
            if isinstance(info, dict) and info.get(checks.demo_field, None) is not None:
                any_demo_field = True
            p = _row_problem(row, checks)
            if p and p[1] == "demo_missing" and checks.on_missing_demo == "rl":
                no_demo.add(i)  # kept: the trainer's fallback trains such a question with RL
                p = None
            if p:
                bad[i] = RowProblem(name, i, *p)
                continue
            if checks.check_demo and i not in no_demo:
                demo_texts[i] = info[checks.demo_field]  # a string, or a list of strings
            if tokenizer is not None and checks.max_prompt_length is not None:
                prompt_texts[i] = _prompt_text(tokenizer, list(row[checks.prompt_key]),
                                               checks.apply_chat_template_kwargs)
        if tokenizer is not None:
            p_idx = list(prompt_texts)
            for i, n in zip(p_idx, _token_lengths(tokenizer, [prompt_texts[i] for i in p_idx])):
                if n > checks.max_prompt_length and i not in bad:
                    bad[i] = RowProblem(name, i, checks.prompt_key, "prompt_too_long",
                                        f"{n} tokens > data.max_prompt_length={checks.max_prompt_length}: raise "
                                        f"data.max_prompt_length to at least {n} (or set "
                                        f"data.filter_overlong_prompts=true to drop such rows)")
            if checks.check_demo and checks.max_demo_tokens is not None:
                # every entry of a list is measured (each may train): (row, entry index or None, text)
                d_idx = [(i, j, text) for i in demo_texts if i not in bad
                         for j, text in (enumerate(demo_texts[i]) if not isinstance(demo_texts[i], str)
                                         else [(None, demo_texts[i])])]
                for (i, j, _), n in zip(d_idx, _token_lengths(tokenizer, [text for *_, text in d_idx])):
                    if n + 1 > checks.max_demo_tokens:
                        if checks.on_long_demo == "truncate":
                            report.long_demos_truncated += 1
                        elif i not in bad:
                            bad[i] = RowProblem(name, i, demo_path(checks.demo_field, j), "demo_too_long",
                                                f"{n} tokens + EOS > response length {checks.max_demo_tokens}: "
                                                f"raise data.max_response_length to at least {n + 1}")
        for j, row in enumerate(rows):
            i = offset + j
            if i in bad:
                problems.append(bad[i])
                continue
            kept.append(i)
            report.demos_missing_rl += i in no_demo
            ds = row["data_source"]
            sources[ds] += 1
            if scan is not None:
                gt = row["reward_model"]["ground_truth"]
                if ds not in scan.source_rows:
                    demo = demo_texts.get(i)
                    first = demo if demo is None or isinstance(demo, str) else demo[0]
                    scan.source_rows[ds] = (i, gt, first, row.get("extra_info"))
                if i in sample and i in demo_texts:
                    scan.demo_sample.append((i, ds, gt, demo_texts[i], row.get("extra_info")))
        offset += len(rows)
    if checks.check_demo and report.rows and not any_demo_field:
        raise DataValidationError(
            f"{name}: no row has extra_info[{checks.demo_field!r}] (hpt.demo_field), but the gate can route "
            f"questions to SFT and needs their demonstrations. Point hpt.demo_field at the demonstration field, "
            f"or use hpt.gate.strategy=never for pure RL.")
    report.kept = len(kept)
    report.data_sources = dict(sources)
    return report, problems, kept


def is_fatal(problem: RowProblem, checks: RowChecks) -> bool:
    """Whether ``problem`` stops the start (else its row is skipped and counted)."""
    if problem.reason == "prompt_too_long" and checks.prompt_too_long_skips:
        return False
    if problem.reason == "demo_too_long":
        return checks.on_long_demo == "error"
    if problem.reason == "demo_missing":
        return checks.on_missing_demo == "error"
    return checks.on_bad_row == "error"


def error_message(problems: list[RowProblem], shown: int, split: str) -> str:
    """The :class:`DataValidationError` message for fatal ``problems``: the first ``shown`` and how to proceed."""
    counts = Counter(p.reason for p in problems)
    lines = [f"HPT data validation: {len(problems)} bad {split} row(s) ({dict(counts)}):"]
    lines += [f"  {p}" for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"  ... and {len(problems) - shown} more")
    lines.append("Fix the data (the row contract: README 'Your own data', verl_ext/data/contract.py), or set "
                 "hpt.data.on_bad_row=skip to drop (and count) bad rows (over-long demonstrations: "
                 "hpt.data.on_long_demo=truncate|skip|error; missing demonstrations: "
                 "hpt.data.on_missing_demo=error|skip|rl).")
    return "\n".join(lines)
