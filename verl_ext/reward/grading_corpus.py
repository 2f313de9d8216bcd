"""The labelled grading corpus (``tests/data/grading_corpus.jsonl``) and the project's grader next to
math-verify alone on it, per kind (``scripts/eval/bench_grader_corpus.py`` prints the table,
``tests/unit/reward/test_grading_corpus.py`` asserts it).

"math-verify alone" is math-verify called the way verl's own ``math_verify`` scorer calls it
(``verl.utils.reward_score.math_verify``): the ground truth wrapped in ``\\boxed{}`` and parsed with
``LatexExtractionConfig``, the whole response parsed with ``ExprExtractionConfig`` +
``LatexExtractionConfig``, correct when any parsed pair verifies. It runs in this process (the
signal timeouts of math-verify work in the main thread), not in verl's process pool.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
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
