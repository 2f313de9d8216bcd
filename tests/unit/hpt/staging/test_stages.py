"""Staged generation (issue 16): stage decisions, placeholders, accounting. Crafted batches; the
real rollout (verl's agent loop with the hf rollout) is exercised in tests/e2e/test_staged.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from verl import DataProto

from verl_ext.hpt.staging.manager import StagedRolloutManager, question_rows
from verl_ext.hpt.metrics import generation_accounting
from verl_ext.hpt.step import drop_placeholders
from verl_ext.hpt.staging.stages import (
    SAMPLED_KEY,
    STOPPED_KEY,
    Stage,
    StagesConfigError,
    load_stages,
    run_stages,
)

HPT_STAGED = [{"rollouts": 4}, {"rollouts": 4, "max_correct": 0, "action": "stop_to_sft"}]


# ------------------------------------------------------------------ config


def test_load_stages_checks_each_key():
    stages = load_stages(HPT_STAGED, n=8)
    assert stages == (Stage(4), Stage(4, 0, "stop_to_sft"))
    assert load_stages(None, n=8) is None
    with pytest.raises(StagesConfigError, match=r"rollout.n=6"):
        load_stages(HPT_STAGED, n=6)
    with pytest.raises(StagesConfigError, match=r"hpt\.stages\[0\]\.max_correct"):
        load_stages([{"rollouts": 4, "max_correct": 0, "action": "stop_to_sft"}, {"rollouts": 4}], n=8)
    with pytest.raises(StagesConfigError, match=r"hpt\.stages\[1\]\.action='halt'"):
        load_stages([{"rollouts": 4}, {"rollouts": 4, "max_correct": 0, "action": "halt"}], n=8)
    with pytest.raises(StagesConfigError, match=r"hpt\.stages\[1\]\.prefix is not set"):
        load_stages([{"rollouts": 4}, {"rollouts": 4, "max_correct": 1, "action": "continue_with_prefix"}], n=8)
    with pytest.raises(StagesConfigError, match=r"hpt\.stages\[1\]\.action='stop_to_sft' needs"):
        load_stages([{"rollouts": 4}, {"rollouts": 4, "action": "stop_to_sft"}], n=8)
    with pytest.raises(StagesConfigError, match=r"hpt\.stages\[1\]\.rollouts=0"):
        load_stages([{"rollouts": 8}, {"rollouts": 0}], n=8)
    with pytest.raises(StagesConfigError, match=r"hpt\.stages\[0\]\.prefix=0.5 is only read with"):
        load_stages([{"rollouts": 8, "prefix": 0.5}], n=8)
    with pytest.raises(StagesConfigError, match=r"unknown key"):
        load_stages([{"rollouts": 8, "prefx": 0.5}], n=8)


# ------------------------------------------------------------------ decisions at and around the threshold


@pytest.mark.parametrize("threshold", [0, 1, 2])
def test_stop_decision_at_and_around_the_threshold(threshold):
    stages = load_stages([{"rollouts": 4}, {"rollouts": 4, "max_correct": threshold, "action": "stop_to_sft"}], n=8)
    first_stage_correct = np.array([0, 1, 2, 3, 4])  # questions 0..4
    calls = []

    def draw(s, questions, k, prefix):
        calls.append((s, questions.tolist(), k))
        if s == 0:
            return np.arange(k)[None, :] < first_stage_correct[questions][:, None]
        return np.ones((len(questions), k), dtype=bool)

    plan = run_stages(stages, 5, draw)
    stop = first_stage_correct <= threshold
    assert plan.stopped.tolist() == stop.tolist()
    assert calls[0] == (0, [0, 1, 2, 3, 4], 4)
    assert calls[1] == (1, np.flatnonzero(~stop).tolist(), 4)
    assert plan.drawn.tolist() == np.where(stop, 4, 8).tolist()
    assert plan.correct.tolist() == np.where(stop, first_stage_correct, first_stage_correct + 4).tolist()


def test_stopped_questions_stay_stopped_and_continue_draws():
    stages = load_stages([{"rollouts": 2}, {"rollouts": 2, "max_correct": 0, "action": "stop_to_sft"},
                          {"rollouts": 2, "max_correct": 1, "action": "continue"},
                          {"rollouts": 2, "max_correct": 2, "action": "stop_to_sft"}], n=8)
    # question 0: never correct (stops after stage 1); 1: one correct per stage; 2: all correct
    per_stage = {0: 0, 1: 1, 2: 2}

    def draw(s, questions, k, prefix):
        return np.array([[j < per_stage[int(q)] for j in range(k)] for q in questions])

    plan = run_stages(stages, 3, draw)
    # q1 after three stages has C = 3 > 2: continues; q0 stopped at stage 2 and never drew again
    assert plan.stopped.tolist() == [True, False, False]
    assert [r.tolist() for r in plan.stage_rows] == [[2, 2, 2], [0, 2, 2], [0, 2, 2], [0, 2, 2]]


# ------------------------------------------------------------------ the manager on a crafted rollout


class CraftedRollout:
    """Answers generate_sequences like verl's agent loop (prompts, responses, response_mask, rm_scores):
    row r's response is `length(r)` tokens of its priority; its score is `correct(uid, priority)`."""

    def __init__(self, correct, workers=1):
        self.correct = correct
        self.calls = []
        self.agent_loop_workers = [object()] * workers

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        nt = prompts.non_tensor_batch
        self.calls.append(len(prompts))
        assert len(prompts) % len(self.agent_loop_workers) == 0
        b, width = len(prompts), 6
        prio = torch.as_tensor(nt["priority"].astype(np.int64))
        lengths = 1 + prio % width
        responses = prio[:, None].repeat(1, width)
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        score = torch.tensor([float(self.correct(u, int(p))) for u, p in zip(nt["uid"], nt["priority"])])
        rm = torch.zeros(b, width)
        rm[torch.arange(b), lengths - 1] = score
        return DataProto.from_dict(
            tensors={"prompts": prompts.batch["input_ids"], "responses": responses, "response_mask": mask,
                     "rm_scores": rm},
            non_tensors={"uid": nt["uid"], "priority": nt["priority"]},
            meta_info={"timing": {"gen": 1.0}})


