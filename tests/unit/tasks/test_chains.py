"""Arena II's chain task (verl_ext/tasks/chains.py): every demonstration line is a true one-digit step,
a chain stopped early is never right, and the builders write it."""

from __future__ import annotations

import random
import re

import pandas as pd
import pytest

from verl_ext.reward import compute_score
from verl_ext.tasks import TASKS, chains
from verl_ext.tasks.arith_dataset import main as make_data

STEP = re.compile(r"^(\d+)\+(\d)=(\d+)$")


@pytest.mark.parametrize("level", chains.LEVELS + chains.OOD_LEVELS)
def test_demonstrations_are_chains_of_true_one_digit_steps(level):
    rng = random.Random(level)
    for _ in range(200):
        p = chains.make_problem(level, rng)
        *lines, boxed = p.demonstration.split("\n")
        assert boxed == f"\\boxed{{{p.answer}}}"
        k = {9: chains.LONG_K}.get(level, level)
        assert len(lines) == k or (level == 10 and len(lines) in chains.SPACED_K)
        operands = [int(x) for x in re.split(r"\s*\+\s*", p.question)]
        total = operands[0]
        for line, d in zip(lines, operands[1:], strict=True):
            x, dd, y = (int(g) for g in STEP.match(line).groups())
            assert (x, dd, y) == (total, d, total + d) and 1 <= d <= 9
            total = y
            assert total < p.answer or line is lines[-1]  # every partial total is below the answer
        assert total == p.answer
        assert (" " in p.question) == (level == 10)
        assert compute_score(chains.DATA_SOURCE, p.demonstration, str(p.answer))["score"] == 1.0


def test_level_one_covers_every_step_a_chain_meets():
    rng = random.Random(0)
    xs = {int(chains.make_problem(1, rng).question.split("+")[0]) for _ in range(5000)}
    chain_max = 9 + 9 * max(chains.LEVELS)  # the largest x a step of level 8 starts from, bound
    assert xs == set(range(chains.STEP_X_MAX + 1)) and chain_max - 9 <= chains.STEP_X_MAX


def test_a_chain_stopped_early_is_graded_wrong():
    p = chains.make_problem(5, random.Random(3))
    early = "\n".join(p.demonstration.split("\n")[:2])
    partial = int(early.rsplit("=", 1)[1])
    assert compute_score(chains.DATA_SOURCE, early + f"\n\\boxed{{{partial}}}", str(p.answer))["score"] == 0.0


def test_the_data_builder_writes_the_chain_task(tmp_path):
    make_data(["--task", "chains", "--out", str(tmp_path), "--levels", "2,3", "--train", "40", "--test", "10",
               "--val", "6", "--ood-levels", "9,10", "--ood-test", "4"])
    train, test, val = (pd.read_parquet(tmp_path / f"{s}.parquet") for s in ("train", "test", "val"))
    assert set(train["data_source"]) == {"hpt_chain"} and len(train) == 40
    held_out = {e["question"] for e in test["extra_info"]} | {e["question"] for e in val["extra_info"]}
    assert not held_out & {e["question"] for e in train["extra_info"]}
    assert {int(e["level"]) for e in pd.read_parquet(tmp_path / "test_ood.parquet")["extra_info"]} == {9, 10}
    assert TASKS["chains"] is chains
