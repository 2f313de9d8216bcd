"""Our evaluation summaries next to the paper's tables: rows, markdown and CSV.

Paper numbers come from ``scripts/paper_results.json`` (percent, 1 decimal). Our numbers are
``avg@n`` from ``summary.json`` files written by ``scripts/eval/evaluate.py``, converted to
percent. For every paper row whose method matches one of our run labels (case-insensitive),
the table shows the paper row, our row and ``Δ = ours − paper``; runs matching no paper row are
appended as ours-only rows. An average column (ID Avg / OOD Avg) is filled for our runs only
when every benchmark it averages was evaluated, so a partial run never shows a misleading mean.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PAPER_RESULTS = Path(__file__).resolve().parents[2] / "scripts" / "paper_results.json"


@dataclass
class Run:
    label: str  # method name, e.g. "HPT" (matched against the paper's row names)
    summary: dict  # the parsed summary.json


@dataclass
class Row:
    method: str
    kind: str  # "paper" | "ours" | "diff"
    values: dict  # column -> float | None


def load_paper(path: str | Path | None = None) -> dict:
    with open(path or DEFAULT_PAPER_RESULTS) as f:
        return json.load(f)


def load_run(spec: str) -> Run:
    """``LABEL=path/to/summary.json`` (or just the path: label = parent folder name)."""
    label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    with open(p) as f:
        summary = json.load(f)
    return Run(label or p.parent.name, summary)


def our_values(run: Run, paper: dict, columns: list[str]) -> dict:
    """Column -> percent value (None where not evaluated) for one run."""
    col_of = paper["benchmark_columns"]  # benchmark key -> paper column
    vals: dict = {c: None for c in columns}
    for key, agg in run.summary.get("benchmarks", {}).items():
        col = col_of.get(key)
        if col in vals:
            vals[col] = 100.0 * agg["avg"]
    for avg_col, parts in paper["average_columns"].items():
        if avg_col in vals:
            comps = [vals.get(c) for c in parts]
            vals[avg_col] = sum(comps) / len(comps) if all(v is not None for v in comps) else None
    return vals


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def build_rows(table: dict, runs: list[Run], paper: dict) -> list[Row]:
    columns = table["columns"]
    rows: list[Row] = []
    matched = set()
    for prow in table["rows"]:
        rows.append(Row(prow["method"], "paper", dict(prow["values"])))
        for i, run in enumerate(runs):
            if _norm(run.label) == _norm(prow["method"]):
                ours = our_values(run, paper, columns)
                diff = {c: (ours[c] - prow["values"][c]) if ours[c] is not None and c in prow["values"] else None
                        for c in columns}
                rows.append(Row(run.label, "ours", ours))
                rows.append(Row(run.label, "diff", diff))
                matched.add(i)
    for i, run in enumerate(runs):
        if i not in matched:
            rows.append(Row(run.label, "ours", our_values(run, paper, columns)))
    return rows


def _fmt(v, kind: str) -> str:
    if v is None:
        return "–"
    return f"{v:+.1f}" if kind == "diff" else f"{v:.1f}"


def _label(row: Row) -> str:
    return {"paper": f"{row.method} (paper)", "ours": f"**{row.method} (ours)**", "diff": "Δ ours − paper"}[row.kind]


def run_footnotes(runs: list[Run]) -> list[str]:
    """What each of our runs actually measured (n, questions, timeouts), for honest reading."""
    notes = []
    for run in runs:
        parts = []
        for key, agg in run.summary.get("benchmarks", {}).items():
            t = f", {agg['timeouts']} grading timeouts" if agg.get("timeouts") else ""
            parts.append(f"{key}: avg@{agg['n']} over {agg['num_questions']} questions{t}")
        s = run.summary.get("settings", {})
        cfg = (f"T={s.get('temperature')}, top-p={s.get('top_p')}, max_tokens={s.get('max_tokens')}, "
               f"backend={run.summary.get('backend')}")
        notes.append(f"{run.label}: model `{run.summary.get('model')}`; {cfg}; " + "; ".join(parts))
    return notes


def to_markdown(table: dict, rows: list[Row], runs: list[Run], paper: dict) -> str:
    cols = table["columns"]
    out = [f"### {table['title']}", "", "| Method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        out.append(f"| {_label(r)} | " + " | ".join(_fmt(r.values.get(c), r.kind) for c in cols) + " |")
    out.append("")
    out.append("Paper numbers: pass@1 (%), avg@32 on AIME24/AIME25/AMC, n=1 elsewhere. Ours: avg@n (%).")
    for n in run_footnotes(runs):
        out.append(f"- {n}")
    for n in paper.get("notes", []):
        out.append(f"- Note: {n}")
    return "\n".join(out) + "\n"


def to_csv(table_key: str, table: dict, rows: list[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["table", "method", "kind"] + table["columns"])
    for r in rows:
        w.writerow([table_key, r.method, r.kind] + ["" if r.values.get(c) is None else round(r.values[c], 2)
                                                    for c in table["columns"]])
    return buf.getvalue()
