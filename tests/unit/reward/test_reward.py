"""Reward: extraction, normalisation, equivalence, GPQA letters, hard timeouts, batch scoring."""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import sys
import textwrap
import threading
import time

import pytest

from verl_ext.reward import compute_score, score_batch
from verl_ext.reward.extract import extract_choice_letter, last_boxed_content
from verl_ext.reward.normalize import normalize_string
from verl_ext.reward.pool import GraderPool
from verl_ext.reward.score import fast_verdict

REPO = TESTS_REPO


def boxed(x: str) -> str:
    return f"Let me work it out... so the final answer is \\boxed{{{x}}}."


# --- extraction ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{5}", "5"),
        ("a \\boxed{1} then \\boxed{2} end", "2"),  # last box wins
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),  # nested braces
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not close the box
        ("\\fbox{7}", "7"),
        ("so $\\boxed 5$.", "5"),
        ("\\boxed {12}", "12"),
        ("first \\boxed{3}, later \\fbox{4}", "4"),  # the later of \boxed / \fbox
        ("no box here: 5", None),
        ("truncated \\boxed{3} and \\boxed{\\frac{1}{2", None),  # unclosed last box: no answer
        ("\\boxedfoo{3}", None),  # another macro, not \boxed
    ],
)
def test_last_boxed_content(text, expected):
    assert last_boxed_content(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("... \\boxed{C}", "C"),
        ("... \\boxed{(C)}", "C"),
        ("... \\boxed{\\text{C}}", "C"),
        ("... \\boxed{\\textbf{(B)}}", "B"),
        ("... \\boxed{D. c}", "D"),
        ("Therefore the answer is (C).", "C"),
        ("Answer: B", "B"),
        ("I pick option A) over C), so: C)", "C"),  # last bare mention
        ("item a) is dense, item b) not", None),  # lower-case items are not options
        ("\\boxed{42}", None),
        ("no letter at all", None),
    ],
)
def test_extract_choice_letter(text, expected):
    assert extract_choice_letter(text) == expected


# --- normalisation / fast path ---------------------------------------------------------------

@pytest.mark.parametrize(
    "a, b",
    [
        ("\\dfrac{3}{4}", "\\frac34"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("10^\\circ", "10"),
        ("50\\%", "50"),
        ("1,000,000", "1000000"),
        ("1{,}000", "1000"),
        ("5\\text{ cm}", "5"),
        ("3.", "3"),
        ("10.50", "10.5"),
        ("x = 7", "7"),
        ("\\$12", "12"),
        ("2\\!000", "2000"),
    ],
)
def test_normalize_string_equal(a, b):
    assert normalize_string(a) == normalize_string(b)


def test_normalize_keeps_variables_apart():
    # the release's unit list strips single letters ("a", "c"), making these equal; ours does not
    assert normalize_string("a+1") != normalize_string("c+1")
    assert normalize_string("(1,2)") != normalize_string("(2,1)")


def test_fast_verdict_decides_without_parser():
    assert fast_verdict("0.5", ["\\frac{1}{2}"]) is True
    assert fast_verdict("204", ["205"]) is False  # two different integers
    assert fast_verdict("\\sqrt{8}", ["2\\sqrt{2}"]) is None  # needs sympy / math-verify


# --- compute_score: math ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ("\\frac{1}{2}", "0.5", 1.0),
        ("0.5", "\\frac{1}{2}", 1.0),
        ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
        ("(3,\\frac{\\pi}{3})", "\\left( 3, \\frac{\\pi}{2} \\right)", 0.0),
        ("\\sqrt{8}", "2\\sqrt{2}", 1.0),
        ("1+x^2", "x^2+1", 1.0),
        ("\\frac{1}{2}\\sqrt{3}", "\\frac{\\sqrt{3}}{2}", 1.0),
        ("(2,1)", "(1,2)", 0.0),  # ordered tuple
        ("\\{2,1\\}", "\\{1,2\\}", 1.0),  # unordered set
        ("2, 1", "1, 2", 1.0),  # list of solutions: unordered
        ("(1,2)", "[1,2)", 0.0),  # open vs half-open interval
        ("5", "6", 0.0),
        ("204", "\\boxed{204}", 1.0),  # boxed ground truth (AIME24 file)
        ("10^\\circ", "10", 1.0),
        ("1,000", "1000", 1.0),
        ("0.333", "\\frac{1}{3}", 0.0),
        ("c+1", "a+1", 0.0),
    ],
)
def test_compute_score_math_pairs(pred, gt, expected):
    r = compute_score("MATH-500", boxed(pred), gt)
    assert r["score"] == expected
    assert r["acc"] == expected
    assert r["pred"] == pred
    assert r["timeout"] == 0.0
    # the same keys for every answer (verl stacks them)
    assert set(r) == {"score", "acc", "pred", "timeout", "grader_error"}


def test_no_box_scores_zero():
    r = compute_score("AIME24", "The answer is 204.", "204")
    assert r == {"score": 0.0, "acc": 0.0, "pred": "", "timeout": 0.0, "grader_error": 0.0}


