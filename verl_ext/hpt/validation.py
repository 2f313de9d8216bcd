"""Start-up checks of an HPT run: the config (before Ray starts) and the data (before any worker).

Config (:func:`validate_hpt_config`, called by ``main_hpt.run_hpt`` on the driver):
``hpt.gate`` (strategy, γ ∈ [0, 1], soft table, ...), ``rollout.n >= 2`` for a pass-rate gate
(switch/soft), the loss preset (``hpt.loss``) has the arms the gate can route rows to,
``hpt.data.*``, ``hpt.max_consecutive_skips``, ``hpt.skip_grad_norm_above``. Unknown preset names
(``upge=foo``, ``+exp=foo``) are refused by Hydra itself, listing the available ones.

Data (:func:`validate_data`, called by ``main_hpt.HPTTaskRunner.run`` before the datasets and
workers are built): every row of ``data.train_files`` / ``data.val_files`` is checked for

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
demo_missing             ``extra_info[hpt.demo_field]`` absent, null or blank     (train, gate can SFT)
demo_not_string          the demonstration is not a string                        (train, gate can SFT)
demo_too_long            demonstration + EOS > ``rollout.response_length`` tokens (train, gate can SFT)
=======================  ==========================================================================

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
the gate can route a question to SFT (:func:`gate_can_choose_sft`: every strategy but ``never``,
``fixed`` with β = 0, a soft table without β > 0). A file where *no* row has the demonstration field
is a configuration error in any mode.

Reward checks (when the caller passes the run's reward, as ``main_hpt`` does; see
:mod:`verl_ext.hpt.demo_scoring`): one row of every ``data_source`` of every file is scored with
the run's reward function, so a ``data_source`` it cannot score (verl's dispatch raises
``NotImplementedError`` for names it does not know) stops the start naming file, row and field
instead of crashing a reward worker at step 1; and up to ``hpt.data.demo_check_rows``
demonstrations of each train file (all of them when the file has fewer rows; a seeded sample
otherwise) are scored against their ground truths. When fewer than ``hpt.data.demo_check_min_rate``
of them reach ``hpt.gate.correct_threshold`` the start stops, naming failing rows and the likely
cause (``#### N`` vs ``\\boxed{}``, wrong ``data_source``, ground-truth format). The rate is
logged (``hpt/data/demo_reward_pass_rate``) and kept in ``hpt_summary.json``.

Skipping writes a filtered copy of each affected file (pyarrow ``take`` of the kept rows, schema
unchanged) to ``hpt.data.filtered_dir`` (default ``<trainer.default_local_dir>/hpt_data``) and points
``data.train_files``/``data.val_files`` at it. A copy rather than filtering verl's in-memory
dataframe: ``RLHFDataset`` re-reads its files whenever it is rebuilt (``resume_dataset_state``,
pickling into dataloader workers), so only a file keeps the rows out for sure; the copy also
documents, next to the checkpoints, exactly which rows were trained on. The copy is a deterministic
function of the input, so a resumed run rebuilds the same file and the same data order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from verl_ext.data.contract import (  # noqa: F401  (check_* re-exported: the per-field checks)
    DEFAULT_DEMO_FIELD,
    check_data_source,
    check_demo,
    check_extra_info,
    check_ground_truth,
    check_index,
    check_prompt,
    demo_field_of,
)
from verl_ext.hpt.gate import GateConfig

logger = logging.getLogger(__name__)

ON_BAD_ROW = ("error", "skip")
ON_LONG_DEMO = ("truncate", "skip", "error")
ON_MISSING_DEMO = ("error", "skip", "rl")
PASS_RATE_STRATEGIES = ("switch", "soft")


@dataclass(frozen=True)
class DataOptions:
    """``hpt.data``: the defaults live here (``hpt_trainer.yaml`` states the same values; a test
    keeps them equal). See ``hpt_trainer.yaml`` for what each key does."""

    validate: bool = True
    on_bad_row: str = "error"
    on_long_demo: str = "truncate"
    on_missing_demo: Optional[str] = None  # null: as on_bad_row
    filtered_dir: Optional[str] = None
    max_errors_shown: int = 10
    demo_check_rows: int = 1000  # 0: no demonstration reward check
    demo_check_min_rate: float = 0.9

    @property
    def missing_demo_policy(self) -> str:
        return self.on_missing_demo or self.on_bad_row

    def __getitem__(self, key: str):  # dict-style access kept for callers of the old dict
        return getattr(self, key)


DATA_KEYS = set(DataOptions.__dataclass_fields__)


class HPTConfigError(ValueError):
    """A bad HPT setting found at start-up; the message names the key."""


class DataValidationError(ValueError):
    """Bad dataset rows (message: file, row, field) or a dataset that cannot serve the gate."""


# ----------------------------------------------------------------------------------------- config
def gate_can_choose_sft(cfg: GateConfig) -> bool:
    """Whether any question can get β > 0 (a demonstration row) under this gate."""
    if cfg.strategy == "never":
        return False
    if cfg.strategy == "fixed":
        return cfg.fixed_beta > 0
    if cfg.strategy == "soft" and cfg.soft_table is not None:
        return any(row[1] > 0 for row in cfg.soft_table)
    return True  # switch (P <= γ always holds for P = 0), soft linear, always


def gate_can_choose_rl(cfg: GateConfig) -> bool:
    """Whether any question can keep its rollouts (α > 0) under this gate."""
    if cfg.strategy == "always":
        return False
    if cfg.strategy == "fixed":
        return cfg.fixed_alpha > 0 or cfg.keep_gated_rollouts
    if cfg.strategy == "soft" and cfg.soft_table is not None:
        return any(row[0] > 0 for row in cfg.soft_table) or cfg.keep_gated_rollouts
    return True


def _plain(node) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(node, (DictConfig, ListConfig)):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return node


def data_options(config) -> DataOptions:
    """``hpt.data`` with defaults filled in, validated (errors name the ``hpt.data.<key>``)."""
    hpt = config.get("hpt", None) or {}
    node = _plain(hpt.get("data", None)) or {}
    if not isinstance(node, dict):
        raise HPTConfigError(f"hpt.data must be a mapping, got {node!r}")
    unknown = sorted(set(node) - DATA_KEYS)
    if unknown:
        raise HPTConfigError(f"hpt.data: unknown key(s) {unknown}; known: {sorted(DATA_KEYS)}")
    nullable = ("filtered_dir", "on_missing_demo")
    opts = DataOptions(**{k: v for k, v in node.items() if v is not None or k in nullable})
    if not isinstance(opts.validate, bool):
        raise HPTConfigError(f"hpt.data.validate={opts.validate!r} must be true or false")
    if opts.on_bad_row not in ON_BAD_ROW:
        raise HPTConfigError(f"hpt.data.on_bad_row={opts.on_bad_row!r} is not one of {list(ON_BAD_ROW)}")
    if opts.on_long_demo not in ON_LONG_DEMO:
        raise HPTConfigError(f"hpt.data.on_long_demo={opts.on_long_demo!r} is not one of {list(ON_LONG_DEMO)}")
    if opts.on_missing_demo is not None and opts.on_missing_demo not in ON_MISSING_DEMO:
        raise HPTConfigError(f"hpt.data.on_missing_demo={opts.on_missing_demo!r} is not one of "
                             f"{list(ON_MISSING_DEMO)} (or null: as hpt.data.on_bad_row)")
    if isinstance(opts.max_errors_shown, bool) or not isinstance(opts.max_errors_shown, int) \
            or opts.max_errors_shown < 1:
        raise HPTConfigError(f"hpt.data.max_errors_shown={opts.max_errors_shown!r} must be an integer >= 1")
    if isinstance(opts.demo_check_rows, bool) or not isinstance(opts.demo_check_rows, int) \
            or opts.demo_check_rows < 0:
        raise HPTConfigError(f"hpt.data.demo_check_rows={opts.demo_check_rows!r} must be an integer >= 0 "
                             f"(0: no demonstration reward check)")
    rate = opts.demo_check_min_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (0.0 <= float(rate) <= 1.0):
        raise HPTConfigError(f"hpt.data.demo_check_min_rate={rate!r} must be a number in [0, 1] "
                             f"(0: report the rate, never stop)")
    return opts


def max_consecutive_skips(config) -> Optional[int]:
    hpt = config.get("hpt", None) or {}
    value = hpt.get("max_consecutive_skips", 5)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HPTConfigError(f"hpt.max_consecutive_skips={value!r} must be an integer >= 0 (0 or null: never stop)")
    return value or None


def validate_hpt_config(config) -> GateConfig:
    """Every check that needs only the config; raises :class:`HPTConfigError` (or the gate/loss
    config errors, also ``ValueError``s naming their key). Returns the gate config."""
    hpt = config.get("hpt", None)
    if hpt is None:
        raise HPTConfigError("the config has no `hpt` node (compose it from recipe/hpt/config/hpt_trainer.yaml)")
    gate = GateConfig.from_mapping(_plain(hpt.get("gate", None)) or {})

    n = int(config.actor_rollout_ref.rollout.n)
    if gate.strategy in PASS_RATE_STRATEGIES and n < 2:
        raise HPTConfigError(
            f"actor_rollout_ref.rollout.n={n} with hpt.gate.strategy={gate.strategy}: a pass-rate gate needs at "
            f"least 2 rollouts per question (a pass rate over one rollout is 0 or 1, and GRPO's advantage of a "
            f"single rollout is 0). Use n >= 2, or strategy always/never/fixed.")
    if gate.strategy == "soft" and gate.soft_table is not None and len(gate.soft_table) != n + 1:
        raise HPTConfigError(
            f"hpt.gate.soft_table has {len(gate.soft_table)} rows but actor_rollout_ref.rollout.n={n} needs "
            f"n+1 = {n + 1} (one [alpha, beta] row per number of correct rollouts 0..n)")

    demo_field = hpt.get("demo_field", DEFAULT_DEMO_FIELD)
    if not isinstance(demo_field, str) or not demo_field:
        raise HPTConfigError(f"hpt.demo_field={demo_field!r} must be a non-empty string")

    threshold = hpt.get("skip_grad_norm_above", None)
    if threshold is not None:
        try:
            t = float(threshold)
        except (TypeError, ValueError):
            t = float("nan")
        if not (math.isfinite(t) and t > 0):
            raise HPTConfigError(f"hpt.skip_grad_norm_above={threshold!r} must be a positive number or null")
    max_consecutive_skips(config)
    opts = data_options(config)
    if opts.missing_demo_policy == "rl" and not gate_can_choose_rl(gate):
        raise HPTConfigError(
            f"hpt.data.on_missing_demo=rl keeps questions without a demonstration for RL, but "
            f"hpt.gate.strategy={gate.strategy} never trains on rollouts: use on_missing_demo=skip|error, or a "
            f"gate that can choose RL (switch, soft, fixed with fixed_alpha > 0)")

    if hpt.get("loss", None) is not None:
        from verl_ext.loss.config import load_upge_config

        loss = load_upge_config(hpt.loss)
        for arm in getattr(gate, "demo_arms", None) or ("demo",):  # the loss arms demonstration rows go to
            if gate_can_choose_sft(gate) and getattr(loss, arm, None) is None:
                raise HPTConfigError(
                    f"hpt.gate.strategy={gate.strategy} can route questions to SFT but the loss preset has no "
                    f"{arm} arm (hpt.loss.{arm}: null, e.g. upge=grpo): pick a preset with a {arm} arm or "
                    f"hpt.gate.strategy=never")
        if gate_can_choose_rl(gate) and loss.rollout is None:
            raise HPTConfigError(
                f"hpt.gate.strategy={gate.strategy} keeps rollouts for RL but the loss preset has no rollout arm "
                f"(hpt.loss.rollout: null, e.g. upge=sft): pick a preset with a rollout arm or "
                f"hpt.gate.strategy=always")
    return gate


# ------------------------------------------------------------------------------------------- data
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
    """What to check in one file and the limits."""

    prompt_key: str = "prompt"
    max_prompt_length: Optional[int] = None
    check_demo: bool = False
    demo_field: str = DEFAULT_DEMO_FIELD
    max_demo_tokens: Optional[int] = None  # demonstration + EOS
    prompt_too_long_skips: bool = False  # data.filter_overlong_prompts
    on_bad_row: str = "error"
    on_long_demo: str = "truncate"
    on_missing_demo: str = "error"  # resolved policy: error | skip | rl
    apply_chat_template_kwargs: dict = field(default_factory=dict)
    demo_check_rows: int = 0  # demonstrations sampled for the reward check (0: none)
    demo_check_min_rate: float = 0.9
    correct_threshold: float = 1.0
    seed: int = 0


def _prompt_text(tokenizer, messages: list, kwargs: dict) -> str:
    kw = {k: v for k, v in kwargs.items() if k not in ("tokenize", "return_dict", "return_tensors")}
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kw)


def _token_lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    if not texts:
        return []
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [len(x) for x in enc]


def _read_table(path: str):
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
    demo_sample: list = field(default_factory=list)  # (row, data_source, ground truth, demo, extra_info)


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
        p = check_demo(row, checks.demo_field)
        if p:
            return (f"extra_info.{checks.demo_field}", *p)
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
    table = _read_table(path)
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
                demo_texts[i] = info[checks.demo_field]
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
                d_idx = [i for i in demo_texts if i not in bad]
                for i, n in zip(d_idx, _token_lengths(tokenizer, [demo_texts[i] for i in d_idx])):
                    if n + 1 > checks.max_demo_tokens:
                        if checks.on_long_demo == "truncate":
                            report.long_demos_truncated += 1
                        else:
                            bad[i] = RowProblem(name, i, f"extra_info.{checks.demo_field}", "demo_too_long",
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
                    scan.source_rows[ds] = (i, gt, demo_texts.get(i), row.get("extra_info"))
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


def _is_fatal(problem: RowProblem, checks: RowChecks) -> bool:
    if problem.reason == "prompt_too_long" and checks.prompt_too_long_skips:
        return False
    if problem.reason == "demo_too_long":
        return checks.on_long_demo == "error"
    if problem.reason == "demo_missing":
        return checks.on_missing_demo == "error"
    return checks.on_bad_row == "error"


def _error_message(problems: list[RowProblem], shown: int, split: str) -> str:
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


def write_filtered(src: str, kept: list[int], out_dir: str, tag: str) -> str:
    """Write rows ``kept`` of ``src`` (schema unchanged) to ``out_dir``; returns the new path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(out_dir, exist_ok=True)
    base = os.path.basename(src)
    stem = base.rsplit(".", 1)[0]
    digest = hashlib.sha1(json.dumps([os.path.abspath(src), kept]).encode()).hexdigest()[:10]
    table = _read_table(src).take(pa.array(kept, type=pa.int64()))
    out = os.path.join(out_dir, f"{tag}.{stem}.{digest}.parquet")
    tmp = f"{out}.tmp.{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, out)  # atomic: a concurrent reader never sees half a file
    return out


