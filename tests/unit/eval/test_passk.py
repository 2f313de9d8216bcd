"""pass@k / avg@k against hand-computed values and the closed form 1 - C(n-c,k)/C(n,k)."""

from __future__ import annotations

import math
import random

import pytest

from verl_ext.eval.passk import aggregate_benchmark, aggregate_records, avg_at_k, pass_at_k, powers_of_two_up_to


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 1, 0.4),  # = c/n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (5, 2, 4, 1.0),  # n - c = 3 < k: every 4-subset holds a correct sample
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (10, 0, 5, 0.0),
        (10, 10, 1, 1.0),
        (2048, 1, 1024, 0.5),  # 1 - C(2047,1024)/C(2048,1024) = 1 - 1024/2048
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_closed_form():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 300)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_pass_at_k_stable_for_large_n():
    # binomials of this size overflow floats; the product form must still give a probability
    v = pass_at_k(4096, 3, 2048)
    assert 0.0 <= v <= 1.0
    assert v == pytest.approx(1 - (2048 * 2047 * 2046) / (4096 * 4095 * 4094), rel=1e-9)


def test_pass_at_k_validates_arguments():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 0)


def test_avg_and_grid():
    assert avg_at_k([1, 0, 0, 1]) == 0.5
    assert powers_of_two_up_to(32) == [1, 2, 4, 8, 16, 32]
    assert powers_of_two_up_to(5) == [1, 2, 4]
    assert powers_of_two_up_to(1) == [1]


def test_aggregate_benchmark_hand_computed():
    agg = aggregate_benchmark({"q1": [1, 0, 0, 0], "q2": [1, 1, 1, 1], "q3": [0, 0, 0, 0]})
    assert agg["num_questions"] == 3 and agg["n"] == 4
    assert agg["avg@4"] == pytest.approx((0.25 + 1 + 0) / 3)
    assert agg["pass@k"][1] == pytest.approx(agg["avg@4"])  # pass@1 is the mean correctness
    assert agg["pass@k"][2] == pytest.approx((0.5 + 1 + 0) / 3)
    assert agg["pass@k"][4] == pytest.approx((1 + 1 + 0) / 3)
    assert list(agg["pass@k"]) == [1, 2, 4]


def test_aggregate_rejects_k_beyond_samples():
    with pytest.raises(ValueError):
        aggregate_benchmark({"q1": [1, 0]}, ks=[4])


def test_aggregate_records_groups_by_benchmark():
    recs = [
        {"benchmark": "a", "question_id": 0, "score": 1.0},
        {"benchmark": "a", "question_id": 0, "score": 0.0},
        {"benchmark": "a", "question_id": 1, "score": 0.0},
        {"benchmark": "a", "question_id": 1, "score": 0.0},
        {"benchmark": "b", "question_id": 0, "score": 1.0},
        {"benchmark": "b", "question_id": 0, "score": 1.0},
    ]
    out = aggregate_records(recs)
    assert out["a"]["avg"] == pytest.approx(0.25)
    assert out["a"]["pass@k"][2] == pytest.approx(0.5)
    assert out["b"]["avg"] == 1.0 and out["b"]["num_questions"] == 1
