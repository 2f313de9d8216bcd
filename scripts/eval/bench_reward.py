#!/usr/bin/env python
"""Scoring throughput: ``score_batch`` (fast path + worker pool with hard timeouts) vs serial
in-process math-verify (``parse`` + ``verify`` with its own signal timeouts), on a synthetic batch
built from MATH-500 answers: exact copies, equivalent rewrites, wrong answers (another
question's answer), unboxed responses and a few pathological strings.

    python scripts/eval/bench_reward.py [--size 2000] [--hard 10] [--workers 2] [--timeout 5] [--serial]
        [--grader default|release]

With ``--serial`` it prints the speed-up of ``score_batch`` over serial math-verify (the target is
>= 1.5x on 2 workers) and how many verdicts the two share.
"""

from __future__ import annotations

import argparse
import logging
import random
import time

from verl_ext.data.benchmarks import BENCHMARKS, clean_ground_truth, load_questions

HARD = ["9^{9^{9^{9}}}", "2^{2^{2^{2^{2^{2}}}}}", "(x+1)^{100000}", "(" * 40 + "1" + ")" * 40, "10^{10^{10}}"]


def _rewrite(ans: str) -> str:
    """An equivalent form that defeats plain string matching when possible."""
    if ans.isdigit():
        return f"{ans}.0" if random.random() < 0.5 else f"\\frac{{{2 * int(ans)}}}{{2}}"
    return ans.replace("\\frac", "\\dfrac").replace(" ", "") + " "


def build_batch(size: int, n_hard: int, seed: int = 0):
    random.seed(seed)
    gts = [clean_ground_truth(q["answer"]) for q in load_questions(BENCHMARKS["math500"])]
    sols, answers = [], []
    for i in range(size - n_hard):
        gt = random.choice(gts)
        kind = random.random()
        if kind < 0.35:
            pred = gt
        elif kind < 0.6:
            pred = _rewrite(gt)
        elif kind < 0.95:
            pred = random.choice(gts)
        else:
            sols.append("I could not finish the computation.")
            answers.append(gt)
            continue
        sols.append(f"Reasoning ... so the answer is $\\boxed{{{pred}}}$.")
        answers.append(gt)
    for i in range(n_hard):
        sols.append(f"... \\boxed{{{HARD[i % len(HARD)]}}}")
        answers.append("5")
    order = list(range(len(sols)))
    random.shuffle(order)
    return [sols[i] for i in order], [answers[i] for i in order]


def serial_math_verify(sols, gts, timeout: int):
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    scores = []
    for s, g in zip(sols, gts):
        try:
            ok = verify(parse(f"\\boxed{{{g}}}", parsing_timeout=timeout), parse(s, parsing_timeout=timeout),
                        timeout_seconds=timeout)
        except Exception:
            ok = False
        scores.append(1.0 if ok else 0.0)
    return scores


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--hard", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--serial", action="store_true", help="also time serial in-process math-verify")
    ap.add_argument("--grader", default=None, choices=["default", "release"], help="grader mode (default: default)")
    args = ap.parse_args(argv)

    from verl_ext.reward import score_batch
    from verl_ext.reward.pool import GraderPool

    sols, gts = build_batch(args.size, args.hard)
    with GraderPool(num_workers=args.workers) as pool:
        pool.warm_up()
        r = score_batch(sols, gts, "MATH-500", timeout=args.timeout, progress=False, pool=pool, grader=args.grader)
        stats = dict(pool.stats)
    print(f"score_batch: {len(sols)} answers in {r.seconds:.2f}s = {r.throughput:.0f} answers/s; "
          f"accuracy {sum(r.scores) / len(sols):.3f}; timeouts {r.num_timeouts}; sent to workers {stats['requests']}; "
          f"worker kills {stats['kills']}")
    if args.serial:
        t0 = time.monotonic()
        s = serial_math_verify(sols, gts, int(args.timeout))
        dt = time.monotonic() - t0
        agree = sum(a == b for a, b in zip(s, r.scores))
        print(f"serial math-verify: {dt:.2f}s = {len(sols) / dt:.0f} answers/s; accuracy {sum(s) / len(sols):.3f}; "
              f"agreement with score_batch {agree}/{len(sols)}; score_batch speed-up {dt / r.seconds:.2f}x")


if __name__ == "__main__":
    main()
