"""Evaluation summaries -> the paper's table layout (markdown + CSV) and a pass@k plot.

    python scripts/make_table.py --run HPT=results/hpt_7b/summary.json --run GRPO=results/grpo_7b \
        --table table2 --out-dir results/tables [--paper scripts/paper_results.json]

--run LABEL=PATH (repeatable): PATH is a summary.json or the folder holding it; LABEL is matched
against the paper's method names (HPT, GRPO, LUFFY, SFT, ...) to put the paper row, ours and the
difference together. --table: table2 (Qwen2.5-Math-7B), table3_llama, table3_qwen1.5b, table5,
table6, or "all". Writes <out-dir>/<table>.md, <table>.csv and passk.png.
"""

from __future__ import annotations

import argparse
import os

from verl_ext.eval.plot import plot_passk
from verl_ext.eval.table import build_rows, load_paper, load_run, to_csv, to_markdown


def main(argv: list[str] | None = None) -> dict[str, str]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="LABEL=path/to/summary.json (repeatable)")
    ap.add_argument("--table", default="table2")
    ap.add_argument("--paper", default=None, help="paper results JSON (default scripts/paper_results.json)")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)

    paper = load_paper(args.paper)
    runs = [load_run(spec) for spec in args.run]
    keys = list(paper["tables"]) if args.table == "all" else [args.table]
    unknown = [k for k in keys if k not in paper["tables"]]
    if unknown:
        ap.error(f"unknown table {unknown}; choose from {list(paper['tables'])} or all")
    os.makedirs(args.out_dir, exist_ok=True)
    written = {}
    for key in keys:
        table = paper["tables"][key]
        rows = build_rows(table, runs, paper)
        md = to_markdown(table, rows, runs, paper)
        for ext, text in (("md", md), ("csv", to_csv(key, table, rows))):
            path = os.path.join(args.out_dir, f"{key}.{ext}")
            with open(path, "w") as f:
                f.write(text)
            written[f"{key}.{ext}"] = path
        print(md)
    if not args.no_plot:
        written["passk.png"] = plot_passk(runs, os.path.join(args.out_dir, "passk.png"), title="pass@k")
    for name, path in written.items():
        print(f"wrote {path}")
    return written

