"""Benchmark JSON files -> verl validation parquet files (one per benchmark).

    python scripts/data/prepare_benchmarks.py --out-dir data/benchmarks \
        [--benchmarks aime24 amc23 math500] [--prompt-style user|simplerl|zero] [--limit N]

Each row: data_source, prompt (chat list), ability, reward_model {style: rule, ground_truth},
extra_info {index, split}. Use the files as ``data.val_files=[...]`` in verl.
"""

from __future__ import annotations

import argparse
import os

import pandas as pd

from verl_ext.data.benchmarks import BENCHMARKS, get_benchmark, load_questions, to_verl_rows
from verl_ext.data.prompts import PROMPT_STYLES


def main(argv: list[str] | None = None) -> dict[str, str]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), help=f"subset of {list(BENCHMARKS)}")
    ap.add_argument("--benchmark-dir", default=None,
                    help="folder with the *.json files (default $HPT_BENCHMARK_DIR, else the repo's "
                         "assets/benchmarks, else each set's public dataset id)")
    ap.add_argument("--prompt-style", default="user", choices=PROMPT_STYLES,
                    help="user: question only, as the release's validation sets; simplerl: + the eval system "
                         "prompt; zero: LLaMA plain template")
    ap.add_argument("--limit", type=int, default=None, help="first N questions of each benchmark")
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)

    os.makedirs(args.out_dir, exist_ok=True)
    written = {}
    for key in args.benchmarks:
        bench = get_benchmark(key)
        rows = to_verl_rows(bench, load_questions(bench, args.benchmark_dir, args.limit), args.prompt_style, args.split)
        path = os.path.join(args.out_dir, f"{bench.key}.parquet")
        pd.DataFrame(rows).to_parquet(path, index=False)
        written[bench.key] = path
        print(f"{bench.data_source:15s} {len(rows):4d} rows -> {path}")
    return written

