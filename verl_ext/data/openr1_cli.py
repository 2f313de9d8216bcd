"""OpenR1-Math-46k-8192 -> verl RL parquet with the demonstration in extra_info["target"].

    python scripts/data/prepare_openr1.py --source Elliott/Openr1-Math-46k-8192 \
        --tokenizer /path/to/Qwen2.5-Math-7B --out data/openr1.parquet \
        [--max-target-tokens 8192] [--length-policy filter|truncate|keep] \
        [--prompt-style user|zero|simplerl] [--max-prompt-tokens 1024] [--skip-bad] [--limit N]

    # RL-only data (a run whose gate never routes to SFT, e.g. stage 2 of SFT -> GRPO):
    python scripts/data/prepare_openr1.py --source Elliott/Openr1-Math-48k-Complement \
        --no-demonstrations --out data/openr1_complement.parquet

--source: a Hugging Face dataset id (downloaded now, at preparation time) or a local
.parquet/.json/.jsonl file. The system prompt is stripped (as the release does); --prompt-style
zero writes LLaMA's plain "Question/Answer" template. A bad row stops the run with an error
naming the row and field, unless --skip-bad (then it is counted). Counts are printed and saved
to <out>.report.json. --no-demonstrations neither requires nor reads the demonstration field
(``target``) and writes rows without extra_info.target; it needs no tokenizer unless
--max-prompt-tokens is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from verl_ext.data.openr1 import HF_DATASET_ID, LENGTH_POLICIES, BadRowError, convert_rows, load_source
from verl_ext.data.prompts import PROMPT_STYLES


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=HF_DATASET_ID)
    ap.add_argument("--out", required=True, help="output .parquet path")
    ap.add_argument("--tokenizer", default=None, help="tokenizer path (local dir or hub id) for token counts")
    ap.add_argument("--max-target-tokens", type=int, default=None,
                    help="demonstration tokens + 1 (EOS) must fit (default 8192); 0 disables length handling")
    ap.add_argument("--no-demonstrations", action="store_true",
                    help="RL-only rows: do not require or read the demonstration field (target), write no "
                         "extra_info.target (for runs whose gate never routes to SFT, e.g. plain GRPO)")
    ap.add_argument("--length-policy", default="filter", choices=LENGTH_POLICIES)
    ap.add_argument("--max-prompt-tokens", type=int, default=0,
                    help="drop prompts longer than this after templating (0: off)")
    ap.add_argument("--prompt-style", default="user", choices=PROMPT_STYLES)
    ap.add_argument("--skip-bad", action="store_true",
                    help="count and skip rows with missing fields instead of failing")
    ap.add_argument("--data-source", default=None,
                    help="override data_source (default: the source row's, else openr1_math)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--limit", type=int, default=None, help="first N source rows only")
    args = ap.parse_args(argv)

    if args.no_demonstrations and args.max_target_tokens:
        ap.error("--max-target-tokens limits demonstrations, which --no-demonstrations does not write")
    if args.no_demonstrations:
        max_t = None
    else:
        max_t = (8192 if args.max_target_tokens is None else args.max_target_tokens) or None
    max_p = args.max_prompt_tokens or None
    tokenizer = None
    if max_t is not None or max_p is not None:
        if not args.tokenizer:
            ap.error("--tokenizer is required for token limits (or pass --max-target-tokens 0; RL-only data "
                     "without demonstrations: --no-demonstrations)")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)

    rows = load_source(args.source)
    if args.limit is not None:
        rows = rows[: args.limit]
    try:
        out, report = convert_rows(rows, tokenizer, max_t, args.length_policy, max_p, args.prompt_style,
                                   args.skip_bad, args.split, args.data_source,
                                   demonstrations=not args.no_demonstrations)
    except BadRowError as e:
        rl_only = ("; RL-only data, for a run that never trains demonstrations: --no-demonstrations"
                   if "'target'" in str(e) else "")
        print(f"error: {e} (use --skip-bad to skip such rows{rl_only})", file=sys.stderr)
        raise SystemExit(2)

    import pandas as pd

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    pd.DataFrame(out).to_parquet(args.out, index=False)
    rep = report.as_dict()
    with open(args.out + ".report.json", "w") as f:
        json.dump(rep, f, indent=2)
    for k, v in rep.items():
        print(f"{k:24s} {v}")
    print(f"wrote {report.written} rows -> {args.out}")
    return rep

