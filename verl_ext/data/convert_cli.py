"""Convert a dataset you have into HPT's row contract (README "Your own data").

    python scripts/data/convert.py --format verl_gsm8k --input gsm8k/train.parquet --out data/my/train.parquet
    python scripts/data/convert.py --format verl_math  --input math/train.parquet  --out data/my/train.parquet
    python scripts/data/convert.py --format luffy      --input openr1.parquet      --out data/my/train.parquet
    python scripts/data/convert.py --format jsonl      --input mine.jsonl          --out data/my/train.parquet

--input: a .parquet, .json or .jsonl file (or a Hugging Face dataset id, downloaded now).
--answer-format (verl_gsm8k): boxed (default) rewrites '#### N' demonstrations to '\\boxed{N}' for this
project's math reward (original kept); hash keeps '#### N' and data_source openai/gsm8k for verl's gsm8k
scorer. Prints rows kept, rows dropped and why, and how many demonstrations the math reward grades
correct; writes the same to <out>.report.json. Conversion is a pure function of the input rows
(verl_ext/data/convert.py).
"""

from __future__ import annotations

import argparse
import json
import os

from verl_ext.data.convert import ANSWER_FORMATS, FORMATS, convert_rows
from verl_ext.data.prompts import PROMPT_STYLES


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", required=True, choices=FORMATS)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True, help="output .parquet path")
    ap.add_argument("--answer-format", default="boxed", choices=ANSWER_FORMATS)
    ap.add_argument("--data-source", default=None,
                    help="data_source of every row (default: the source's; jsonl: user_math)")
    ap.add_argument("--demo-field", default=None,
                    help="extra_info field for the demonstration (default: hpt.demo_field as hpt_trainer.yaml sets it)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--prompt-style", default="user", choices=PROMPT_STYLES,
                    help="jsonl: how the question becomes a prompt")
    ap.add_argument("--drop-missing-demo", action="store_true",
                    help="drop rows without a demonstration (default: keep)")
    ap.add_argument("--limit", type=int, default=None, help="first N source rows only")
    args = ap.parse_args(argv)

    from verl_ext.data.openr1 import load_source

    try:
        rows = load_source(args.input, split=args.split)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read --input {args.input}: {e}")
    if args.limit is not None:
        rows = rows[: args.limit]
    out, report = convert_rows(rows, args.format, answer_format=args.answer_format, data_source=args.data_source,
                               demo_field=args.demo_field, split=args.split, prompt_style=args.prompt_style,
                               drop_missing_demo=args.drop_missing_demo)
    for line in report.lines():
        print(line)
    if not out:
        raise SystemExit(f"error: no row of {args.input} could be converted ({dict(report.dropped)})")
    import pandas as pd

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    pd.DataFrame(out).to_parquet(args.out, index=False)
    rep = report.as_dict()
    with open(args.out + ".report.json", "w") as f:
        json.dump(rep, f, indent=2)
    print(f"wrote {report.kept} rows -> {args.out}")
    return rep

