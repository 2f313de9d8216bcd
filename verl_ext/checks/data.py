"""The start-up data check of an HPT run: every row of the run's files, and the files verl should read.

:func:`validate_data` (called by ``main_hpt.HPTTaskRunner.run`` before the datasets and workers are
built) runs the row checks (:mod:`verl_ext.checks.rows`: the reasons, and what happens to a bad
row) over ``data.train_files`` and ``data.val_files`` and returns a :class:`DataReport`. It does not
change the config: ``report.train_files`` / ``report.val_files`` are the files to train and validate
on, and the caller points ``data.*_files`` at them.

Reward checks (when the caller passes the run's reward, as ``main_hpt`` does; see
:mod:`verl_ext.checks.reward`): one row of every ``data_source`` of every file is scored with
the run's reward function, so a ``data_source`` it cannot score (verl's dispatch raises
``NotImplementedError`` for names it does not know) stops the start naming file, row and field
instead of crashing a reward worker at step 1; and up to ``hpt.data.demo_check_rows``
demonstrations of each train file (all of them when the file has fewer rows; a seeded sample
otherwise) are scored against their ground truths. When fewer than ``hpt.data.demo_check_min_rate``
of them reach ``hpt.gate.correct_threshold`` the start stops, naming failing rows and the likely
cause (``#### N`` vs ``\\boxed{}``, wrong ``data_source``, ground-truth format). The rate is
logged (``hpt/data/demo_reward_pass_rate``) and kept in ``hpt_summary.json``.

Skipping writes a filtered copy of each affected file (:func:`write_filtered`: pyarrow ``take`` of the
kept rows, schema unchanged) to ``hpt.data.filtered_dir`` (default
``<trainer.default_local_dir>/hpt_data``); the report names it in place of the file. A copy rather than
filtering verl's in-memory dataframe: ``RLHFDataset`` re-reads its files whenever it is rebuilt
(``resume_dataset_state``, pickling into dataloader workers), so only a file keeps the rows out for
sure; the copy also documents, next to the checkpoints, exactly which rows were trained on. The copy is
a deterministic function of the input, so a resumed run rebuilds the same file and the same data order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Iterable, Optional

from verl_ext.hpt.config import HPTConfig, to_plain
from verl_ext.checks.rows import (
    DataReport,
    DataValidationError,
    FileReport,
    FileScan,
    RowChecks,
    check_file,
    error_message,
    is_fatal,
    read_table,
)

logger = logging.getLogger(__name__)


def write_filtered(src: str, kept: list[int], out_dir: str, tag: str) -> str:
    """Write rows ``kept`` of ``src`` (schema unchanged) to ``out_dir``; returns the new path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(out_dir, exist_ok=True)
    base = os.path.basename(src)
    stem = base.rsplit(".", 1)[0]
    digest = hashlib.sha1(json.dumps([os.path.abspath(src), kept]).encode()).hexdigest()[:10]
    table = read_table(src).take(pa.array(kept, type=pa.int64()))
    out = os.path.join(out_dir, f"{tag}.{stem}.{digest}.parquet")
    tmp = f"{out}.tmp.{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, out)  # atomic: a concurrent reader never sees half a file
    return out


def _file_list(value) -> list[str]:
    value = to_plain(value)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def validate_files(paths: Iterable[str], split: str, checks: RowChecks, tokenizer, out_dir: str,
                   shown: int = 10, reward=None) -> tuple[list[str], list[FileReport]]:
    """Check ``paths``; raise on fatal problems; return (paths verl should read, reports).

    ``reward`` (a :class:`verl_ext.checks.reward.RunReward`, optional): also score one row per
    data_source and the sampled demonstrations with it (see the module docstring)."""
    from verl.utils.fs import copy_to_local

    new_paths, reports = [], []
    for k, path in enumerate(paths):
        local = path if os.path.exists(path) else copy_to_local(path)
        scan = FileScan() if reward is not None else None
        report, problems, kept = check_file(local, split, checks, tokenizer, display_path=path, scan=scan)
        fatal = [p for p in problems if is_fatal(p, checks)]
        if fatal:
            raise DataValidationError(error_message(fatal, shown, split))
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
            from verl_ext.checks.reward import check_data_sources, check_demonstrations

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


def validate_data(config, tokenizer, reward=None, hpt: Optional[HPTConfig] = None) -> DataReport:
    """Validate ``data.train_files`` and ``data.val_files`` (see the module docstring). Returns the
    report; its ``train_files`` / ``val_files`` are what verl should read (a filtered copy in place of
    a file that lost rows). ``config`` is left as it is.

    ``reward``: the run's reward (:func:`verl_ext.checks.reward.resolve_reward`); when given, the
    data_sources and the demonstrations are also checked against it. ``hpt``: the run's parsed
    ``hpt`` node (parsed from ``config`` when not given)."""
    hpt = hpt if hpt is not None else HPTConfig.from_config(config)
    opts, gate = hpt.data, hpt.gate
    data = config.data
    train_in, val_in = _file_list(data.train_files), _file_list(data.get("val_files", None))
    described = reward.describe() if reward is not None else None
    if not opts.validate:
        return DataReport(validated=False, reward=described, train_files=train_in, val_files=val_in)
    out_dir = opts.filtered_dir or os.path.join(str(config.trainer.default_local_dir), "hpt_data")
    common = dict(
        demo_field=hpt.demo_field,
        on_bad_row=opts.on_bad_row,
        on_long_demo=opts.on_long_demo,
        on_missing_demo=opts.missing_demo_policy,
        prompt_key=str(data.get("prompt_key", "prompt") or "prompt"),
        max_prompt_length=int(data.max_prompt_length) if data.get("max_prompt_length") else None,
        prompt_too_long_skips=bool(data.get("filter_overlong_prompts", False)),
        apply_chat_template_kwargs=dict(to_plain(data.get("apply_chat_template_kwargs", None)) or {}),
    )
    train_checks = RowChecks(
        check_demo=hpt.needs_demonstrations,
        max_demo_tokens=int(config.actor_rollout_ref.rollout.response_length),
        demo_check_rows=opts.demo_check_rows,
        demo_check_min_rate=float(opts.demo_check_min_rate),
        correct_threshold=float(gate.correct_threshold),
        **common,
    )
    val_checks = RowChecks(check_demo=False, **common)
    report = DataReport(reward=described)
    report.train_files, r = validate_files(train_in, "train", train_checks, tokenizer, out_dir,
                                           opts.max_errors_shown, reward=reward)
    report.files += r
    report.val_files, r = validate_files(val_in, "val", val_checks, tokenizer, out_dir,
                                         opts.max_errors_shown, reward=reward)
    report.files += r
    print(report.summary_line())
    return report
