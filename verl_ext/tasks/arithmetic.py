"""Multi-step integer arithmetic with step-by-step demonstrations ending in ``\\boxed{}``.

The embedded default task: small enough for a tiny model to learn on CPU in minutes, graded by the
project's math reward, with difficulty levels so that a warmed-up model solves the easy levels
sometimes and the hard ones never (both arms of HPT's gate then fire, as they do for
Qwen2.5-Math on OpenR1-Math).

Levels (operands are non-negative integers; every intermediate result is shown in the demo):
  1: a+b, one-digit operands              "3+4=7. \\boxed{7}"
  2: a+b, two-digit operands
  3: a+b+c, two-digit operands            "12+7=19. 19+25=44. \\boxed{44}"
  4: a*b+c, one-digit a,b and two-digit c
  5: a*b+c*d, one/two-digit operands, three steps
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DATA_SOURCE = "hpt_arith"
LEVELS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Problem:
    level: int
    question: str  # the expression, e.g. "12+7+25"
    answer: int
    demonstration: str  # step-by-step solution ending in \boxed{answer}


def _steps_sum(terms: list[int]) -> tuple[int, list[str]]:
    total, steps = terms[0], []
    for t in terms[1:]:
        steps.append(f"{total}+{t}={total + t}.")
        total += t
    return total, steps


def make_problem(level: int, rng: random.Random) -> Problem:
    if level == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        expr, (ans, steps) = f"{a}+{b}", _steps_sum([a, b])
    elif level == 2:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        expr, (ans, steps) = f"{a}+{b}", _steps_sum([a, b])
    elif level == 3:
        a, b, c = (rng.randint(10, 99) for _ in range(3))
        expr, (ans, steps) = f"{a}+{b}+{c}", _steps_sum([a, b, c])
    elif level == 4:
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(10, 99)
        expr, ans = f"{a}*{b}+{c}", a * b + c
        steps = [f"{a}*{b}={a * b}.", f"{a * b}+{c}={ans}."]
    elif level == 5:
        a, b, c, d = rng.randint(2, 9), rng.randint(10, 30), rng.randint(2, 9), rng.randint(2, 9)
        expr, ans = f"{a}*{b}+{c}*{d}", a * b + c * d
        steps = [f"{a}*{b}={a * b}.", f"{c}*{d}={c * d}.", f"{a * b}+{c * d}={ans}."]
    else:
        raise ValueError(f"level must be one of {LEVELS}, got {level}")
    demo = " ".join(steps) + f" \\boxed{{{ans}}}"
    return Problem(level=level, question=expr, answer=ans, demonstration=demo)


def prompt_text(problem: Problem) -> str:
    return f"Compute {problem.question}."


def to_verl_row(problem: Problem, index: int, split: str) -> dict:
    """One row of verl's RL parquet; the demonstration travels in ``extra_info['target']``."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": prompt_text(problem)}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(problem.answer)},
        "extra_info": {
            "index": index,
            "split": split,
            "level": problem.level,
            "question": problem.question,
            "target": problem.demonstration,
        },
    }


def generate_rows(n: int, levels: tuple[int, ...], seed: int, split: str,
                  exclude: set[str] | None = None, unique: bool = True) -> list[dict]:
    """n problems spread evenly over ``levels``; questions in ``exclude`` are never produced
    (keeps evaluation problems out of training). ``unique=False`` allows repeats (level 1 has only
    100 distinct problems)."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct problems from levels {levels}")
        level = levels[len(rows) % len(levels)]
        p = make_problem(level, rng)
        if p.question in (exclude or ()) or (unique and p.question in seen):
            continue
        seen.add(p.question)
        rows.append(to_verl_row(p, len(rows), split))
    return rows
