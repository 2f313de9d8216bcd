"""Multi-step integer arithmetic with step-by-step demonstrations ending in ``\\boxed{}``.

The embedded default task: small enough for a tiny model to learn on CPU in minutes, graded by the
project's math reward, with difficulty levels so that a warmed-up model solves the easy levels
sometimes and the hard ones never (both arms of HPT's gate then fire, as they do for
Qwen2.5-Math on OpenR1-Math).

Levels (one-digit operands; every intermediate result is shown in the demo):
  1: a+b                 "3+4=7. \\boxed{7}"
  2: a+b+c               "3+4=7. 7+5=12. \\boxed{12}"
  3: a+b+c+d             three addition steps
  4: a*b+c               "6*7=42. 42+5=47. \\boxed{47}"
  5: a*b+c*d             three steps, two products
Harder levels are chains of the easy step, so SFT on their demonstrations is learnable by a tiny
model in minutes, while a model warmed up on level 1 alone never solves them at the start.

Out-of-distribution families (the arena's OOD column, ``scripts/arena.py``; never in any training
or warm-up set, never produced unless asked for):
  6: a+b+c+d+e           a longer chain than any training level (four addition steps)
  7: c+a*b               a new operator mix: the product comes second ("6*7=42. 5+42=47.")
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DATA_SOURCE = "hpt_arith"
LEVELS = (1, 2, 3, 4, 5)
OOD_LEVELS = (6, 7)
LEVEL_NAMES = {1: "a+b", 2: "a+b+c", 3: "a+b+c+d", 4: "a*b+c", 5: "a*b+c*d", 6: "a+b+c+d+e (OOD: longer chain)",
               7: "c+a*b (OOD: new operator mix)"}


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
    d = lambda lo=0: rng.randint(lo, 9)  # noqa: E731  (one-digit operand)
    if level in (1, 2, 3):
        terms = [d() for _ in range(level + 1)]
        expr, (ans, steps) = "+".join(map(str, terms)), _steps_sum(terms)
    elif level == 4:
        a, b, c = d(2), d(2), d()
        expr, ans = f"{a}*{b}+{c}", a * b + c
        steps = [f"{a}*{b}={a * b}.", f"{a * b}+{c}={ans}."]
    elif level == 5:
        a, b, c, e = d(2), d(2), d(2), d(2)
        expr, ans = f"{a}*{b}+{c}*{e}", a * b + c * e
        steps = [f"{a}*{b}={a * b}.", f"{c}*{e}={c * e}.", f"{a * b}+{c * e}={ans}."]
    elif level == 6:
        terms = [d() for _ in range(5)]
        expr, (ans, steps) = "+".join(map(str, terms)), _steps_sum(terms)
    elif level == 7:
        a, b, c = d(2), d(2), d()
        expr, ans = f"{c}+{a}*{b}", a * b + c
        steps = [f"{a}*{b}={a * b}.", f"{c}+{a * b}={ans}."]
    else:
        raise ValueError(f"level must be one of {LEVELS + OOD_LEVELS}, got {level}")
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
                  exclude: set[str] | None = None, unique: bool = True,
                  weights: tuple[float, ...] | None = None, make=None, to_row=None) -> list[dict]:
    """n problems spread evenly over ``levels``; questions in ``exclude`` are never produced
    (keeps evaluation problems out of training). ``unique=False`` allows repeats (level 1 has only
    100 distinct problems). ``weights`` (one per level) draws levels at random in those
    proportions instead of round-robin. ``make``/``to_row``: another task's problem maker and row
    writer (default: this module's; :mod:`verl_ext.tasks.chains` passes its own)."""
    make, to_row = make or make_problem, to_row or to_verl_row
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct problems from levels {levels}")
        level = rng.choices(levels, weights)[0] if weights else levels[len(rows) % len(levels)]
        p = make(level, rng)
        if p.question in (exclude or ()) or (unique and p.question in seen):
            continue
        seen.add(p.question)
        rows.append(to_row(p, len(rows), split))
    return rows
