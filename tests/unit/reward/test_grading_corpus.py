"""The labelled grading corpus (``tests/data/grading_corpus.jsonl``, issue 15): every verdict of the
project's grader is asserted, per kind the project is never below math-verify alone (called the
way verl's ``math_verify`` scorer calls it), verdicts decided by cheap canonical forms never reach
the timed path, and an exception in a layer falls through to the next judge and is counted.
"""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import json
import logging
from collections import Counter

import pytest

from verl_ext.reward import score_batch
from verl_ext.reward import score as score_mod
from verl_ext.reward.grading_corpus import load_corpus, math_verify_alone
from verl_ext.reward.score import _ground_truths, compute_score, fast_verdict, final_prediction

REPO = TESTS_REPO
CORPUS = REPO / "tests" / "data" / "grading_corpus.jsonl"
# The kinds issue 15 lists (1-6) and the usual ones; each must be in the corpus with >= 3 pairs.
REQUIRED_KINDS = {
    "sci_notation", "magnitude", "infinity", "repeating", "mixed_number", "base", "degrees",  # 1 numbers
    "interval", "tuple", "set", "sequence", "matrix", "ratio_time", "separator",  # 2 structure
    "relation", "multi_answer", "units", "markup", "robustness",  # 3-6
    "fraction", "radical", "percent", "choice", "text", "equation", "complex", "money", "integer", "expression",
    "exact_tiny", "exact_arith",  # exact values never within an absolute tolerance
}


@pytest.fixture(scope="module")
def rows():
    return load_corpus(CORPUS)


@pytest.fixture(scope="module")
def graded(rows):
    """The project's verdict on every row (2 workers, the default 5 s hard limit per answer)."""
    res = score_batch([r["response"] for r in rows], [r["ground_truth"] for r in rows], "math",
                      num_workers=2, progress=False)
    return res


def test_corpus_is_well_formed(rows):
    assert len(rows) >= 300
    kinds = Counter(r["kind"] for r in rows)
    missing = {k for k in REQUIRED_KINDS if kinds[k] < 3}
    assert not missing, missing
    seen = set()
    for r in json.loads("[" + ",".join(CORPUS.read_text(encoding="utf-8").splitlines()) + "]"):
        assert set(r) in ({"kind", "ground_truth", "prediction", "correct", "reason"},
                          {"kind", "ground_truth", "response", "correct", "reason"}), r
        assert isinstance(r["correct"], bool) and r["reason"].strip(), r
        key = (r["ground_truth"], r.get("prediction", r.get("response")))
        assert key not in seen, f"duplicate pair {key}"
        seen.add(key)
    # both verdicts are represented in (almost) every kind, so a constant grader cannot pass a kind
    one_sided = [k for k in kinds if len({r["correct"] for r in rows if r["kind"] == k}) < 2]
    assert not one_sided, one_sided


# Pairs the project grader still gets wrong (math-verify alone too), by (ground truth, prediction).
# Listed, not hidden: the test fails when one of them starts passing, so the list stays exact.
KNOWN_WRONG = {
    ("[2, 7]", "2 \\le x \\le 7"),  # math-verify compares a relation with a set only when the prediction is the set
    ("2i", "2\\sqrt{-1}"),  # parsed as 2*sqrt(-1) with a real-valued i symbol on the other side
    ("e^{i\\pi}", "-1"),  # e^{i pi} is not simplified to -1 by math-verify
}


def test_every_verdict(rows, graded):
    wrong = {(r["ground_truth"], r.get("prediction", r["response"])): (r["kind"], r["correct"], x)
             for r, x in zip(rows, graded.results) if (x["score"] == 1.0) != r["correct"]}
    unexpected = {k: v for k, v in wrong.items() if k not in KNOWN_WRONG}
    assert not unexpected, "\n".join(map(repr, unexpected.items()))
    fixed = KNOWN_WRONG - set(wrong)
    assert not fixed, f"now graded right, remove from KNOWN_WRONG: {fixed}"
    assert graded.num_timeouts <= 2  # only the two power towers may hit the time limit


