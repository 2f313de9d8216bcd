"""Write the synthetic arithmetic task as verl RL parquet files (train / held-out test).

Usage: python scripts/data/make_arith_dataset.py --out data/arith --train 512 --test 100

Arena options (scripts/arena.py; off by default, so the default files are unchanged):
  --val N            also write val.parquet: N problems of the training levels, disjoint from the test
                     set (and kept out of the training set), for learning-rate selection
  --ood-levels 6,7   also write test_ood.parquet (--ood-test N problems) of families that no training
                     or warm-up set contains (verl_ext/tasks/arithmetic.py OOD_LEVELS)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from verl_ext.tasks import TASKS


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="data/arith")
    ap.add_argument("--task", choices=sorted(TASKS), default="arith",
                    help="arith: verl_ext/tasks/arithmetic.py; chains: verl_ext/tasks/chains.py (Arena II)")
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--levels", default=None, help="comma-separated levels (default: all of the task's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-weights", default=None,
                    help="relative frequency of each level in the training set (default for arith: 4,3,1,1,1: "
                         "easy levels dominate, as in a real curriculum where most questions are within reach; "
                         "for other tasks: equal)")
    ap.add_argument("--val", type=int, default=0, help="validation problems (val.parquet), disjoint from test")
    ap.add_argument("--ood-levels", default="", help="comma-separated OOD levels for test_ood.parquet")
    ap.add_argument("--ood-test", type=int, default=0, help="OOD test problems (test_ood.parquet)")
    args = ap.parse_args(argv)
    task = TASKS[args.task]
    generate_rows = task.generate_rows

    levels = tuple(int(x) for x in args.levels.split(",")) if args.levels else task.LEVELS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test = generate_rows(args.test, levels, seed=args.seed + 1, split="test")
    held_out = {r["extra_info"]["question"] for r in test}
    val = []
    if args.val:
        val = generate_rows(args.val, levels, seed=args.seed + 2, split="val", exclude=held_out)
        held_out |= {r["extra_info"]["question"] for r in val}
    # Level 1 has only 100 distinct problems, so training problems may repeat; held-out ones never appear.
    weight_arg = args.train_weights or ("4,3,1,1,1" if args.task == "arith" and not args.levels else "")
    weights = tuple(float(x) for x in weight_arg.split(",")) if weight_arg else None
    if weights is not None and len(weights) != len(levels):
        raise SystemExit(f"--train-weights has {len(weights)} entries for {len(levels)} levels")
    train = generate_rows(args.train, levels, seed=args.seed, split="train", exclude=held_out, unique=False,
                          weights=weights)
    pd.DataFrame(train).to_parquet(out / "train.parquet")
    pd.DataFrame(test).to_parquet(out / "test.parquet")
    if val:
        pd.DataFrame(val).to_parquet(out / "val.parquet")
    ood_levels = tuple(int(x) for x in args.ood_levels.split(",") if x.strip())
    if ood_levels and args.ood_test:
        if set(ood_levels) & set(levels):
            raise SystemExit(f"--ood-levels {ood_levels} overlap the training levels {levels}")
        ood = generate_rows(args.ood_test, ood_levels, seed=args.seed + 3, split="test_ood")
        pd.DataFrame(ood).to_parquet(out / "test_ood.parquet")
        print(f"wrote {len(ood)} OOD test rows (levels {ood_levels}) to {out / 'test_ood.parquet'}")
    print(f"wrote {len(train)} train / {len(test)} test " + (f"/ {len(val)} val " if val else "")
          + f"rows (levels {levels}) to {out}")