def _file_list(value) -> list[str]:
    value = _plain(value)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def validate_files(paths: Iterable[str], split: str, checks: RowChecks, tokenizer, out_dir: str,
                   shown: int = 10, reward=None) -> tuple[list[str], list[FileReport]]:
    """Check ``paths``; raise on fatal problems; return (paths verl should read, reports).

    ``reward`` (a :class:`verl_ext.hpt.demo_scoring.RunReward`, optional): also score one row per
    data_source and the sampled demonstrations with it (see the module docstring)."""
    from verl.utils.fs import copy_to_local

    new_paths, reports = [], []
    for k, path in enumerate(paths):
        local = path if os.path.exists(path) else copy_to_local(path)
        scan = FileScan() if reward is not None else None
        report, problems, kept = check_file(local, split, checks, tokenizer, display_path=path, scan=scan)
        fatal = [p for p in problems if _is_fatal(p, checks)]
        if fatal:
            raise DataValidationError(_error_message(fatal, shown, split))
        for p in problems:
            report.skipped[p.reason] += 1
        if problems:
            for p in problems[:shown]:
                logger.warning("HPT data: skipping %s", p)
            print(f"HPT data: {path}: skipping {len(problems)} of {report.rows} rows {dict(report.skipped)}; "
                  f"first: {problems[0]}")
            if not kept:
                raise DataValidationError(f"{path}: every row is bad ({dict(report.skipped)}); nothing to train on")
        if report.demos_missing_rl:
            print(f"HPT data: {path}: {report.demos_missing_rl} of {report.rows} rows have no demonstration "
                  f"(extra_info.{checks.demo_field}); kept: a gated question among them trains with RL "
                  f"(hpt.data.on_missing_demo=rl, counted per step as hpt/demo_missing)")
        if reward is not None:
            from verl_ext.hpt.demo_scoring import check_data_sources, check_demonstrations

            check_data_sources(reward, path, scan.source_rows)
            if checks.check_demo and checks.demo_check_rows > 0:
                report.demo_check = check_demonstrations(
                    reward, path, scan.demo_sample, checks.demo_field, checks.demo_check_min_rate,
                    checks.correct_threshold, shown=min(shown, 5))
        if problems:
            report.used_path = write_filtered(local, kept, out_dir, f"{split}{k}")
            new_paths.append(report.used_path)
        else:
            new_paths.append(path)
        reports.append(report)
    return new_paths, reports


