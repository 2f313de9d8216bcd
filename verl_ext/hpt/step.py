"""One HPT step on the batch verl's ``fit`` hands the ``_balance_batch`` hook, read top to bottom.

The batch holds B·n rollouts (n per question, one ``uid`` per question) with each rollout's
verified score in ``rm_scores``. :meth:`HPTStep.__call__` turns it into the batch verl trains on:

0. rows never drawn (staged generation's placeholders) leave (:func:`drop_placeholders`); verl's
   data metrics of the rollouts the policy sampled are kept for ``fit``'s log
   (:func:`verl_ext.hpt.metrics.scored_data_metrics`);
1. gate (:mod:`verl_ext.hpt.gate`): each question's pass rate over its rollouts → weights
   (α_q, β_q); a question staged generation stopped early goes to SFT; DYPO's all-correct questions
   may be dropped;
2. demonstrations (:mod:`verl_ext.hpt.demonstrations`): a gated question without a usable one is
   trained with RL instead (α = 1, β = 0); the others (of a list, those ``hpt.demo_choice`` picks)
   are encoded after their prompt and scored with the run's reward;
3. merge (:mod:`verl_ext.hpt.merge`): kept rollouts + demonstration rows, each flagged with its
   ``RowKind`` and weight, as a new batch (the input batch is only read);
4. record (:mod:`verl_ext.hpt.metrics`, :class:`verl_ext.hpt.state.HPTState`): this step's ``hpt/*``
   metrics and the run's cumulative state.

Pure over the batch apart from the state it is given to update: no Ray, no workers, no trainer.
Padding to whole mini-batches and verl's balancing stay in the hook (they depend on the workers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
from verl import DataProto

from verl_ext.data.demonstration_field import question_id
from verl_ext.hpt.config import HPTConfig
from verl_ext.hpt.demo_scorer import DemoScorer
from verl_ext.hpt.demonstrations import (
    GatedDemonstrations,
    encode_demonstrations,
    per_question,
    pick_demonstrations,
    prompt_token_ids,
    route_to_rl,
    usable_demonstrations,
)
from verl_ext.hpt.gate import QuestionStats, gate_by_pass_rate, question_stats, route_stopped
from verl_ext.hpt.merge import merge_demonstrations
from verl_ext.hpt.metrics import (
    TRAINED_PREFIX,
    generation_metrics,
    reward_flag_metrics,
    scored_data_metrics,
    step_metrics,
)
from verl_ext.hpt.staging.stages import SAMPLED_KEY, STOPPED_KEY
from verl_ext.hpt.state import HPTState

logger = logging.getLogger(__name__)


@dataclass
class GateDecision:
    """Phase 1's answer, per question q of the step (in order of first appearance)."""

    stats: QuestionStats
    question_ids: list  # dataset ids (extra_info.index), as logged
    alpha: np.ndarray  # (Q,) weight of q's rollouts in the RL arm
    beta: np.ndarray  # (Q,) weight of q's demonstration rows in the SFT arm
    dropped_all_correct: Optional[int] = None  # hpt.gate.drop_all_correct (DYPO) only
    kept_all_correct: int = 0  # all-correct questions kept because nothing else was left
    stopped_to_sft: Optional[int] = None  # staged generation only


@dataclass
class StepRecord:
    """What one step produced: the batch verl trains on (unpadded) and the step's metrics."""

    merged: DataProto
    metrics: dict
    rollout_data_metrics: dict  # verl's data metrics of the sampled rollouts (critic/score/*, ...)
    decision: GateDecision
    demos: GatedDemonstrations


def drop_placeholders(batch: DataProto) -> tuple[DataProto, Optional[np.ndarray]]:
    """``fit``'s batch without the rows never drawn, and the uids of questions stopped early.

    Returns (batch, stopped_uids); a batch from a plain (unstaged) rollout is returned as it is with
    ``None``. The staged keys are removed from the returned batch, which is a new object: the
    caller's batch is not changed.
    """
    nt = batch.non_tensor_batch
    if SAMPLED_KEY not in nt:
        return batch, None
    sampled = np.asarray(nt[SAMPLED_KEY], dtype=bool)
    stopped = np.asarray(nt[STOPPED_KEY], dtype=bool)
    stopped_uids = np.unique(np.asarray(nt["uid"], dtype=object)[stopped]) if stopped.any() else np.array([], object)
    kept = batch.select_idxs(np.flatnonzero(sampled))
    for key in (SAMPLED_KEY, STOPPED_KEY):
        kept.non_tensor_batch.pop(key, None)
    return kept, stopped_uids