def test_never_below_math_verify_alone_on_a_kind(rows, graded):
    mv_alone = math_verify_alone
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    ours, alone, n = Counter(), Counter(), Counter()
    for r, x in zip(rows, graded.results):
        n[r["kind"]] += 1
        ours[r["kind"]] += (x["score"] == 1.0) == r["correct"]
        alone[r["kind"]] += (mv_alone(r["response"], r["ground_truth"]) == 1.0) == r["correct"]
    below = {k: (ours[k], alone[k], n[k]) for k in n if n[k] >= 3 and ours[k] < alone[k]}
    assert not below, below
    # and the corpus is not one that math-verify alone already grades perfectly
    assert sum(alone.values()) < sum(ours.values())


def test_cheap_forms_are_decided_before_the_timed_path(rows, monkeypatch):
    """Verdicts from canonical forms must not depend on machine load: they never reach the pool
    (a pool that always times out here would otherwise change them)."""

    class NoPool:
        def grade(self, *a, **k):
            raise AssertionError("a cheap canonical form reached the timed path")

    decided = 0
    for r in rows:
        pred = final_prediction(r["response"])
        if pred is None or fast_verdict(pred, _ground_truths(r["ground_truth"])) is None:
            continue
        decided += 1
        res = score_mod.score_math(r["response"], r["ground_truth"], timeout=0.001, pool=NoPool())
        assert (res["score"] == 1.0) == r["correct"], r
        assert res["timeout"] == 0.0
    by_kind = Counter(r["kind"] for r in rows
                      if final_prediction(r["response"]) is not None
                      and fast_verdict(final_prediction(r["response"]), _ground_truths(r["ground_truth"])) is not None)
    # every number spelling of kind 1 is a cheap form
    for kind in ("sci_notation", "repeating", "base", "magnitude"):
        total = sum(1 for r in rows if r["kind"] == kind)
        assert by_kind[kind] == total, (kind, by_kind[kind], total)
    assert decided >= 200


def test_in_process_layer_exception_falls_through_and_is_counted(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("bug in a canonical form")

    monkeypatch.setattr(score_mod, "decide_pair", boom)
    before = score_mod.LAYER_ERRORS["canonical"]
    r = compute_score("math", "so \\boxed{\\frac{6}{8}}", "0.75")  # the judge (math-verify) decides
    assert r["score"] == 1.0 and r["grader_error"] == 1.0
    r = compute_score("math", "so \\boxed{0.76}", "0.75")
    assert r["score"] == 0.0 and r["grader_error"] == 1.0
    assert score_mod.LAYER_ERRORS["canonical"] == before + 2


def test_judge_exception_falls_through_to_string_judge(monkeypatch):
    from verl_ext.reward import judge

    def boom(*a, **k):
        raise ValueError("math-verify bug")

    monkeypatch.setattr(judge, "math_verify_judge", boom)
    v = judge.grade("\\text{(B)}", "\\text{(B)}")
    assert v.correct and v.stage == "string" and v.errors and "math-verify bug" in v.errors[0]
    v = judge.grade("x+1", "1+x")  # the string judge cannot see this: 0, but flagged, not silent
    assert not v.correct and v.errors


def test_several_boxes_rule():
    boxed = "The roots are \\boxed{2} and \\boxed{-3}."
    assert final_prediction(boxed) == "2, -3"
    assert compute_score("math", boxed, "-3, 2")["score"] == 1.0
    assert compute_score("math", boxed, "2")["score"] == 0.0  # hedging is not the answer
    assert final_prediction("\\boxed{4}. No wait, it is \\boxed{5}") == "5"  # superseded
    assert final_prediction("\\boxed{5} or \\boxed{5}") == "5"


def test_release_mode_is_selectable():
    # the release-style grader takes the last box only and reads 7.4e-12 as 0 (a difference the
    # README documents); the default grader does not
    assert compute_score("math", "\\boxed{0}", "7.4e-12", grader="release")["score"] == 1.0
    assert compute_score("math", "\\boxed{0}", "7.4e-12")["score"] == 0.0
    with pytest.raises(ValueError):
        score_mod.grader_mode("nonsense")