def validate_data(config, tokenizer, reward=None) -> DataReport:
    """Validate ``data.train_files`` and ``data.val_files`` (see the module docstring); with skipped
    rows, rewrite those config entries to the filtered copies (``config`` must be writable).

    ``reward``: the run's reward (:func:`verl_ext.hpt.demo_scoring.resolve_reward`); when given, the
    data_sources and the demonstrations are also checked against it."""
    from omegaconf import open_dict

    opts = data_options(config)
    if not opts.validate:
        return DataReport(validated=False, reward=reward.describe() if reward is not None else None)
    hpt = config.hpt
    gate = GateConfig.from_mapping(_plain(hpt.get("gate", None)) or {})
    data = config.data
    out_dir = opts.filtered_dir or os.path.join(str(config.trainer.default_local_dir), "hpt_data")
    common = dict(
        prompt_key=str(data.get("prompt_key", "prompt") or "prompt"),
        max_prompt_length=int(data.max_prompt_length) if data.get("max_prompt_length") else None,
        prompt_too_long_skips=bool(data.get("filter_overlong_prompts", False)),
        on_bad_row=opts.on_bad_row,
        on_long_demo=opts.on_long_demo,
        on_missing_demo=opts.missing_demo_policy,
        apply_chat_template_kwargs=dict(_plain(data.get("apply_chat_template_kwargs", None)) or {}),
    )
    train_checks = RowChecks(
        check_demo=gate_can_choose_sft(gate),
        demo_field=demo_field_of(config),
        max_demo_tokens=int(config.actor_rollout_ref.rollout.response_length),
        demo_check_rows=opts.demo_check_rows,
        demo_check_min_rate=float(opts.demo_check_min_rate),
        correct_threshold=float(gate.correct_threshold),
        **common,
    )
    val_checks = RowChecks(check_demo=False, **common)
    report = DataReport(reward=reward.describe() if reward is not None else None)
    train, r = validate_files(_file_list(data.train_files), "train", train_checks, tokenizer, out_dir,
                              opts.max_errors_shown, reward=reward)
    report.files += r
    val, r = validate_files(_file_list(data.get("val_files", None)), "val", val_checks, tokenizer, out_dir,
                            opts.max_errors_shown, reward=reward)
    report.files += r
    with open_dict(config):
        if train != _file_list(data.train_files):
            config.data.train_files = train if len(train) > 1 else train[0]
        if val and val != _file_list(data.get("val_files", None)):
            config.data.val_files = val if len(val) > 1 else val[0]
    print(report.summary_line())
    return report
