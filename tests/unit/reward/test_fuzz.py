"""Fuzz the grader (issue 8): random and adversarial answers and ground truths through verl's entry
point ``verl_ext.reward.score.compute_score``. Every call must come back within its time bound
(per-answer hard timeout + the restart of a killed worker) with a 0/1 score and the same result
keys, never raise, and the in-process part (box extraction + normalisation, which cannot be
killed) must stay fast on every input.
"""

from __future__ import annotations

import random
import string
import threading
import time

import pytest

from verl_ext.reward.extract import last_boxed_content
from verl_ext.reward.pool import GraderPool
from verl_ext.reward.score import _ground_truths, compute_score, fast_verdict

TIMEOUT_S = 1.0  # per-answer hard limit given to the grader
# A killed worker is replaced on the next call, which then also waits for the new interpreter to
# import sympy + math-verify: seconds on an idle machine, more on a loaded 2-core one.
RESTART_ALLOWANCE_S = 30.0
IN_PROCESS_BOUND_S = 1.0  # extraction + fast path run in the caller's process: no kill possible
KEYS = {"score", "acc", "pred", "timeout", "grader_error"}


def _box(s: str) -> str:
    return f"The answer is \\boxed{{{s}}}."


ADVERSARIAL = [
    # unbalanced and deeply nested braces / brackets
    "\\boxed{" + "{" * 5000, "}" * 5000, "\\boxed{" * 2000, "\\boxed{}}}}{{{",
    _box("\\frac{" * 500 + "1" + "}{2}" * 500), _box("(" * 5000 + ")" * 5000), _box("[" * 3000),
    _box("\\sqrt{" * 300 + "2" + "}" * 300), _box("\\left(" * 1000), _box("\\begin{matrix}" * 100),
    _box("\\text{" * 1000), _box("{}" * 2400), _box("(1," * 1600),
    # huge exponents / numbers
    _box("9^{9^{9^{9}}}"), _box("10^{10^{100}}"), _box("2**2**2**2**2**2"), _box("1e999999999"),
    _box("10^(10^(10^10))"), _box("\\frac{10^{1000000}}{3}"), _box("(10^10)!"), _box("99999999999999999999!"),
    _box("9" * 4000), _box("0." + "3" * 4990), _box("x^" * 2400 + "2"), _box("^" * 4990),
    _box("2^{2^{2^{2^{2^{2^{2}}}}}}"), _box("\\exp(\\exp(\\exp(100)))"), _box("\\binom{10^{9}}{10^{8}}"),
    _box("\\int_0^\\infty e^{-x^2} dx"), _box("\\sum_{n=1}^{10^{12}} n^{n}"), _box("1/0"), _box("\\frac{1}{0}"),
    _box("0/0"), _box("\\infty - \\infty"), _box("x**x**x**x**x**x"),
    # unicode
    _box("\u200b" * 100), _box("\U0001F642" * 1000), _box("\u202e12"), _box("e\u0301" * 1000), _box("\ud800"),
    _box("\x00"), _box("\uff11\uff12\uff13"), _box("\u00bd"), _box("\u221e"), _box("\u0661\u0662"),
    _box("\\boxed{\u00e9\u00e8\u00ea}"), "\ufeff\\boxed{1}",
    # very long
    _box("1" * 1_000_000), _box("a+" * 100_000), _box("x" * 200_000), _box("1/" * 5000 + "1"),
    _box("\\dfrac{1}{2}" * 400), _box(" , " * 1600), _box("\\\\" * 2400), _box("$" * 4990), _box("\\%" * 2400),
    _box("1," * 2450 + "1"), _box("-" * 4900 + "1"), "x" * 2_000_000, _box("ab" * 2499 + "c"),
    # LaTeX / sympy parser traps
    _box("\\frac{\\frac{\\frac{1}{2}}{3}}{4}"), _box("\\lim_{x\\to 0} \\frac{\\sin x}{x}"), _box("import os"),
    _box("__import__('os').system('true')"), _box("lambda: 1"), _box("\\mathbb{R}"), _box("\\{1,2,\\}"),
    _box("(1,2]"), _box("\\pm\\sqrt{-1}"), _box("i^i"), _box("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"),
    _box("x=" * 1000), _box("\\;" * 1000 + "5"), _box("5\\%"), _box("\\$5"), _box("5^\\circ"),
]
GROUND_TRUTHS = ["5", "\\frac{1}{2}", "9^{9^{9}}", "(1,2)", "\\{1,2\\}", "x^2+1", "\\infty", ["1", "2"], "10^{100}",
                 "\\sqrt{2}", "A"]
