"""Chained one-digit additions and subtractions, one operation per line: Arena II's task.

Difficulty is the number of operations k. Every line of a demonstration is one step
``x±d=y`` with the running total x, y in [0, 19] and d in 1..9, and each operation is drawn so that
the total stays in that range, so a model warmed up on chains of one and two operations has seen
(nearly) every step a longer chain needs. What a longer chain adds is bookkeeping, not arithmetic:
taking the i-th operand of the question and carrying the total on. Demonstrations then teach what
the model can learn but not find (the premise hybrid training rests on; Arena I's multiplication
levels broke it), and chains one step longer than the warm-up's are within the model's reach
sometimes (RL's regime).

    Compute 7+5-3+8.   ->   7+5=12
                            12-3=9
                            9+8=17
                            \\boxed{17}

Levels 1..8: k operations. Out-of-distribution families (never trained, never in the warm-up):
  9:  k = 10, a longer chain than any level;
  10: k = 3..5 with a new surface form: spaces around the operators in the question (``7 + 5 - 3``),
      which the byte-level tokenizer sees as different tokens; the answer's format is unchanged.
The ground truth is the integer; the project's math reward grades the last ``\\boxed{}``.
"""

from __future__ import annotations

import random
from functools import partial

from verl_ext.tasks import arithmetic
from verl_ext.tasks.arithmetic import Problem

DATA_SOURCE = "hpt_chain"
LEVELS = (1, 2, 3, 4, 5, 6, 7, 8)
OOD_LEVELS = (9, 10)
TOTAL_MAX = 19  # running totals stay in [0, TOTAL_MAX]
LONG_K = 10  # OOD level 9's number of operations
SPACED_K = (3, 4, 5)  # OOD level 10's numbers of operations
LEVEL_NAMES = {**{k: f"{k} op{'s' if k > 1 else ''}" for k in LEVELS},
               9: f"{LONG_K} ops (OOD: longer chain)", 10: "3-5 ops, spaced question (OOD: surface form)"}


def _chain(k: int, rng: random.Random) -> tuple[list[tuple[str, int]], int]:
    """(the k operations as (op, operand), the start): every running total in [0, TOTAL_MAX]."""
    start = rng.randint(1, 9)
    total, ops = start, []
    for _ in range(k):
        choices = [(op, d) for op in "+-" for d in range(1, 10)
                   if 0 <= (total + d if op == "+" else total - d) <= TOTAL_MAX]
        op, d = rng.choice(choices)
        ops.append((op, d))
        total = total + d if op == "+" else total - d
    return ops, start


def make_problem(level: int, rng: random.Random) -> Problem:
    if level in LEVELS:
        k, sep = level, ""
    elif level == 9:
        k, sep = LONG_K, ""
    elif level == 10:
        k, sep = rng.choice(SPACED_K), " "
    else:
        raise ValueError(f"level must be one of {LEVELS + OOD_LEVELS}, got {level}")
    ops, total = _chain(k, rng)
    expr, lines = str(total), []
    for op, d in ops:
        nxt = total + d if op == "+" else total - d
        expr += f"{sep}{op}{sep}{d}"
        lines.append(f"{total}{op}{d}={nxt}")
        total = nxt
    demo = "\n".join(lines) + f"\n\\boxed{{{total}}}"
    return Problem(level=level, question=expr, answer=total, demonstration=demo)


def to_verl_row(problem: Problem, index: int, split: str) -> dict:
    return arithmetic.to_verl_row(problem, index, split) | {"data_source": DATA_SOURCE}


generate_rows = partial(arithmetic.generate_rows, make=make_problem, to_row=to_verl_row)
generate_rows.__doc__ = "``arithmetic.generate_rows`` over this task's levels (same arguments)."
