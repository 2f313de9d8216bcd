"""Chained one-digit additions, one operation per line: Arena II's task.

Difficulty is the number of additions k. A demonstration first restates the sum, then writes one line
per addition: the previous line with its first two numbers replaced by their sum. Every line is one
step x+d (d in 1..9) plus a copy of the rest of the line, and level 1 is the step alone for any x in
0..90, so a model warmed up on levels 1 and 2 has seen every step a longer chain needs and the
bookkeeping of two; a longer chain adds longer copies, not new arithmetic. The intent: demonstrations
teach what the model can learn but not find (the premise hybrid training rests on; Arena I's
multiplication levels broke it), and chains one step longer than the warm-up's are within the model's
reach sometimes (RL's regime). Measured so far (results/arena2/probes.md): the second holds with a rare
level 3 in the warm-up; the first does not yet hold in the arena's budget for this format either.

Additions only, so every partial total is below the answer: a model that stops a chain early, or
drops an operand, is always wrong. Earlier versions and why they were dropped: results/arena2/probes.md
(v1: + and - within totals 0..19, right by chance on 5-20 % of the long chains; v2: ``x+d=y`` lines
whose operand the model had to find in the question, not learnt in 100 SFT steps).

    Compute 7+5+3+8.   ->   7+5+3+8
                            12+3+8
                            15+8
                            23
                            \\boxed{23}

Levels: 1: x+d with x in 0..90 (one step); k = 2..6: k additions to a one-digit start (1..9).
Out-of-distribution families (never trained, never in the warm-up):
  9:  k = 8, a longer chain than any level;
  10: k = 3..5 with a new surface form: spaces around the operators in the question (``7 + 5 + 3``),
      which the byte-level tokenizer sees as different tokens; the answer's format is unchanged.
The ground truth is the integer; the project's math reward grades the last ``\\boxed{}``.
"""

from __future__ import annotations

import random
from functools import partial

from verl_ext.tasks import arithmetic
from verl_ext.tasks.arithmetic import Problem

DATA_SOURCE = "hpt_chain"
LEVELS = (1, 2, 3, 4, 5, 6)
OOD_LEVELS = (9, 10)
STEP_X_MAX = 90  # level 1's x: covers every step x+d of a chain up to OOD's 8 additions (x <= 9 + 7*9)
LONG_K = 8  # OOD level 9's number of additions
SPACED_K = (3, 4, 5)  # OOD level 10's numbers of additions
LEVEL_NAMES = {1: "x+d (one step)", **{k: f"{k} additions" for k in LEVELS[1:]},
               9: f"{LONG_K} additions (OOD: longer chain)", 10: "3-5 additions, spaced question (OOD: surface form)"}


def make_problem(level: int, rng: random.Random) -> Problem:
    if level == 1:
        start, ops, sep = rng.randint(0, STEP_X_MAX), [rng.randint(1, 9)], ""
    elif level in LEVELS:
        start, ops, sep = rng.randint(1, 9), [rng.randint(1, 9) for _ in range(level)], ""
    elif level == 9:
        start, ops, sep = rng.randint(1, 9), [rng.randint(1, 9) for _ in range(LONG_K)], ""
    elif level == 10:
        start, ops, sep = rng.randint(1, 9), [rng.randint(1, 9) for _ in range(rng.choice(SPACED_K))], " "
    else:
        raise ValueError(f"level must be one of {LEVELS + OOD_LEVELS}, got {level}")
    # one line per operation: the expression with its first two numbers replaced by their sum
    terms, total = [start, *ops], start
    expr = f"{sep}+{sep}".join(map(str, terms))
    lines = ["+".join(map(str, terms))]
    for i, d in enumerate(ops):
        total += d
        lines.append("+".join(map(str, [total, *ops[i + 1:]])))
    demo = "\n".join(lines) + f"\n\\boxed{{{total}}}"
    return Problem(level=level, question=expr, answer=total, demonstration=demo)


def to_verl_row(problem: Problem, index: int, split: str) -> dict:
    return arithmetic.to_verl_row(problem, index, split) | {"data_source": DATA_SOURCE}


generate_rows = partial(arithmetic.generate_rows, make=make_problem, to_row=to_verl_row)
generate_rows.__doc__ = "``arithmetic.generate_rows`` over this task's levels (same arguments)."
