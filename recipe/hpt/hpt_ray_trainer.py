"""RayHPTTrainer: verl's ``RayPPOTrainer`` with HPT's gate and demonstration merge.

One HPT training step rides verl's V0 step (``verl/trainer/ppo/ray_trainer.py::RayPPOTrainer.fit``,
0.9.1) through the hooks below, in the order ``fit`` calls them; everything between them is verl's
unchanged code. "Breaks if" says what to re-check when verl changes.

0. ``_start_profiling``: raises the armed stop (``hpt.max_consecutive_skips``) before the next step.
   Breaks if verl calls it from ``_validate`` too, or no longer first in each step.
1. ``_balance_batch`` (``fit`` calls it only with ``trainer.balance_batch=true``):
   :meth:`RayHPTTrainer._gate_and_merge` (gate → demonstrations → merge → metrics), then inert
   padding rows (:meth:`_row_divisor`), then verl's own balancing of the merged batch. Breaks if verl
   calls it before ``rm_scores`` exist or after ``extract_reward``/old log-probs, not exactly once per
   step, or stops reusing the batch object it passed in.
2. ``_compute_old_log_prob``: demonstration rows' ``rollout_log_probs`` := the actor's (neutral for
   rollout correction); mismatch metrics over sampled rows only. Breaks if verl renames
   ``rollout_log_probs``/``old_log_probs`` or computes its mismatch metrics elsewhere.
3. ``_update_actor``: per-arm token totals per global mini-batch (``annotate_arm_token_counts``),
   DYPO's group-alignment weights from the old log-probs when ``hpt.loss.gal_coef`` is set,
   skipped-step accounting, infinite ratio metrics dropped. Breaks if verl cuts mini-batches
   differently (``make_iterator``, shuffle) or renames the ``actor/*`` skip flags.
4. ``init_workers``: staged generation (``hpt.stages``) wraps verl's rollout manager
   (:class:`verl_ext.hpt.staged_rollout.StagedRolloutManager`); the SFT-only baseline
   (``strategy=always``) gets demonstration "rollouts" and deferred weight pushes. Breaks if verl
   renames ``async_rollout_manager``/``checkpoint_manager`` or their methods.
5. ``_save_checkpoint`` / ``_load_checkpoint``: ``hpt_state.json`` written before verl's tracker
   file, restored after its load. Breaks if verl moves the tracker write or the
   ``global_step_<n>`` folder layout.

Hook 1 is the step itself, read top to bottom in :meth:`RayHPTTrainer._gate_and_merge`:

0. rows never drawn (staged generation's placeholders) leave the batch
   (:func:`verl_ext.hpt.staged_rollout.drop_placeholders`);
1. gate (:mod:`verl_ext.hpt.gate`): each question's pass rate over its rollouts' ``rm_scores``
   → weights (α_q, β_q); a question stopped early goes to SFT (β = 1; α = 0 unless keep_gated_rollouts);
2. demonstrations (:mod:`verl_ext.hpt.demonstrations`): a gated question without a usable one is
   trained with RL instead (α = 1, β = 0; ``hpt/demo_missing``); the others (of a list, those
   ``hpt.demo_choice`` picks) are encoded after their prompt and scored with the run's reward
   (:class:`verl_ext.hpt.demo_scoring.DemoScorer`);
3. merge (:mod:`verl_ext.hpt.merge`): kept rollouts + demonstration rows, each flagged with its
   ``RowKind`` and weight, as a new batch (the input batch is only read);
4. metrics: ``hpt/*`` step metrics and the cumulative ``hpt_state``; the generation accounting
   (``hpt/gen/*``: tokens generated, wasted on questions trained with SFT only, saved by stopping).

``_hpt_balance_batch`` then pads the merged batch and makes the one in-place replacement verl
needs (:func:`_replace_in_place`: ``fit`` keeps using the batch object it passed to the hook).
Chosen over copying ``fit`` (~400 lines to keep in sync, as verl's DAPO recipe does) and over
wrapping the rollout manager (whose output must keep the row count, since ``fit`` unions it with
the n-times repeated prompts). Padding happens once, in hook 1, to whole mini-batches and DP /
micro-batch shares, so the number of optimizer steps per training step is ceil(rows / mini-batch):
as in the release, it shrinks when many questions are gated to a single SFT row.

Reliability (issue 8): the grader's ``timeout``/``grader_error`` reward extras are summed into
``hpt/reward/*``; optimizer steps skipped by the worker's step guard (non-finite loss or
gradient, or a pre-clip norm above ``hpt.skip_grad_norm_above``) are counted
(``hpt/skipped_steps``) and ``hpt.max_consecutive_skips`` of them in a row stop the run from
hook 0 (the failing step's metrics, and its validation on a ``test_freq`` step, are logged
first); the data-validation counts are logged at the first step; ``hpt_summary.json`` (in
``trainer.default_local_dir``) summarises the run when ``fit`` ends, normally or not.

Requires ``trainer.balance_batch=true`` (verl's default): that flag is what makes ``fit`` call
hook 1. Hook 1 needs every rollout's score (``rm_scores``) and raises without it (never plain GRPO
in silence). :func:`unsupported_settings` lists what cannot work; ``main_hpt`` and the constructor
refuse such a config.
"""

from __future__ import annotations

import json
import time
import logging
import os
from typing import Any, Optional

import numpy as np
from verl import DataProto
from verl.trainer.ppo.ray_trainer import RayPPOTrainer

