"""HPT's run state: what one run has counted so far, saved with every checkpoint.

One typed home for the cumulative counters and the per-step gate record that the trainer's hooks
update (:mod:`verl_ext.hpt.step` after the gate and merge, the update hook after the optimizer
steps), that checkpoints carry (``global_step_<n>/hpt_state.json``, written before verl's tracker
file so a checkpoint the tracker names always has it) and that ``hpt_summary.json`` reports.

The file is the dataclass's fields as a JSON object. A file of an older run may lack fields (they
start from zero) and a field this version does not know is an error naming the file and the field
(a run never silently drops state it cannot place).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

STATE_FILE = "hpt_state.json"
SUMMARY_FILE = "hpt_summary.json"


@dataclass
class HPTState:
    # the gate (per question and per step)
    questions: int = 0
    gated: int = 0  # questions with demonstration rows (β > 0)
    steps: int = 0
    demo_truncated: int = 0
    demo_missing: int = 0  # gated questions without a usable demonstration (trained with RL)
    dropped_all_correct: int = 0  # DYPO: all-correct questions left out (hpt.gate.drop_all_correct)
    stopped_to_sft: int = 0  # staged generation: questions stopped early and sent to SFT
    # the optimizer (the worker's step guard)
    skipped_steps: int = 0  # non-finite loss or gradient
    skipped_steps_grad_norm: int = 0  # pre-clip norm above hpt.skip_grad_norm_above
    consecutive_skips: int = 0
    fp16_overflows: int = 0
    # the grader
    reward_timeouts: int = 0
    reward_grader_errors: int = 0
    # generation: tokens generated, wasted on questions trained with SFT only, saved by stopping early
    gen_tokens: float = 0.0
    gen_tokens_wasted: float = 0.0
    gen_tokens_saved_est: float = 0.0
    gen_rows_skipped: float = 0.0
    # per step (str(step) -> ...): the dataset ids of its questions and the gate's decisions for them
    batch_indices: dict = field(default_factory=dict)
    gate_decisions: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ updates
    def add(self, name: str, value) -> float:
        """Add ``value`` to the counter ``name`` and return its new total."""
        total = getattr(self, name) + value
        setattr(self, name, total)
        return total

    def record_step(self, global_step: int, decision, demos, merge_stats) -> None:
        """Count one gate decision (``verl_ext.hpt.step.GateDecision``) and keep, per step, the
        dataset ids of its questions and the gate's decisions for them (number of correct rollouts,
        routed to SFT or not): the data order and the gating are auditable and comparable across resumes."""
        self.questions += merge_stats.num_questions
        self.gated += merge_stats.num_gated
        self.steps += 1
        self.demo_truncated += demos.truncated
        self.demo_missing += len(demos.missing)
        self.dropped_all_correct += decision.dropped_all_correct or 0
        self.stopped_to_sft += decision.stopped_to_sft or 0
        step = str(global_step)
        qids = decision.question_ids
        self.batch_indices[step] = qids
        self.gate_decisions[step] = {
            "correct": [int(c) for c in decision.stats.correct],
            "sft": [int(b > 0) for b in decision.beta],
            "demo_missing": [qids[q] for q in demos.missing],
        }

    def add_skips(self, nonfinite, grad_norm, overflow) -> None:
        """Count the optimizer steps of one update the worker's guard skipped (one bool per step in
        each array). Both kinds of skip count towards the consecutive run: a non-finite loss or
        gradient, and a pre-clip norm above ``hpt.skip_grad_norm_above`` (a run in which every step
        exceeds it trains nothing). An fp16 overflow (the GradScaler skipping while its scale
        calibrates) neither counts nor resets; any other step resets it."""
        for i in range(max(len(nonfinite), len(grad_norm), len(overflow))):
            if (i < len(nonfinite) and nonfinite[i]) or (i < len(grad_norm) and grad_norm[i]):
                self.consecutive_skips += 1
            elif not (i < len(overflow) and overflow[i]):
                self.consecutive_skips = 0  # a real update happened
        self.skipped_steps += int(sum(bool(x) for x in nonfinite))
        self.skipped_steps_grad_norm += int(sum(bool(x) for x in grad_norm))
        self.fp16_overflows += int(sum(bool(x) for x in overflow))

    # ------------------------------------------------------------------ checkpoint I/O
    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "state") -> "HPTState":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown HPT state field(s) {unknown} (written by another hpt-verl version?); "
                             f"known fields: {sorted(known)}")
        return cls(**data)

    def save(self, folder: str) -> str:
        """Write ``folder/hpt_state.json`` atomically (a temporary file, then a rename)."""
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, STATE_FILE)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.as_dict(), f)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder: str) -> Optional["HPTState"]:
        """The state saved in ``folder`` (a ``global_step_<n>`` checkpoint), or None without a file."""
        path = os.path.join(folder, STATE_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return cls.from_dict(json.load(f), source=path)

    # ------------------------------------------------------------------ the run summary
    def summary(self, last_step: int, stopped: Optional[str], data: Optional[dict],
                max_consecutive_skips: Optional[int]) -> dict[str, Any]:
        """``hpt_summary.json``: what the run did, for people and for scripts reading results."""
        return {
            "last_step": last_step,
            "stopped": stopped,
            "data": data,
            "gate": {"questions": self.questions, "gated": self.gated, "steps": self.steps,
                     "demo_truncated": self.demo_truncated, "demo_missing": self.demo_missing},
            "optimizer": {"skipped_steps": self.skipped_steps, "skipped_steps_grad_norm": self.skipped_steps_grad_norm,
                          "consecutive_skips": self.consecutive_skips, "max_consecutive_skips": max_consecutive_skips},
            "reward": {"timeouts": self.reward_timeouts, "grader_errors": self.reward_grader_errors},
            "generation": {"tokens": self.gen_tokens, "tokens_wasted": self.gen_tokens_wasted,
                           "tokens_saved_est": self.gen_tokens_saved_est, "rows_skipped": self.gen_rows_skipped,
                           "stopped_to_sft": self.stopped_to_sft, "dropped_all_correct": self.dropped_all_correct},
        }


def write_summary(summary: dict, folder: str) -> Optional[str]:
    """Write ``folder/hpt_summary.json``; a failure is returned as None (logged by the caller), so
    the summary never masks the run's own outcome."""
    try:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, SUMMARY_FILE)
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
        return path
    except OSError:
        return None
