"""Staged generation: a question's n rollouts drawn in stages, with a decision after each.

HPT draws all n rollouts of every question and, for a question the gate sends to SFT (placement
``replace``), throws all of them away. With stages, a question that is already known to go to SFT
stops early::

    hpt.stages:                 # Σ rollouts = actor_rollout_ref.rollout.n
      - rollouts: 4             # stage 1: every question, plainly sampled
      - rollouts: 4
        max_correct: 0          # condition on the results so far: C ≤ 0 correct of the 4 drawn
        action: stop_to_sft     # ... then: no more rollouts, the question goes to SFT

A stage's condition reads the question's cumulative correct count C over the rows drawn in earlier
stages (a row is correct when its score ≥ ``hpt.gate.correct_threshold``); when it holds the
stage's ``action`` applies, otherwise the stage's rows are drawn plainly:

- ``stop_to_sft``: this stage's and every later stage's rows are not drawn; the question goes to
  SFT (α = 0, β = 1), whatever the gate would say on the rows drawn so far.
- ``continue``: the rows are drawn plainly (a stage that only documents a threshold).
- ``continue_with_prefix`` (with ``prefix: f``, 0 < f ≤ 1): the question's rows in this stage continue
  the first part of its demonstration instead of starting from the prompt alone: the response is
  the demonstration prefix (cut by :func:`verl_ext.hpt.staging.prefix.prefix_cut_length`) followed by what
  the policy generates after it; f = 1 is the whole demonstration + EOS, nothing generated. The
  reward is computed on prefix + continuation. The rows are drawn by the ``hpt_prefix_agent`` agent
  loop (:mod:`verl_ext.hpt.staging.prefix_agent_loop`) and carry ``hpt_prefix_mask`` (1 on prefix tokens).

Rows never drawn stay in ``fit``'s batch as *placeholders* (verl's ``fit`` unions B·n generated rows
with B·n prompt rows): copies of a drawn row of the same question, flagged ``hpt_sampled = False``.
The trainer drops them before the gate (:func:`drop_placeholders`), so they reach neither the gate's
pass rate nor any loss. A question's pass rate is then over the rows actually drawn.

TRAPO's stages (arXiv 2512.17636)::

    hpt.stages:
      - {rollouts: 4}
      - {rollouts: 2, max_correct: 1, action: continue_with_prefix, prefix: 0.25}
      - {rollouts: 1, max_correct: 3, action: continue_with_prefix, prefix: 0.5}
      - {rollouts: 1, max_correct: 6, action: continue_with_prefix, prefix: 1.0}

The correct count C includes the prefix rows' own rewards (as TRAPO's trainer counts them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

ACTIONS = ("stop_to_sft", "continue", "continue_with_prefix")
PREFIX_ACTION = "continue_with_prefix"
# Non-tensor keys the staged rollout adds to every generated row (popped by drop_placeholders).
SAMPLED_KEY = "hpt_sampled"  # bool: drawn by the policy (False: a placeholder, never drawn)
STOPPED_KEY = "hpt_stopped"  # bool: the row's question stopped early and goes to SFT
# continue_with_prefix rows: the agent loop that draws them (.prefix_agent_loop), the per-row kwarg with
# the prefix's token ids, and the extra field with the number of prefix tokens at the response's start
PREFIX_AGENT = "hpt_prefix_agent"
PREFIX_IDS_KEY = "hpt_prefix_ids"
PREFIX_LEN_KEY = "hpt_prefix_len"


class StagesConfigError(ValueError):
    """A bad ``hpt.stages`` entry; the message names the dotted key."""


@dataclass(frozen=True)
class Stage:
    """One stage: draw ``rollouts`` rows per question, unless ``action`` applies (C ≤ max_correct)."""

    rollouts: int
    max_correct: Optional[int] = None
    action: str = "continue"
    prefix: Optional[float] = None  # continue_with_prefix: the demonstration fraction in (0, 1]

    def applies(self, correct_so_far: np.ndarray) -> np.ndarray:
        """(Q,) bool: the questions for which this stage's action applies."""
        if self.max_correct is None:
            return np.zeros(np.shape(correct_so_far), dtype=bool)
        return np.asarray(correct_so_far) <= self.max_correct