def test_last_box_wins():
    assert compute_score("AIME24", "\\boxed{204} no wait \\boxed{205}", "204")["score"] == 0.0
    assert compute_score("AIME24", "\\boxed{205} no wait \\boxed{204}", "204")["score"] == 1.0


def test_list_ground_truth_any_matches():
    import numpy as np

    assert compute_score("math", boxed("3"), ["2", "3"])["score"] == 1.0
    assert compute_score("math", boxed("4"), ["2", "3"])["score"] == 0.0
    # parquet list columns reach the reward as numpy arrays
    assert compute_score("math", boxed("3"), np.array(["2", "3"], dtype=object))["score"] == 1.0
    assert compute_score("GPQA", boxed("B"), np.array(["A", "B"], dtype=object))["score"] == 1.0


def test_fast_path_numbers():
    # exact rationals on both sides are decided in-process
    assert fast_verdict("\\frac{6}{8}", ["0.75"]) is True
    assert fast_verdict("0.76", ["\\frac{3}{4}"]) is False
    # relative tolerance 1e-6 of the ground truth, never absolute rounding
    assert fast_verdict("0.333333", ["\\frac{1}{3}"]) is True
    assert fast_verdict("0.333", ["\\frac{1}{3}"]) is False
    assert fast_verdict("0", ["7.4e-12"]) is False
    assert fast_verdict("7.4 \\times 10^{-12}", ["7.4e-12"]) is True
    # an integer answer is never matched by a nearby non-integer
    assert fast_verdict("1000000.4", ["1000000"]) is False
    # not a cheap form: left to the judge
    assert fast_verdict("2\\sqrt{2}", ["\\sqrt{8}"]) is None


# --- compute_score: GPQA ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "response, expected",
    [
        ("... so \\boxed{C}", 1.0),
        ("The correct option is (C).", 1.0),
        ("final: C)", 1.0),
        ("\\boxed{B}", 0.0),
        ("I think it's c) from the list", 0.0),
        ("no answer", 0.0),
    ],
)
def test_gpqa_letters(response, expected):
    r = compute_score("GPQA", response, "C")
    assert r["score"] == expected
    assert r["timeout"] == 0.0


def test_gpqa_dispatch_by_data_source():
    # Same response/ground truth: math grading would extract "C" from the box and compare to "C"
    # too, so use a response that only the multiple-choice path accepts.
    assert compute_score("gpqa_diamond", "Answer: (D)", "D")["score"] == 1.0
    assert compute_score("math", "Answer: (D)", "D")["score"] == 0.0
    assert compute_score("gpqa_diamond", "Answer: (D)", "D")["pred"] == "D"


# --- hard timeouts ---------------------------------------------------------------------------

PATHOLOGICAL = [
    "9^{9^{9^{9}}}",
    "2^{2^{2^{2^{2^{2}}}}}",
    "(x+1)^{100000}",
    "(" * 40 + "1" + ")" * 40,
]


@pytest.mark.parametrize("pred", PATHOLOGICAL)
def test_pathological_answers_return_within_timeout(pred):
    """Each of these makes math-verify/sympy run for minutes (or forever) without a limit."""
    with GraderPool(num_workers=1) as pool:
        pool.warm_up()  # worker start-up is not part of the per-answer budget
        t0 = time.monotonic()
        from verl_ext.reward.score import score_math

        r = score_math(boxed(pred), "5", timeout=2.0, pool=pool)
        elapsed = time.monotonic() - t0
    assert elapsed < 2.0 + 0.5, elapsed
    assert r["score"] == 0.0
    assert r["pred"] == pred
    assert r["timeout"] == 1.0, "a timed-out answer must be flagged, not silently scored as wrong"


HANG_WORKER = textwrap.dedent(
    """
    import json, signal, sys, time
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # no soft limit can interrupt
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["pred"] == "HANG":
            while True:
                time.sleep(10)
        print(json.dumps({"correct": req["pred"] in req["gts"], "stage": "string",
                          "timed_out": False, "error": None}), flush=True)
    """
)


def test_hard_kill_of_a_stuck_worker(tmp_path):
    script = tmp_path / "hang_worker.py"
    script.write_text(HANG_WORKER)
    with GraderPool(num_workers=1, worker_cmd=[sys.executable, str(script)]) as pool:
        pool.warm_up()
        t0 = time.monotonic()
        v = pool.grade("HANG", ["1"], timeout=1.0)
        elapsed = time.monotonic() - t0
        assert elapsed < 1.5, elapsed
        assert v.correct is False and v.timed_out and v.killed
        assert pool.stats["kills"] == 1 and pool.stats["timeouts"] == 1
        # the slot restarts a fresh worker transparently
        assert pool.grade("1", ["1"], timeout=5.0).correct is True
        assert pool.grade("2", ["1"], timeout=5.0).correct is False
        assert pool.stats["restarts"] == 1