class HPTStep:
    """HPT's step with its settings: ``step(batch, state, global_step)`` → :class:`StepRecord`."""

    def __init__(self, hpt: HPTConfig, tokenizer, response_length: int, demo_scorer: DemoScorer,
                 demo_seed: int, pad_token_id: int, use_kl_in_reward: bool = False):
        self.hpt = hpt
        self.gate_config = hpt.gate
        self.tokenizer = tokenizer
        self.response_length = int(response_length)
        self.demo_scorer = demo_scorer
        self.demo_seed = int(demo_seed)
        self.pad_token_id = int(pad_token_id)
        self.use_kl_in_reward = bool(use_kl_in_reward)

    def __call__(self, batch: DataProto, state: HPTState, global_step: int,
                 staged_padding_rows: Optional[int] = None) -> StepRecord:
        metrics = reward_flag_metrics(batch, state)
        drawn, stopped_uids = drop_placeholders(batch)  # (D rows: the rollouts drawn)
        rollout_data = scored_data_metrics(drawn, with_rewards=not self.use_kl_in_reward)
        decision = self.gate(drawn, stopped_uids)
        demos = self.demonstrations(drawn, decision, global_step)
        merged, merge_stats = merge_demonstrations(
            drawn, decision.stats, decision.alpha, decision.beta, demos.ids, self.pad_token_id,
            placement=self.gate_config.placement, demo_scores=demos.scores, demo_extra=demos.extra,
            demo_arms=self.gate_config.demo_arms)
        state.record_step(global_step, decision, demos, merge_stats)
        metrics.update(step_metrics(merged, decision, demos, state))
        metrics.update(generation_metrics(batch, decision, state, generated=self.gate_config.needs_rollouts,
                                          staged_padding_rows=staged_padding_rows))
        metrics.update({TRAINED_PREFIX + k: v for k, v in scored_data_metrics(merged).items()})
        return StepRecord(merged=merged, metrics=metrics, rollout_data_metrics=rollout_data, decision=decision,
                          demos=demos)

    # ------------------------------------------------------------------ 1. gate
    def gate(self, batch: DataProto, stopped_uids: Optional[np.ndarray]) -> GateDecision:
        """Per-question statistics of the drawn rollouts' scores and the gate's (α, β). Questions
        that staged generation stopped early (``stop_to_sft``) go to SFT (``route_stopped``)."""
        cfg = self.gate_config
        scores = batch.batch["rm_scores"].sum(-1).float().numpy()  # (D,)
        stats = question_stats(batch.non_tensor_batch["uid"], scores, cfg.correct_threshold)
        infos = batch.non_tensor_batch.get("extra_info")
        question_ids = [question_id(infos[int(r)] if infos is not None else None) for r in stats.first_row]
        alpha, beta = gate_by_pass_rate(stats.correct, stats.n, cfg)
        decision = GateDecision(stats=stats, question_ids=question_ids, alpha=alpha, beta=beta)
        if cfg.drop_all_correct:
            dropped = (stats.correct >= stats.n) & (alpha == 0) & (beta == 0)
            if dropped.all():
                # Nothing left to train: keep them this step (all-correct groups have advantage 0 under
                # GRPO, so only the entropy bonus acts) instead of failing after generation.
                decision.alpha = np.where(dropped, 1.0, alpha)
                decision.kept_all_correct = int(dropped.sum())
                dropped[:] = False
            decision.dropped_all_correct = int(dropped.sum())
        if stopped_uids is not None:
            stopped = np.isin(stats.uids, stopped_uids)
            decision.alpha, decision.beta = route_stopped(decision.alpha, decision.beta, stopped, cfg)
            decision.stopped_to_sft = int(stopped.sum())
        return decision

    # ------------------------------------------------------------------ 2. demonstrations
    def demonstrations(self, batch: DataProto, decision: GateDecision, global_step: int) -> GatedDemonstrations:
        """The gated questions' demonstrations, encoded after their prompts and scored. A gated
        question without a usable one (missing, empty, not a string) is routed to RL (α = 1, β = 0,
        in ``decision``). Of a list of them, ``hpt.demo_choice`` picks which train."""
        stats, qids = decision.stats, decision.question_ids
        gated = np.flatnonzero(decision.beta > 0)
        texts = usable_demonstrations(batch.non_tensor_batch.get("extra_info"), stats.first_row[gated],
                                      self.hpt.demo_field)
        demos = GatedDemonstrations.empty(len(stats.uids))
        demos.missing = [int(q) for q, text in zip(gated, texts) if text is None]
        if demos.missing:
            decision.alpha, decision.beta = route_to_rl(decision.alpha, decision.beta, demos.missing)
            logger.warning("HPT step %s: %d gated question(s) have no usable extra_info[%r] demonstration "
                           "(dataset indices %s); they are trained with RL instead", global_step,
                           len(demos.missing), self.hpt.demo_field, [qids[q] for q in demos.missing][:10])
        kept = [(int(q), text) for q, text in zip(gated, texts) if text is not None]
        if not kept:
            return demos
        owners, targets = pick_demonstrations(
            [text for _, text in kept], [qids[q] for q, _ in kept], self.hpt.demo_choice, seed=self.demo_seed,
            step=int(global_step), tokenizer=self.tokenizer)
        questions = [kept[o][0] for o in owners]  # the question of each demonstration to build
        rows = stats.first_row[questions]
        # Each demonstration follows its question's templated prompt: a start that the prompt
        # already ends with (a template's "<think>\n" and an R1 demonstration's) is held once.
        ids, demos.truncated = encode_demonstrations(
            self.tokenizer, targets, self.response_length, prompt_ids=prompt_token_ids(batch, rows),
            overlaps=demos.overlaps)
        scored = self.demo_scorer.score(batch, rows, targets)
        scores = [float(s.get("score", 0.0)) for s in scored]
        q = len(stats.uids)
        demos.ids = per_question(questions, ids, q)
        demos.scores = per_question(questions, scores, q, fill=0.0)
        for key in batch.meta_info.get("reward_extra_keys", []) or []:
            demos.extra[key] = per_question(questions, [s.get(key, v) for s, v in zip(scored, scores)], q)
        return demos
