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
import json
import logging
import os
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
CORPUS = REPO / "tests" / "data" / "grading_corpus.jsonl"


def load_corpus(path: Path = CORPUS) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in rows:
        if "response" not in r:
            r["response"] = f"The answer is \\boxed{{{r['prediction']}}}."
    return rows


def math_verify_alone(response: str, ground_truth: str) -> float:
    """verl's ``_verify_in_subprocess`` body (verl 0.9.1), in-process."""
    from math_verify.grader import verify
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig, parse

    try:
        gold = parse("\\boxed{" + ground_truth + "}", (LatexExtractionConfig(),))
        pred = parse(response, (ExprExtractionConfig(), LatexExtractionConfig()))
        if gold and pred:
            return max(1.0 if any(verify(g, p) for g in gold) else 0.0 for p in pred)
    except Exception:  # verl prints and scores 0
        pass
    return 0.0


def run(mode: str = "default") -> list[dict]:
    from verl_ext.reward.score import compute_score

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    out = []
    for r in load_corpus():
        kwargs = {"grader": mode} if mode != "default" else {}
        ours = compute_score("math", r["response"], r["ground_truth"], **kwargs)
        alone = math_verify_alone(r["response"], r["ground_truth"])
        out.append(dict(r, ours=ours["score"] == 1.0, alone=alone == 1.0, ours_result=ours))
    return out


def per_kind(results: list[dict]) -> dict[str, dict]:
    table: dict[str, dict] = defaultdict(lambda: {"n": 0, "ours": 0, "alone": 0})
    for r in results:
        t = table[r["kind"]]
        t["n"] += 1
        t["ours"] += r["ours"] == r["correct"]
        t["alone"] += r["alone"] == r["correct"]
    return dict(table)


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