def test_compute_score_from_many_threads():
    """verl calls compute_score from executor threads; results must stay paired with inputs."""
    cases = [("\\sqrt{8}", "2\\sqrt{2}", 1.0), ("\\sqrt{7}", "2\\sqrt{2}", 0.0),
             ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0), ("(3,\\pi)", "(3,\\pi/2)", 0.0)] * 4
    out = [None] * len(cases)

    def work(i):
        pred, gt, _ = cases[i]
        out[i] = compute_score("math", boxed(pred), gt)["score"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert out == [c[2] for c in cases]


# --- batch scoring ---------------------------------------------------------------------------

def test_score_batch_counts_timeouts_and_keeps_order():
    sols = [boxed("0.5"), boxed("\\sqrt{8}"), boxed("9^{9^{9^{9}}}"), "no box", boxed("7"), "\\boxed{B}",
            boxed("x^2+2x+1"), boxed("(x+1)^2")]
    gts = ["\\frac{1}{2}", "2\\sqrt{2}", "5", "5", "8", "B", "(x+1)^2", "x^2+2x+1"]
    srcs = ["math"] * 5 + ["GPQA"] + ["math"] * 2
    res = score_batch(sols, gts, srcs, num_workers=2, timeout=2.0, progress=False)
    assert res.scores == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert res.num_timeouts == 1
    assert [r["timeout"] for r in res.results] == [0, 0, 1, 0, 0, 0, 0, 0]
    assert res.results[5]["pred"] == "B"
    assert res.seconds < 2.0 + 10  # one timeout plus start-up on a loaded 2-core machine


def test_score_batch_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        score_batch(["a"], ["a", "b"], progress=False)


# --- verl wiring -----------------------------------------------------------------------------

def test_loads_through_verl_custom_reward_function():
    """The file path given to reward.custom_reward_function.path loads with verl's own loader."""
    from verl.utils.import_utils import load_extern_object

    fn = load_extern_object(str(REPO / "verl_ext" / "reward" / "verl_entry.py"), "compute_score")
    r = fn(data_source="MATH-500", solution_str=boxed("\\dfrac{1}{2}"), ground_truth="0.5",
           extra_info={"index": 0}, reward_router_address=None)
    assert r["score"] == 1.0 and r["pred"] == "\\dfrac{1}{2}"
    fn_pkg = load_extern_object("pkg://verl_ext.reward.score", "compute_score")
    assert fn_pkg(data_source="x", solution_str=boxed("3"), ground_truth="4")["score"] == 0.0


@pytest.mark.parametrize(
    "response, ground_truth, score",
    [
        ("\\boxed{50%}", "50", 1.0),  # a bare %, as models write it, not only LaTeX's \%
        ("\\boxed{50 %}", "50", 1.0),
        ("\\boxed{50}", "50%", 1.0),  # and in the ground truth
        ("\\boxed{50%}", "50%", 1.0),
        ("\\boxed{12.5%}", "12.5", 1.0),
        ("\\boxed{0.5}", "50%", 1.0),  # the documented percent reading: 50% is also 0.5
        ("\\boxed{5%}", "50", 0.0),  # stripping the sign must not make different numbers equal
        ("\\boxed{50%}", "5", 0.0),
    ],
)
def test_bare_percent_sign(response, ground_truth, score):
    assert compute_score("math", response, ground_truth)["score"] == score


# ------------------------------------------------------------------ exact arithmetic on numbers
@pytest.mark.parametrize("text,value", [
    (r"\frac{1}{2^{56}}", "1/72057594037927936"), (r"2^{10}", "1024"), ("5!", "120"), (r"3\cdot 10+1", "31"),
    (r"(1+2)\times 3", "9"), (r"\frac{1}{2}^{3}", "1/8"), ("1/3", "1/3"), (r"2^{-3}", "1/8"), (r"7 \div 2", "7/2"),
])
def test_exact_value_of_arithmetic_on_numbers(text, value):
    from fractions import Fraction

    from verl_ext.reward.exact import exact_value

    assert exact_value(text) == Fraction(value)


@pytest.mark.parametrize("text", [
    "2^10",  # LaTeX reads 2^1 0: ambiguous, left to the judge
    "2(3)", r"3\frac{1}{2}",  # implicit products (the latter a mixed number, the plain-number parser's)
    r"2^{2^{2^{2^{2}}}}", r"10^{10^{10}}", "1000!", r"2^{1000}",  # beyond the bounds: never slow here
    "x+1", r"\sqrt{2}", r"\pi/2", "-5", "12", r"\frac{1}{0}",
])
def test_exact_value_refuses_what_it_cannot_decide_quickly_and_surely(text):
    import time

    from verl_ext.reward.exact import exact_value

    t0 = time.perf_counter()
    assert exact_value(text) is None
    assert time.perf_counter() - t0 < 0.05


def test_tiny_exact_values_are_compared_relatively_not_absolutely():
    from verl_ext.reward import compute_score

    for a in (55, 60, 100):
        truth = rf"\frac{{1}}{{2^{{{a + 1}}}}}"
        assert compute_score("math", rf"\boxed{{\frac{{1}}{{2^{{{a}}}}}}}", truth)["score"] == 0.0
        assert compute_score("math", rf"\boxed{{2^{{-{a + 1}}}}}", truth)["score"] == 1.0