def _int(value: Any, key: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < lo:
        raise StagesConfigError(f"{key}={value!r} must be an integer >= {lo}")
    return int(value)


def load_stages(node: Optional[Sequence], n: int, path: str = "hpt.stages") -> Optional[tuple[Stage, ...]]:
    """``hpt.stages`` (a list of mappings, or None: one stage of all n rows, i.e. plain HPT) → stages.

    Checks: the stages' rollouts sum to ``n`` (``actor_rollout_ref.rollout.n``); the first stage has
    no condition (nothing has been drawn yet); actions are known.
    """
    if node is None:
        return None
    if isinstance(node, (str, bytes)) or not isinstance(node, Sequence) or not node:
        raise StagesConfigError(f"{path} must be a non-empty list of stages or null, got {node!r}")
    stages = []
    for i, raw in enumerate(node):
        key = f"{path}[{i}]"
        if not hasattr(raw, "keys"):
            raise StagesConfigError(f"{key} must be a mapping with rollouts / max_correct / action, got {raw!r}")
        raw = dict(raw)
        unknown = sorted(set(raw) - {"rollouts", "max_correct", "action", "prefix"})
        if unknown:
            raise StagesConfigError(
                f"{key}: unknown key(s) {unknown}; a stage has rollouts, max_correct, action, prefix")
        if "rollouts" not in raw:
            raise StagesConfigError(f"{key}.rollouts is not set")
        rollouts = _int(raw["rollouts"], f"{key}.rollouts", 1)
        max_correct = raw.get("max_correct")
        action = raw.get("action", "continue")
        if action not in ACTIONS:
            raise StagesConfigError(f"{key}.action={action!r} must be one of {list(ACTIONS)}")
        if max_correct is not None:
            max_correct = _int(max_correct, f"{key}.max_correct", 0)
        if i == 0 and max_correct is not None:
            raise StagesConfigError(f"{key}.max_correct: the first stage has no results to condition on")
        if max_correct is None and action != "continue":
            raise StagesConfigError(f"{key}.action={action!r} needs {key}.max_correct (the condition)")
        prefix = raw.get("prefix")
        if action == PREFIX_ACTION:
            if prefix is None:
                raise StagesConfigError(f"{key}.prefix is not set: action={PREFIX_ACTION!r} needs the "
                                        "demonstration fraction in (0, 1] its rows continue")
            if isinstance(prefix, bool) or not isinstance(prefix, (int, float, np.integer, np.floating)) \
                    or not 0.0 < float(prefix) <= 1.0:
                raise StagesConfigError(f"{key}.prefix={prefix!r} must be a number in (0, 1]")
            prefix = float(prefix)
        elif prefix is not None:
            raise StagesConfigError(f"{key}.prefix={prefix!r} is only read with action={PREFIX_ACTION!r} "
                                    f"(this stage's action is {action!r})")
        stages.append(Stage(rollouts, max_correct, action, prefix))
    total = sum(s.rollouts for s in stages)
    if total != n:
        raise StagesConfigError(
            f"{path}: the stages draw {total} rollouts per question but actor_rollout_ref.rollout.n={n}; "
            "they must be equal (verl's fit expects n rows per question)")
    return tuple(stages)


@dataclass
class StagePlan:
    """What the stages decided for one step's questions (Q questions, n row slots each)."""

    drawn: np.ndarray  # (Q,) int: rows drawn per question
    correct: np.ndarray  # (Q,) int: correct rows among them
    stopped: np.ndarray  # (Q,) bool: stopped early, goes to SFT
    stage_rows: list  # per stage: (Q,) int rows drawn in that stage
    stage_prefix: list = None  # per stage: (Q,) float, the prefix fraction of the question's rows (0: plain)


def run_stages(stages: Sequence[Stage], num_questions: int, draw) -> StagePlan:
    """Drive the stages. ``draw(stage_index, questions, k, prefix)`` draws k rows for each of
    ``questions`` ((m,) int), continuing a demonstration prefix of fraction ``prefix[j]`` ((m,)
    float; 0: a plain rollout) for question j, and returns (m, k) bool: which of them are correct.
    Pure apart from ``draw``."""
    q = num_questions
    correct = np.zeros(q, dtype=np.int64)
    drawn = np.zeros(q, dtype=np.int64)
    stopped = np.zeros(q, dtype=bool)
    stage_rows, stage_prefix = [], []
    for s, stage in enumerate(stages):
        applies = stage.applies(correct) & ~stopped
        if stage.action == "stop_to_sft":
            stopped |= applies
        todo = np.flatnonzero(~stopped)
        rows = np.zeros(q, dtype=np.int64)
        prefix = np.where(applies, stage.prefix, 0.0) if stage.action == PREFIX_ACTION else np.zeros(q)
        if todo.size:
            ok = np.asarray(draw(s, todo, stage.rollouts, prefix[todo]), dtype=bool)  # (m, k)
            if ok.shape != (todo.size, stage.rollouts):
                raise RuntimeError(f"stage {s}: draw returned shape {ok.shape}, expected {(todo.size, stage.rollouts)}")
            correct[todo] += ok.sum(axis=1)
            drawn[todo] += stage.rollouts
            rows[todo] = stage.rollouts
        stage_rows.append(rows)
        stage_prefix.append(np.where(rows > 0, prefix, 0.0))
    return StagePlan(drawn=drawn, correct=correct, stopped=stopped, stage_rows=stage_rows,
                     stage_prefix=stage_prefix)
