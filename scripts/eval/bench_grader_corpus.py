#!/usr/bin/env python
"""Per-kind accuracy of the project's grader next to math-verify alone, on the labelled grading
corpus (``tests/data/grading_corpus.jsonl``).

"math-verify alone" is math-verify called the way verl's own ``math_verify`` scorer calls it
(``verl.utils.reward_score.math_verify``): the ground truth wrapped in ``\\boxed{}`` and parsed with
``LatexExtractionConfig``, the whole response parsed with ``ExprExtractionConfig`` +
``LatexExtractionConfig``, correct when any parsed pair verifies. It runs in this process (the
signal timeouts of math-verify work in the main thread), not in verl's process pool.

    python scripts/eval/bench_grader_corpus.py [--mode default|release] [--show-wrong] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import sys

from verl_ext.reward.grading_corpus import per_kind, run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="default", choices=["default", "release"])
    ap.add_argument("--show-wrong", action="store_true", help="list the pairs the project grader gets wrong")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = run(args.mode)
    table = per_kind(results)
    sep = " | " if args.markdown else "  "
    header = ["kind", "pairs", f"project ({args.mode})", "math-verify alone", "diff"]
    if args.markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    else:
        print(f"{'kind':<14}{'pairs':>6}{'project':>10}{'mv alone':>10}{'diff':>6}")
    below = []
    for kind in sorted(table):
        t = table[kind]
        d = t["ours"] - t["alone"]
        if d < 0 and t["n"] >= 3:
            below.append(kind)
        if args.markdown:
            print("| " + sep.join([kind, str(t["n"]), str(t["ours"]), str(t["alone"]), f"{d:+d}"]) + " |")
        else:
            print(f"{kind:<14}{t['n']:>6}{t['ours']:>10}{t['alone']:>10}{d:>+6d}")
    n = len(results)
    ours = sum(t["ours"] for t in table.values())
    alone = sum(t["alone"] for t in table.values())
    if args.markdown:
        print(f"| **all** | {n} | {ours} | {alone} | {ours - alone:+d} |")
    else:
        print(f"{'all':<14}{n:>6}{ours:>10}{alone:>10}{ours - alone:>+6d}")
    errors = sum(r["ours_result"]["grader_error"] for r in results)
    timeouts = sum(r["ours_result"]["timeout"] for r in results)
    print(f"project grader: {int(timeouts)} timeouts, {int(errors)} answers with a layer exception "
          "(counted, fell through)")
    if below:
        print("kinds (>= 3 pairs) where the project is below math-verify alone:", ", ".join(below))
    if args.show_wrong:
        for r in results:
            if r["ours"] != r["correct"]:
                print(f"WRONG [{r['kind']}] gt={r['ground_truth']!r} resp={r['response'][-80:]!r} "
                      f"right={int(r['correct'])} mv_alone={int(r['alone'])}  ({r['reason']})")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
