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

@pytest.mark.parametrize("level", chains.LEVELS + chains.OOD_LEVELS)
def test_demonstrations_rewrite_the_sum_one_addition_per_line(level):
    rng = random.Random(level)
    for _ in range(200):
        p = chains.make_problem(level, rng)
        first, *lines, boxed = p.demonstration.split("\n")
        assert boxed == f"\\boxed{{{p.answer}}}"
        operands = [int(x) for x in re.split(r"\s*\+\s*", p.question)]
        assert first == "+".join(map(str, operands))  # the sum restated (spaces dropped)
        k = len(operands) - 1
        assert k == {9: chains.LONG_K}.get(level, level) or (level == 10 and k in chains.SPACED_K)
        assert len(lines) == k and all(1 <= d <= 9 for d in operands[1:])
        total = operands[0]
        for i, line in enumerate(lines):  # line i: the running total, then the operands not yet added
            total += operands[i + 1]
            assert [int(x) for x in line.split("+")] == [total, *operands[i + 2:]]
            assert total < p.answer or i == k - 1  # every partial total is below the answer
        assert total == p.answer
        assert (" " in p.question) == (level == 10)
        assert compute_score(chains.DATA_SOURCE, p.demonstration, str(p.answer))["score"] == 1.0


def test_level_one_covers_every_step_a_chain_meets():
    rng = random.Random(0)
    xs = {int(chains.make_problem(1, rng).question.split("+")[0]) for _ in range(5000)}
    # the largest running total a step of any chain starts from, OOD's longer chain included
    assert xs == set(range(chains.STEP_X_MAX + 1)) and 9 + 9 * (chains.LONG_K - 1) <= chains.STEP_X_MAX


def test_a_chain_stopped_early_is_graded_wrong():
    p = chains.make_problem(5, random.Random(3))
    lines = p.demonstration.split("\n")
    early = "\n".join(lines[:3])
    partial = int(lines[2].split("+")[0])
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