from verl_ext.hpt.config import HPTConfig, choice_seed
from verl_ext.hpt.demo_scoring import DemoScorer
from verl_ext.hpt.gate import gate_by_pass_rate, question_stats, route_stopped
from verl_ext.hpt.demonstrations import (
    GatedDemonstrations,
    encode_demonstrations,
    per_question,
    pick_demonstrations,
    prompt_token_ids,
    route_to_rl,
    usable_demonstrations,
)
from verl_ext.hpt.merge import merge_demonstrations, pad_with_zero_weight_rows
from verl_ext.hpt.staged_rollout import drop_placeholders
from verl_ext.hpt.stages import SAMPLED_KEY, generation_accounting
from verl_ext.hpt.metrics import TRAINED_PREFIX, hpt_step_metrics, scored_data_metrics
from verl_ext.loss.batch_keys import HPT_PREFIX_MASK, HPT_ROW_KIND, RowKind
from verl_ext.verl_patches import (ROLLOUT_DATA_METRICS, SKIP_GRAD_NORM, SKIP_NONFINITE, SKIP_OVERFLOW,
                                   install_rollout_data_metrics)

logger = logging.getLogger(__name__)

HPT_STATE_FILE = "hpt_state.json"
SUMMARY_FILE = "hpt_summary.json"
# Reward extra-info keys of verl_ext.reward (1.0 per answer) summed into hpt/reward/<name>.
REWARD_COUNT_KEYS = {"timeout": "timeouts", "grader_error": "grader_errors"}
# Per-optimizer-step flags reported by the worker's step guard (verl prefixes actor/).
SKIP_NONFINITE_KEY = f"actor/{SKIP_NONFINITE}"
SKIP_GRAD_NORM_KEY = f"actor/{SKIP_GRAD_NORM}"
SKIP_OVERFLOW_KEY = f"actor/{SKIP_OVERFLOW}"


def question_id(extra_info) -> int | str:
    """A question's ``extra_info.index`` as logged in ``hpt_state``: an int, or a string id such as
    ``"q-0"`` (the data contract allows both, verl's loader passes them through); -1 when absent."""
    index = (extra_info or {}).get("index", -1) if isinstance(extra_info, dict) else -1
    if isinstance(index, (bool, np.bool_)) or index is None:
        return -1
    if isinstance(index, (int, np.integer)):
        return int(index)
    if isinstance(index, (float, np.floating)) and float(index).is_integer():
        return int(index)  # parquet turns an int column with nulls into floats
    return str(index)


# Advantage estimators computed from each row's outcome score and uid group alone (verl's
# core_algos): they work unchanged on the merged batch (demonstration rows, inert padding rows).
SUPPORTED_ADV_ESTIMATORS = frozenset({
    "grpo", "grpo_vectorized", "rloo", "rloo_vectorized", "reinforce_plus_plus", "reinforce_plus_plus_baseline"})


def unsupported_settings(config) -> list[str]:
    """verl settings this trainer cannot honour, each with its reason (empty list: none).

    Checked by ``main_hpt`` before Ray starts and again by the trainer's constructor.
    """
    problems = []
    if not config.trainer.get("balance_batch", True):
        problems.append(
            "trainer.balance_batch=false: RayHPTTrainer gates and merges inside verl's _balance_batch hook, "
            "which RayPPOTrainer.fit only calls when trainer.balance_batch=true")
    rollout_corr = (config.get("algorithm", None) or {}).get("rollout_correction", None) or {}
    if rollout_corr.get("bypass_mode", False):
        problems.append(
            "algorithm.rollout_correction.bypass_mode=true: bypass mode applies its correction inside verl's own "
            "policy loss (loss_mode=bypass_mode), which the HPT loss replaces, and demonstration rows have no "
            "rollout log-probs to stand in for old log-probs. Use decoupled mode (bypass_mode=false, verl's "
            "default): the HPT loss applies verl's rollout_is_weights to rollout rows.")
    algorithm = config.get("algorithm", None) or {}
    estimator = str(algorithm.get("adv_estimator", "grpo"))
    if estimator not in SUPPORTED_ADV_ESTIMATORS:
        problems.append(
            f"algorithm.adv_estimator={estimator}: RayHPTTrainer supports {sorted(SUPPORTED_ADV_ESTIMATORS)}, the "
            "estimators computed from each row's outcome score and its uid group alone. "
            + ("GAE needs a critic, whose values and update would also run on demonstration rows. "
               if estimator == "gae" else
               "Others need inputs the merged batch does not provide for demonstration rows (a second "
               "generation, per-token baselines, several reward heads). "))
    critic = config.get("critic", None) or {}
    if critic.get("enable", None):
        problems.append(
            "critic.enable=true: RayHPTTrainer trains no value model; demonstration rows have no values, and "
            "the HPT loss's rollout arm takes verl's outcome advantages (set critic.enable=null or false)")
    distillation = config.get("distillation", None) or {}
    if distillation.get("enabled", False):
        problems.append(
            "distillation.enabled=true: verl adds its distillation loss inside its own actor loss_fn, which the "
            "HPT worker replaces with verl_ext.loss.actor_loss.hpt_actor_loss (the teacher term would be "
            "dropped without a word)")
    actor = (config.get("actor_rollout_ref", None) or {}).get("actor", None) or {}
    loss_mode = str((actor.get("policy_loss", None) or {}).get("loss_mode", "vanilla"))
    if loss_mode != "vanilla":
        problems.append(
            f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode}: the HPT worker replaces verl's whole "
            "actor loss (hpt_actor_loss, configured by hpt.loss), so a verl policy loss would be ignored. "
            "Choose the HPT loss with hpt/loss=<preset> (the upge* loss modes are for plain verl runs).")
    if actor.get("use_prefix_grouper", False):
        problems.append(
            "actor_rollout_ref.actor.use_prefix_grouper=true: verl's prefix grouping balances whole uid groups and "
            "needs their count to be a multiple of the DP size, but HPT's merge changes the groups every step "
            "(a demonstration row under its own uid, padding rows with one uid each)")
    if actor.get("shuffle", False):
        problems.append(
            "actor_rollout_ref.actor.shuffle=true: the HPT loss normalises each arm by its token total per "
            "mini-batch, computed before the update (verl_ext.loss.batch_keys.annotate_arm_token_counts); "
            "shuffling regroups rows into other mini-batches afterwards. Use shuffle=false.")
    reward_model = (config.get("reward", None) or {}).get("reward_model", None) or {}
    if reward_model.get("enable", False) and not reward_model.get("enable_resource_pool", False):
        problems.append(
            "reward.reward_model.enable=true with reward.reward_model.enable_resource_pool=false: a colocated "
            "reward model scores the batch after verl's _balance_batch hook (RayPPOTrainer.fit's 'reward' "
            "phase), but HPT's gate needs every rollout's score (rm_scores) in that hook. Give the reward model "
            "its own resource pool (reward.reward_model.enable_resource_pool=true), which makes verl score "
            "each rollout inside the agent loop, before the hook.")
    return problems