LATEX_BITS = ["\\frac{", "}{", "}", "{", "^", "_", "\\sqrt{", "(", ")", "[", "]", "\\left(", "\\right)", "x", "y",
              "1", "2", "9", "0", ".", ",", "+", "-", "*", "/", "=", "\\pi", "e", "i", "\\infty", "!", "\\cdot",
              "\\{", "\\}", "\\text{", "\\boxed{", "$", "\\", " ", "10^{", "\u00bd", "\u221a", "\U0001F642"]


def _random_answers(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    alphabet = string.printable + "\u00bd\u221e\u03c0\u2212\u00d7\u200b\U0001F642"
    for i in range(n):
        if i % 2:
            body = "".join(rng.choice(LATEX_BITS) for _ in range(rng.randrange(1, 80)))
        else:
            body = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 400)))
        out.append(_box(body) if rng.random() < 0.8 else body)
    return out


def test_in_process_part_is_fast_on_every_input():
    slow = []
    for s in ADVERSARIAL + _random_answers(200, seed=1):
        t0 = time.perf_counter()
        pred = last_boxed_content(s)
        if pred is not None:
            for gt in GROUND_TRUTHS:
                fast_verdict(pred, _ground_truths(gt))
        if time.perf_counter() - t0 > IN_PROCESS_BOUND_S:
            slow.append(s[:60])
    assert not slow, slow


@pytest.fixture()
def fresh_pool(monkeypatch):
    """compute_score's process-wide pool, fresh for this test (2 workers, warmed)."""
    from verl_ext.reward import score

    pool = GraderPool(num_workers=2)
    pool.warm_up()
    monkeypatch.setattr(score, "get_pool", lambda: pool)
    yield pool
    pool.close()


def test_grader_fuzz_finishes_within_time_bound(fresh_pool):
    answers = ADVERSARIAL + _random_answers(60, seed=0)
    rng = random.Random(2)
    cases = [(a, rng.choice("ABCD"), "gpqa_diamond") if i % 17 == 0 else (a, rng.choice(GROUND_TRUTHS), "math")
             for i, a in enumerate(answers)]
    # adversarial ground truths too (a non-letter GPQA answer is a grader crash: scored 0, flagged)
    cases += [("\\boxed{1}", gt, "math") for gt in ("", "\\boxed{", "{{{", "\ud800", "9" * 5000, "x" * 100_000)]
    cases += [("\\boxed{A}", "not a letter", "gpqa_diamond")]

    results: list = [None] * len(cases)
    durations = [0.0] * len(cases)
    errors: list = []

    def run():
        for i, (sol, gt, src) in enumerate(cases):
            t0 = time.monotonic()
            try:
                results[i] = compute_score(src, sol, gt, timeout=TIMEOUT_S)
            except BaseException as exc:  # noqa: BLE001  (compute_score must never raise)
                errors.append((i, repr(exc)))
            durations[i] = time.monotonic() - t0

    # The whole run has a hard deadline, checked from outside, so a hang fails instead of blocking.
    budget = len(cases) * 0.5 + 30 * RESTART_ALLOWANCE_S / 10 + 120
    thread = threading.Thread(target=run, daemon=True)
    t0 = time.monotonic()
    thread.start()
    thread.join(budget)
    elapsed = time.monotonic() - t0
    assert not thread.is_alive(), f"grader fuzz still running after {budget:.0f}s: a hang"
    assert not errors, errors[:5]
    for i, r in enumerate(results):
        assert set(r) == KEYS, (i, r)
        assert r["score"] in (0.0, 1.0) and r["acc"] == r["score"], (i, r)
        assert r["timeout"] in (0.0, 1.0) and r["grader_error"] in (0.0, 1.0)
    assert results[-1]["grader_error"] == 1.0 and results[-1]["score"] == 0.0
    worst = max(range(len(cases)), key=lambda i: durations[i])
    assert durations[worst] <= TIMEOUT_S + RESTART_ALLOWANCE_S, (durations[worst], cases[worst][0][:80])
    n_timeouts = sum(r["timeout"] for r in results)
    print(f"fuzz: {len(cases)} answers in {elapsed:.1f}s, max {durations[worst]:.2f}s, "
          f"{int(n_timeouts)} timeouts, {int(sum(r['grader_error'] for r in results))} grader errors, "
          f"pool {fresh_pool.stats}")
    # each timed-out answer was charged at most its hard limit (+ the restart of its worker)
    assert fresh_pool.stats["kills"] <= len(cases)