def prompt_batch(questions: int, n: int) -> DataProto:
    uids = np.array([f"q{q}" for q in range(questions) for _ in range(n)], dtype=object)
    ids = torch.arange(questions).repeat_interleave(n)[:, None].repeat(1, 3)
    return DataProto.from_dict(tensors={"input_ids": ids}, non_tensors={"uid": uids})


@pytest.mark.parametrize("workers", [1, 3])
def test_manager_returns_every_slot_in_order_with_placeholders(workers):
    n = 8
    # q0: no correct rollout (stops); q1: slot 0 correct; q2: all correct
    correct = {"q0": lambda p: False, "q1": lambda p: p % n == 0, "q2": lambda p: True}
    inner = CraftedRollout(lambda u, p: correct[u](p), workers=workers)
    mgr = StagedRolloutManager(inner, load_stages(HPT_STAGED, n=n), n=n, correct_threshold=1.0)
    out = mgr.generate_sequences(prompt_batch(3, n))
    assert len(out) == 3 * n and len(inner.calls) == 2
    assert sum(inner.calls) - mgr.last_padding_rows == 3 * 4 + 2 * 4  # q0 drew 4, q1 and q2 drew 8
    sampled = out.non_tensor_batch[SAMPLED_KEY]
    assert sampled.tolist() == [True] * 4 + [False] * 4 + [True] * 16
    assert out.non_tensor_batch[STOPPED_KEY].tolist() == [True] * 8 + [False] * 16
    # every drawn row sits in its own slot (its priority is its position); placeholders score 0
    prio = out.non_tensor_batch["priority"]
    assert prio[sampled].tolist() == np.flatnonzero(sampled).tolist()
    assert out.batch["rm_scores"][~torch.as_tensor(sampled)].abs().sum() == 0
    assert out.non_tensor_batch["uid"].tolist() == prompt_batch(3, n).non_tensor_batch["uid"].tolist()
    assert out.meta_info["timing"]["gen"] == 2.0

    # the trainer's view: placeholders gone, q0 named as stopped
    kept, stopped = drop_placeholders(out)
    assert len(kept) == 20 and stopped.tolist() == ["q0"]
    assert SAMPLED_KEY not in kept.non_tensor_batch and SAMPLED_KEY in out.non_tensor_batch