def settings_warnings(config) -> list[str]:
    """Settings HPT runs as asked but that the user should know about (logged by ``main_hpt``)."""
    from verl_ext.loss.config import load_upge_config, split_dependence_warning

    hpt = config.get("hpt", None) or {}
    if hpt.get("loss", None) is None:
        return []
    actor = config.actor_rollout_ref.actor
    warning = split_dependence_warning(load_upge_config(hpt.loss), use_dynamic_bsz=bool(actor.get("use_dynamic_bsz")),
                                       entropy_coeff=float(actor.get("entropy_coeff", 0.0) or 0.0))
    return [warning] if warning else []


class HPTStopError(RuntimeError):
    """The run cannot usefully continue (e.g. too many non-finite steps in a row)."""


class RayHPTTrainer(RayPPOTrainer):
    def __init__(self, *args, data_report=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_report = data_report  # verl_ext.hpt.row_checks.DataReport from the TaskRunner
        self._data_metrics_logged = False
        self._stop_reason: Optional[str] = None
        problems = unsupported_settings(self.config)
        if problems:
            raise ValueError("HPT cannot run this configuration:\n- " + "\n- ".join(problems))
        install_rollout_data_metrics()  # fit's critic/score/*, response_length/*: the rollouts' (hook 1)
        hpt = HPTConfig.from_config(self.config)
        self.gate_config = hpt.gate
        self.demo_field = hpt.demo_field
        self.demo_choice, self.demo_seed = hpt.demo_choice, choice_seed(self.config)  # several demonstrations
        self.max_consecutive_skips = hpt.max_consecutive_skips
        self._demo_scorer = DemoScorer.from_config(self.config)
        self.stages = hpt.stages  # staged generation (None: all n rollouts at once), see init_workers
        self.upge = hpt.loss
        # Cumulative statistics (persisted in checkpoints).
        self.hpt_state: dict[str, Any] = {
            "questions": 0, "gated": 0, "steps": 0, "demo_truncated": 0, "demo_missing": 0,
            "skipped_steps": 0, "skipped_steps_grad_norm": 0, "consecutive_skips": 0,
            "reward_timeouts": 0, "reward_grader_errors": 0,
            "gen_tokens": 0, "gen_tokens_wasted": 0, "gen_tokens_saved_est": 0, "gen_rows_skipped": 0,
            "stopped_to_sft": 0,
            "batch_indices": {}, "gate_decisions": {},
        }

    # ------------------------------------------------------------------ hook 1: gate + merge + pad
    def _balance_batch(self, batch: DataProto, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
        # HPT's bookkeeping (gate, merge, padding and verl's balancing) timed as one phase, so its
        # share of the step (timing_s/step) is measured in the same run (scripts/bench).
        t0 = time.perf_counter()
        out = self._hpt_balance_batch(batch, metrics, logging_prefix, keep_minibatch)
        metrics["timing_s/hpt_bookkeeping"] = time.perf_counter() - t0
        return out

    def _hpt_balance_batch(self, batch: DataProto, metrics, logging_prefix, keep_minibatch):
        if not self._data_metrics_logged and self.data_report is not None:
            metrics.update(self.data_report.metrics())
            self._data_metrics_logged = True
        if HPT_ROW_KIND in batch.batch.keys():
            raise RuntimeError(f"HPT: the batch reached _balance_batch already merged (it holds {HPT_ROW_KIND!r}); "
                               "RayPPOTrainer.fit is expected to call this hook once per step")
        if "rm_scores" not in batch.batch.keys():
            # Never train plain GRPO silently: the gate needs every rollout's verified score here.
            raise RuntimeError(
                "HPT: the batch reached verl's _balance_batch hook without rm_scores, so the gate cannot see "
                "the rollouts' scores. verl fills rm_scores in the agent loop when no reward model is used or "
                "when reward.reward_model.enable_resource_pool=true; a colocated reward model scores later and "
                "is refused at start-up (recipe.hpt.hpt_ray_trainer.unsupported_settings).")
        self._count_reward_flags(batch, metrics)
        merged = self._gate_and_merge(batch, metrics)
        # Pad once, here, to whole mini-batches and whole DP/micro-batch shares, *before* verl's
        # balancing: the inert rows are then placed by the balancer like any other row. Rows
        # appended after it would shift every DP rank's contiguous share and undo the balance.
        merged, n_pad = pad_with_zero_weight_rows(merged, self._row_divisor())
        metrics["hpt/pad_rows"] = n_pad
        # The one in-place change: fit goes on with the object it passed to this hook.
        _replace_in_place(batch, merged)
        self._step_metrics = metrics  # this step's dict: see _compute_old_log_prob
        sync = getattr(self, "checkpoint_manager", None)
        if hasattr(sync, "deferred"):  # SFT-only baseline: DeferredWeightSync
            metrics["hpt/cumulative/weight_pushes"] = sync.pushes
            metrics["hpt/cumulative/weight_pushes_deferred"] = sync.deferred
        return super()._balance_batch(batch, metrics, logging_prefix=logging_prefix, keep_minibatch=keep_minibatch)

    def _gate_and_merge(self, batch: DataProto, metrics: dict) -> DataProto:
        """HPT's step on ``fit``'s batch (rollouts with their scores): gate → demonstrations →
        merge → metrics (see the module docstring). Returns the merged batch; ``batch`` is only
        read. Demonstration rows keep a ``rollout_log_probs`` placeholder (zeros, from the merge):
        the key must stay for every row or verl drops the mismatch metric and rollout correction for
        the whole step; ``_compute_old_log_prob`` overwrites it with the actor's own log-probs."""
        drawn, stopped_uids = drop_placeholders(batch)
        self._record_data_metrics(batch, drawn)
        stats, question_ids, alpha, beta = self._gate(drawn, stopped_uids, metrics)
        demos, alpha, beta = self._demonstrations(drawn, stats, alpha, beta, question_ids)
        merged, mstats = merge_demonstrations(
            drawn, stats, alpha, beta, demos.ids, self._pad_token_id(), placement=self.gate_config.placement,
            demo_scores=demos.scores, demo_extra=demos.extra, demo_arms=self.gate_config.demo_arms)
        self._record_step(metrics, merged, stats, mstats, alpha, beta, demos, question_ids)
        self._record_generation(metrics, batch, stats, alpha)
        # the trained batch's scores and lengths (before padding) under hpt/trained/
        metrics.update({TRAINED_PREFIX + k: v for k, v in scored_data_metrics(merged).items()})
        return merged

    def _record_data_metrics(self, batch: DataProto, drawn: DataProto) -> None:
        """verl's data metrics (``critic/score/*``, ``response_length/*``, ...) of every rollout the
        policy sampled this step, before the gate: carried in ``batch.meta_info`` to ``fit``'s
        ``compute_data_metrics`` (:func:`verl_ext.verl_patches.install_rollout_data_metrics`), which
        would otherwise compute them on the trained batch (verl's ``critic/advantages/*`` and
        ``critic/returns/*`` stay those of the trained rows)."""
        use_kl = bool((self.config.get("algorithm", None) or {}).get("use_kl_in_reward", False))
        batch.meta_info[ROLLOUT_DATA_METRICS] = scored_data_metrics(drawn, with_rewards=not use_kl)

    def _gate(self, batch: DataProto, stopped_uids: Optional[np.ndarray], metrics: dict):
        """Phase 1: per-question statistics of the drawn rollouts' scores and the gate's (α, β).
        Questions that staged generation stopped early (``stop_to_sft``) go to SFT (``route_stopped``)."""
        cfg = self.gate_config
        scores = batch.batch["rm_scores"].sum(-1).float().numpy()
        stats = question_stats(batch.non_tensor_batch["uid"], scores, cfg.correct_threshold)
        infos = batch.non_tensor_batch.get("extra_info")
        question_ids = [question_id(infos[int(r)] if infos is not None else None) for r in stats.first_row]
        alpha, beta = gate_by_pass_rate(stats.correct, stats.n, cfg)
        if cfg.drop_all_correct:
            dropped = (stats.correct >= stats.n) & (alpha == 0) & (beta == 0)
            if dropped.all():
                # Nothing left to train: keep them this step (all-correct groups have advantage 0 under
                # GRPO, so only the entropy bonus acts) instead of failing after generation.
                alpha = np.where(dropped, 1.0, alpha)
                metrics["hpt/dropped_all_correct_kept"] = int(dropped.sum())
                dropped[:] = False
            metrics["hpt/dropped_all_correct"] = int(dropped.sum())
            self.hpt_state["dropped_all_correct"] = self.hpt_state.get("dropped_all_correct", 0) + int(dropped.sum())
        if stopped_uids is not None:
            stopped = np.isin(stats.uids, stopped_uids)
            alpha, beta = route_stopped(alpha, beta, stopped, cfg)
            metrics["hpt/stages/stopped_to_sft"] = int(stopped.sum())
            self.hpt_state["stopped_to_sft"] = self.hpt_state.get("stopped_to_sft", 0) + int(stopped.sum())
        return stats, question_ids, alpha, beta

    def _demonstrations(self, batch: DataProto, stats, alpha: np.ndarray, beta: np.ndarray,
                        question_ids: list) -> tuple[GatedDemonstrations, np.ndarray, np.ndarray]:
        """Phase 2: the gated questions' demonstrations, encoded after their prompts and scored.
        A gated question without a usable one (missing, empty, not a string) is routed to RL
        (α = 1, β = 0): returns the demonstrations and the (new) weights. Of a list of them,
        ``hpt.demo_choice`` picks which train (``pick_demonstrations``; ``all``: several per question)."""
        gated = np.flatnonzero(beta > 0)
        texts = usable_demonstrations(batch.non_tensor_batch.get("extra_info"), stats.first_row[gated],
                                      self.demo_field)
        demos = GatedDemonstrations.empty(len(stats.uids))
        demos.missing = [int(q) for q, text in zip(gated, texts) if text is None]
        if demos.missing:
            alpha, beta = route_to_rl(alpha, beta, demos.missing)
            logger.warning("HPT step %s: %d gated question(s) have no usable extra_info[%r] demonstration "
                           "(dataset indices %s); they are trained with RL instead", self.global_steps,
                           len(demos.missing), self.demo_field, [question_ids[q] for q in demos.missing][:10])
        kept = [(int(q), text) for q, text in zip(gated, texts) if text is not None]
        if not kept:
            return demos, alpha, beta
        owners, targets = pick_demonstrations(
            [text for _, text in kept], [question_ids[q] for q, _ in kept], self.demo_choice, seed=self.demo_seed,
            step=int(self.global_steps), tokenizer=self.tokenizer)
        questions = [kept[o][0] for o in owners]  # the question of each demonstration to build
        rows = stats.first_row[questions]
        # Each demonstration follows its question's templated prompt: a start that the prompt
        # already ends with (a template's "<think>\n" and an R1 demonstration's) is held once.
        ids, demos.truncated = encode_demonstrations(
            self.tokenizer, targets, int(self.config.actor_rollout_ref.rollout.response_length),
            prompt_ids=prompt_token_ids(batch, rows), overlaps=demos.overlaps)
        scored = self._demo_scorer.score(batch, rows, targets)
        scores = [float(s.get("score", 0.0)) for s in scored]
        demos.ids = per_question(questions, ids, len(stats.uids))
        demos.scores = per_question(questions, scores, len(stats.uids), fill=0.0)
        for key in batch.meta_info.get("reward_extra_keys", []) or []:
            demos.extra[key] = per_question(questions, [s.get(key, v) for s, v in zip(scored, scores)],
                                            len(stats.uids))
        return demos, alpha, beta

    def _record_step(self, metrics: dict, merged: DataProto, stats, mstats, alpha: np.ndarray, beta: np.ndarray,
                     demos: GatedDemonstrations, question_ids: list) -> None:
        """Phase 4: this step's ``hpt/*`` metrics and the cumulative ``hpt_state``."""
        st = self.hpt_state
        st["questions"] += mstats.num_questions
        st["gated"] += mstats.num_gated
        st["steps"] += 1
        st["demo_truncated"] += demos.truncated
        st["demo_missing"] += len(demos.missing)
        # Dataset indices of this step's questions and the gate's decisions for them (number of
        # correct rollouts, routed to SFT or not): the data order and the gating are auditable
        # and comparable across resumes.
        step = str(self.global_steps)
        st.setdefault("batch_indices", {})[step] = question_ids
        st.setdefault("gate_decisions", {})[step] = {
            "correct": [int(c) for c in stats.correct],
            "sft": [int(b > 0) for b in beta],
            "demo_missing": [question_ids[q] for q in demos.missing],
        }
        metrics.update(hpt_step_metrics(merged, stats, alpha, beta, st, demos.truncated))
        metrics["hpt/demo_missing"] = len(demos.missing)
        metrics["hpt/demo_prefix_overlap"] = sum(1 for n in demos.overlaps if n)  # starts dropped (prompt holds them)
        metrics["hpt/cumulative/demo_missing"] = st["demo_missing"]

    def _record_generation(self, metrics: dict, batch: DataProto, stats, alpha: np.ndarray) -> None:
        """Tokens generated this step (``fit``'s batch, placeholders included) and where they went:
        ``hpt/gen/*`` per step, ``hpt/cumulative/gen_*`` and ``hpt_summary.json`` over the run."""
        nt = batch.non_tensor_batch
        n_rows = len(batch)
        sampled = np.asarray(nt[SAMPLED_KEY], dtype=bool) if SAMPLED_KEY in nt else np.ones(n_rows, dtype=bool)
        index = {u: q for q, u in enumerate(stats.uids)}
        question = np.asarray([index[u] for u in nt["uid"]], dtype=np.int64)
        tokens = batch.batch["response_mask"].sum(-1).numpy()  # (N,)
        if not self.gate_config.needs_rollouts:
            tokens = np.zeros_like(tokens)  # the SFT-only baseline's rows are demonstrations: nothing generated
        if HPT_PREFIX_MASK in batch.batch.keys():  # staged continue_with_prefix rows (drawn rows only)
            prefix = batch.batch[HPT_PREFIX_MASK].float().sum(-1).numpy()  # (N,) copied, not generated
            tokens = tokens - prefix.astype(tokens.dtype)
            metrics["hpt/stages/prefix_rows"] = int(((prefix * sampled) > 0).sum())
            metrics["hpt/stages/prefix_tokens"] = float((prefix * sampled).sum())
        padding = getattr(getattr(self, "async_rollout_manager", None), "last_padding_rows", None)
        if SAMPLED_KEY in nt and padding is not None:
            # staged requests filled up to the agent-loop worker count: generated, then dropped
            metrics["hpt/stages/padding_rows"] = int(padding)
        acc = generation_accounting(tokens, sampled, question, trained_rl=np.asarray(alpha) > 0)
        for key, value in acc.items():
            metrics[f"hpt/gen/{key}"] = value
        st = self.hpt_state
        for key in ("tokens", "tokens_wasted", "tokens_saved_est", "rows_skipped"):
            st[f"gen_{key}"] = st.get(f"gen_{key}", 0) + acc[key]
            metrics[f"hpt/cumulative/gen_{key}"] = st[f"gen_{key}"]

    def _count_reward_flags(self, batch: DataProto, metrics: dict) -> None:
        """Sum the grader's per-answer flags (timeouts, crashes; both scored 0) of this step's rollouts."""
        nt = batch.non_tensor_batch
        for key, name in REWARD_COUNT_KEYS.items():
            if key not in nt:
                continue
            try:
                count = int(np.nansum(np.asarray(nt[key], dtype=np.float64) > 0))
            except (TypeError, ValueError):
                continue
            metrics[f"hpt/reward/{name}"] = count
            self.hpt_state[f"reward_{name}"] = self.hpt_state.get(f"reward_{name}", 0) + count
            metrics[f"hpt/cumulative/reward_{name}"] = self.hpt_state[f"reward_{name}"]

    def _mini_batch_rows(self) -> int:
        """Rows per global mini-batch: verl sizes it as ppo_mini_batch_size * rollout.n."""
        arr = self.config.actor_rollout_ref
        return int(arr.actor.ppo_mini_batch_size) * int(arr.rollout.n)

    def _row_divisor(self) -> int:
        """Rows must split into whole mini-batches (verl's ``make_iterator`` requires it), evenly
        over the DP ranks, and, without dynamic batch sizes, into the log-prob micro-batches of
        every rank (verl's ``prepare_micro_batches`` asserts it)."""
        import math

        arr = self.config.actor_rollout_ref
        dp = self._get_dp_size(self.actor_rollout_wg, "actor")
        per_rank = 1
        if not arr.rollout.get("log_prob_use_dynamic_bsz", False):
            micro = [arr.rollout.get("log_prob_micro_batch_size_per_gpu")]
            if self.use_reference_policy:
                micro.append(arr.ref.get("log_prob_micro_batch_size_per_gpu"))
            for m in micro:
                if m:
                    per_rank = math.lcm(per_rank, int(m))
        return math.lcm(self._mini_batch_rows(), dp * per_rank)

    def _pad_token_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    # ------------------------------------------------------------------ hook 2: old log-probs
    def _compute_old_log_prob(self, batch: DataProto):
        """verl's old-log-prob pass, then demonstration rows' ``rollout_log_probs`` := the actor's.

        A demonstration was never sampled by the rollout engine, so it has no rollout log-prob.
        Setting it to the actor's own log-prob makes it neutral for everything verl derives from
        the pair, on every step and for every row, instead of dropping the key for the whole step:
        rollout correction (decoupled mode) sees log-ratio 0 there, i.e. IS weight 1 and never a
        rejection, and the HPT loss applies IS weights to rollout rows only anyway. verl's
        mismatch metrics (``training/rollout_probs_diff_*``, computed by ``fit`` right after this
        call over every row) would be diluted by those zero differences, so the same metrics are
        computed here over the sampled rows alone and replace verl's before the update.
        """
        old_log_prob, mfu = super()._compute_old_log_prob(batch)
        keys = batch.batch.keys()
        if "rollout_log_probs" in keys and HPT_ROW_KIND in keys:
            from verl.utils.debug.metrics import calculate_debug_metrics

            demo = batch.batch[HPT_ROW_KIND] != RowKind.ROLLOUT  # (B,) demonstration rows (any kind)
            # (B, T) demonstration-prefix tokens inside rollout rows (staged prefix stages): not sampled either
            prefix = batch.batch[HPT_PREFIX_MASK].bool() if HPT_PREFIX_MASK in keys else None
            if bool(demo.any()) or (prefix is not None and bool(prefix.any())):
                actor_lp = old_log_prob.batch["old_log_probs"]  # (B, T)
                rollout_lp = batch.batch["rollout_log_probs"]  # (B, T)
                rollout_lp[demo] = actor_lp[demo].to(rollout_lp.dtype)
                mask = batch.batch["response_mask"]
                if prefix is not None:
                    rollout_lp[prefix] = actor_lp[prefix].to(rollout_lp.dtype)
                    mask = mask * (~prefix).to(mask.dtype)  # the metric over sampled tokens only
                # Only the four tensors the metric reads, for the sampled rows (not a copy of the
                # whole batch). No sampled row: verl's own "no valid token" answer (valid 0, NaN).
                sampled = ~demo
                view = DataProto.from_dict(tensors={
                    "rollout_log_probs": rollout_lp[sampled], "old_log_probs": actor_lp[sampled],
                    "response_mask": mask[sampled], "responses": batch.batch["responses"][sampled]})
                self._rollout_debug_metrics = calculate_debug_metrics(view)
        return old_log_prob, mfu

    # ------------------------------------------------------------------ hook 3: totals + skips
    def _update_actor(self, batch: DataProto) -> DataProto:
        from verl_ext.loss.batch_keys import annotate_arm_token_counts

        mini = self._mini_batch_rows()
        dp = self._get_dp_size(self.actor_rollout_wg, "actor")
        if len(batch) % mini:  # hook 1 pads to whole mini-batches; anything else is a bug here
            raise RuntimeError(f"HPT: {len(batch)} rows reached the update, not a multiple of the "
                               f"{mini}-row mini-batch (hook 1 should have padded them)")
        # verl computed its rollout-vs-actor mismatch metrics over all rows just before; replace
        # them by those of the sampled rows only (see _compute_old_log_prob).
        step_metrics = getattr(self, "_step_metrics", None)
        if step_metrics is not None and getattr(self, "_rollout_debug_metrics", None):
            step_metrics.update(self._rollout_debug_metrics)
        self._rollout_debug_metrics = None
        annotate_arm_token_counts(batch, mini_batch_size=mini, dp_size=dp)
        if self.upge.gal_coef:
            self._annotate_gal_weights(batch, step_metrics)
        out = super()._update_actor(batch)
        metrics = out.meta_info["metrics"]
        # An arm with no rows in a mini-batch reports ratio min/max as +/-inf (the identity of
        # the cross-micro-batch min/max); drop those instead of logging infinities.
        for key in [k for k in metrics if k.endswith(("/ratio_min", "/ratio_max"))]:
            vals = [v for v in np.atleast_1d(np.asarray(metrics[key], dtype=np.float64)) if np.isfinite(v)]
            if vals:
                metrics[key] = vals
            else:
                metrics.pop(key)
        self._account_skips(metrics, dp)
        return out

    def _annotate_gal_weights(self, batch: DataProto, step_metrics: Optional[dict]) -> None:
        """DYPO's group alignment term: per-row weights from the old log-probs (verl_ext/loss/gal.py)."""
        from verl_ext.loss.gal import annotate_gal_weights

        value, groups = annotate_gal_weights(batch, self.gate_config.correct_threshold, self.upge.gal_beta)
        if step_metrics is not None:
            step_metrics["hpt/gal/loss"] = value
            step_metrics["hpt/gal/groups"] = groups

    def _account_skips(self, metrics: dict, dp: int) -> None:
        """Count the optimizer steps the worker's guard skipped (flags per mini-batch and DP rank)
        and arm the stop after ``hpt.max_consecutive_skips`` skipped steps in a row.

        Both kinds of skip count towards the stop: a non-finite loss/gradient, and a finite pre-clip
        norm above ``hpt.skip_grad_norm_above``. A run in which every step exceeds the threshold
        (e.g. a norm read in the wrong units) trains nothing and must not go on silently. An fp16
        overflow (the GradScaler skipping while its scale calibrates) neither counts nor resets."""
        def per_step(key):
            flags = np.asarray(metrics.pop(key, []) or [], dtype=np.float64).ravel()
            if dp > 1 and flags.size % dp == 0:
                flags = flags.reshape(-1, dp).max(axis=1)  # every rank takes the same decision
            return flags > 0

        nonfinite, grad_norm = per_step(SKIP_NONFINITE_KEY), per_step(SKIP_GRAD_NORM_KEY)
        overflow = per_step(SKIP_OVERFLOW_KEY)
        st = self.hpt_state
        for i in range(max(nonfinite.size, grad_norm.size, overflow.size)):
            if (i < nonfinite.size and nonfinite[i]) or (i < grad_norm.size and grad_norm[i]):
                st["consecutive_skips"] += 1
            elif not (i < overflow.size and overflow[i]):
                st["consecutive_skips"] = 0  # a real update happened
        st["skipped_steps"] += int(nonfinite.sum())
        st["skipped_steps_grad_norm"] += int(grad_norm.sum())
        st["fp16_overflows"] = st.get("fp16_overflows", 0) + int(overflow.sum())
        metrics["hpt/skipped_steps"] = [int(nonfinite.sum())]
        metrics["hpt/skipped_steps_grad_norm"] = [int(grad_norm.sum())]
        metrics["hpt/fp16_overflows"] = [int(overflow.sum())]
        metrics["hpt/consecutive_skips"] = [st["consecutive_skips"]]
        metrics["hpt/cumulative/skipped_steps"] = [st["skipped_steps"]]
        metrics["hpt/cumulative/skipped_steps_grad_norm"] = [st["skipped_steps_grad_norm"]]
        limit = self.max_consecutive_skips
        if limit and st["consecutive_skips"] >= limit:
            threshold = (self.config.get("hpt", None) or {}).get("skip_grad_norm_above", None)
            self._stop_reason = (
                f"HPT: stopping the run: {st['consecutive_skips']} consecutive optimizer steps were skipped "
                f"(hpt.max_consecutive_skips={limit}; last at training step {self.global_steps}; in total "
                f"{st['skipped_steps']} because the loss or the gradient was non-finite (NaN/inf), "
                f"{st['skipped_steps_grad_norm']} because the pre-clip grad norm exceeded "
                f"hpt.skip_grad_norm_above={threshold}). The parameters and optimizer state are those of the "
                f"last good step. Check the data, the learning rate and the loss settings (or raise "
                f"hpt.skip_grad_norm_above, or set it to null), then resume from the last checkpoint.")
            logger.error(self._stop_reason)

    def _start_profiling(self, do_profile: bool) -> None:
        """The first call of every training step in ``fit`` (before the batch is built) and made by
        nothing else: ``_validate`` does not call it (unlike ``_get_gen_batch``, which validation
        shares). Raising here stops the run only after the previous step, its validation on a
        ``test_freq`` step included, was logged."""
        if self._stop_reason:
            raise HPTStopError(self._stop_reason)
        return super()._start_profiling(do_profile)

    def fit(self):
        try:
            super().fit()
        finally:
            self.write_summary()
        if self._stop_reason:
            raise HPTStopError(self._stop_reason)

    def final_summary(self) -> dict:
        st = self.hpt_state
        # fit() increments global_steps after logging each step: the last finished step is one less.
        return {
            "last_step": max(int(getattr(self, "global_steps", 0) or 0) - 1, 0),
            "stopped": self._stop_reason,
            "data": self.data_report.as_dict() if self.data_report is not None else None,
            "gate": {k: st.get(k, 0) for k in ("questions", "gated", "steps", "demo_truncated", "demo_missing")},
            "optimizer": {"skipped_steps": st.get("skipped_steps", 0),
                          "skipped_steps_grad_norm": st.get("skipped_steps_grad_norm", 0),
                          "consecutive_skips": st.get("consecutive_skips", 0),
                          "max_consecutive_skips": self.max_consecutive_skips},
            "reward": {"timeouts": st.get("reward_timeouts", 0), "grader_errors": st.get("reward_grader_errors", 0)},
            "generation": {k: st.get(f"gen_{k}", 0) for k in ("tokens", "tokens_wasted", "tokens_saved_est",
                                                                "rows_skipped")}
            | {"stopped_to_sft": st.get("stopped_to_sft", 0), "dropped_all_correct": st.get("dropped_all_correct", 0)},
        }

    def write_summary(self) -> Optional[str]:
        summary = self.final_summary()
        print(f"HPT run summary: {json.dumps(summary)}")
        try:
            folder = self.config.trainer.default_local_dir
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, SUMMARY_FILE)
            with open(path, "w") as f:
                json.dump(summary, f, indent=2)
            return path
        except OSError as exc:  # the summary must never mask the run's own outcome
            logger.warning("HPT: could not write %s: %s", SUMMARY_FILE, exc)
            return None

    # ------------------------------------------------------------------ hook 3: SFT-only baseline
    def init_workers(self):
        super().init_workers()
        if self.stages is not None:
            from verl_ext.hpt.prefix import DemonstrationPrefixer
            from verl_ext.hpt.staged_rollout import StagedRolloutManager

            rollout = self.config.actor_rollout_ref.rollout
            prefixer = DemonstrationPrefixer(self.tokenizer, int(rollout.response_length), self.demo_field,
                                             demo_choice=self.demo_choice, seed=self.demo_seed,
                                             chat_template_kwargs=self.config.data.get("apply_chat_template_kwargs"))
            self.async_rollout_manager = StagedRolloutManager(
                self.async_rollout_manager, self.stages, n=int(rollout.n),
                correct_threshold=self.gate_config.correct_threshold, prefixer=prefixer,
                default_agent=str(rollout.agent.default_agent_loop))
        if not self.gate_config.needs_rollouts:
            from verl_ext.hpt.demo_rollout import DeferredWeightSync, DemonstrationRolloutManager

            # No training-time generation: weight pushes wait until validation samples.
            self.checkpoint_manager = DeferredWeightSync(self.checkpoint_manager)
            self.async_rollout_manager = DemonstrationRolloutManager(
                self.async_rollout_manager, self.tokenizer, self.config, demo_field=self.demo_field,
                demo_choice=self.demo_choice, seed=self.demo_seed, before_rollout=self.checkpoint_manager.flush)

    # ------------------------------------------------------------------ hook 4: checkpoints
    def _save_checkpoint(self):
        # Before verl's save, whose last act is to write latest_checkpointed_iteration.txt: a
        # checkpoint the tracker points at then always has its hpt_state.
        folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f"{HPT_STATE_FILE}.tmp")
        with open(tmp, "w") as f:
            json.dump(self.hpt_state, f)
        os.replace(tmp, os.path.join(folder, HPT_STATE_FILE))
        super()._save_checkpoint()

    def _load_checkpoint(self):
        out = super()._load_checkpoint()
        if self.global_steps:
            path = os.path.join(loaded_checkpoint_folder(self.config.trainer, self.global_steps), HPT_STATE_FILE)
            if os.path.exists(path):
                with open(path) as f:
                    self.hpt_state.update(json.load(f))
                print(f"HPT: restored gate statistics {self.hpt_state} from {path}")
            else:
                print(f"HPT: no {HPT_STATE_FILE} in the checkpoint; gate statistics restart from zero")
        return out


def loaded_checkpoint_folder(trainer_config, global_steps: int) -> str:
    """The ``global_step_<n>`` folder verl's ``_load_checkpoint`` (0.9.1) resumed from: with
    ``trainer.resume_mode=resume_path`` the ``trainer.resume_from_path`` folder (which may lie
    outside ``default_local_dir``), otherwise ``default_local_dir/global_step_<n>``; relative paths
    from the working directory, as verl resolves them."""
    if str(trainer_config.get("resume_mode", "auto")) == "resume_path" and trainer_config.get("resume_from_path"):
        folder = str(trainer_config.resume_from_path)
    else:
        folder = os.path.join(str(trainer_config.default_local_dir), f"global_step_{global_steps}")
    return folder if os.path.isabs(folder) else os.path.join(os.getcwd(), folder)


def _replace_in_place(target: DataProto, source: DataProto) -> None:
    """``fit`` holds a reference to its batch object: make it hold ``source``'s rows (hook 1's one
    in-place change; verl's own ``_balance_batch`` likewise reorders in place)."""
    target.batch = source.batch
    target.non_tensor_batch = source.non_tensor_batch
    target.meta_info.update(source.meta_info)