def test_padding_rows_get_priorities_of_their_own():
    """verl's padding repeats a request's first rows; their priorities (the request id under
    rollout.full_determinism) are replaced by fresh ones past every real row's, so no two requests
    of a step share one. 3 questions x 4 rows on 5 workers: 12 -> 15 rows, 5 of stage 2's rows."""
    n = 4
    inner = CraftedRollout(lambda u, p: u == "q1", workers=5)
    sent = []
    orig = inner.generate_sequences
    inner.generate_sequences = lambda req: (sent.append(req.non_tensor_batch["priority"].tolist()), orig(req))[1]
    stages = [{"rollouts": 2}, {"rollouts": 2, "max_correct": 0, "action": "stop_to_sft"}]
    mgr = StagedRolloutManager(inner, load_stages(stages, n=n), n=n, correct_threshold=1.0)
    out = mgr.generate_sequences(prompt_batch(3, n))
    assert mgr.last_padding_rows == 4 + 3  # stage 1: 6 rows -> 10; stage 2 (q1 only): 2 rows -> 5
    every = [p for call in sent for p in call]
    assert len(every) == len(set(every)) == 6 + 4 + 2 + 3
    assert sorted(p for p in every if p >= 12) == list(range(12, 19))
    assert out.non_tensor_batch["priority"][out.non_tensor_batch[SAMPLED_KEY]].tolist() == [0, 1, 4, 5, 6, 7, 8, 9]


def test_manager_passes_validation_through_and_plain_batches_are_untouched():
    inner = CraftedRollout(lambda u, p: True)
    mgr = StagedRolloutManager(inner, load_stages(HPT_STAGED, n=8), n=8, correct_threshold=1.0)
    val = prompt_batch(2, 1)
    val.meta_info["validate"] = True
    val.non_tensor_batch["priority"] = np.arange(2)
    out = mgr.generate_sequences(val)
    assert inner.calls == [2] and SAMPLED_KEY not in out.non_tensor_batch
    same, stopped = drop_placeholders(out)
    assert same is out and stopped is None


def test_question_rows_refuses_a_wrong_group_size():
    with pytest.raises(RuntimeError, match="uid 'a' has 3 rows"):
        question_rows(np.array(["a", "a", "a", "b", "b"], dtype=object), 2)


# ------------------------------------------------------------------ accounting


def test_generation_accounting():
    tokens = np.array([10, 20, 30, 40, 5, 5, 7, 9])
    sampled = np.array([1, 1, 0, 0, 1, 1, 1, 1], dtype=bool)
    question = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    acc = generation_accounting(tokens, sampled, question, trained_rl=np.array([False, True]))
    assert acc == {"tokens": 56.0, "rows": 6.0, "rows_skipped": 2.0, "tokens_wasted": 30.0,
                   "tokens_saved_est": 30.0}  # 2 placeholders at q0's mean drawn length 15
    plain = generation_accounting(tokens, np.ones(8, bool), question, trained_rl=np.array([True, True]))
    assert plain["tokens_wasted"] == 0 and plain["rows_skipped"] == 0 and plain["tokens"] == 126
