"""RayHPTTrainer: verl's ``RayPPOTrainer`` with HPT's step in verl's hooks, and nothing else.

One HPT training step rides verl's V0 step (``verl/trainer/ppo/ray_trainer.py::RayPPOTrainer.fit``,
0.9.1) through the hooks below, in the order ``fit`` calls them; everything between them is verl's
unchanged code. Each hook is a few lines calling the step's code (:mod:`verl_ext.hpt.step`, the
walk of one batch is in ``docs/design.md``). "Breaks if" says what to re-check when verl changes.

0. ``_start_profiling``: raises the armed stop (``hpt.max_consecutive_skips``) before the next step.
   Breaks if verl calls it from ``_validate`` too, or no longer first in each step.
1. ``_balance_batch`` (``fit`` calls it only with ``trainer.balance_batch=true``): the step
   (:class:`verl_ext.hpt.step.HPTStep`: gate → demonstrations → merge → record), then inert
   padding rows (:meth:`_row_divisor`), then verl's own balancing of the merged batch. Breaks if verl
   calls it before ``rm_scores`` exist or after ``extract_reward``/old log-probs, not exactly once per
   step, or stops reusing the batch object it passed in.
2. ``_compute_old_log_prob``: demonstration rows' ``rollout_log_probs`` := the actor's (neutral for
   rollout correction); mismatch metrics over sampled rows only
   (:func:`verl_ext.hpt.merge.neutralise_demo_rollout_log_probs`). Breaks if verl renames
   ``rollout_log_probs``/``old_log_probs`` or computes its mismatch metrics elsewhere.
3. ``_update_actor``: per-arm token totals per global mini-batch (``annotate_arm_token_counts``),
   DYPO's group-alignment weights from the old log-probs when ``hpt.loss.gal_coef`` is set,
   skipped-step accounting, infinite ratio metrics dropped. Breaks if verl cuts mini-batches
   differently (``make_iterator``, shuffle) or renames the ``actor/*`` skip flags.
4. ``init_workers``: staged generation (``hpt.stages``) wraps verl's rollout manager
   (:class:`verl_ext.hpt.staging.manager.StagedRolloutManager`); the SFT-only baseline
   (``strategy=always``) gets demonstration "rollouts" and deferred weight pushes. Breaks if verl
   renames ``async_rollout_manager``/``checkpoint_manager`` or their methods.
5. ``_save_checkpoint`` / ``_load_checkpoint``: ``hpt_state.json`` (:class:`verl_ext.hpt.state.HPTState`)
   written before verl's tracker file, restored after its load from the folder verl loaded
   (``trainer.resume_from_path`` included). Breaks if verl moves the tracker write or the
   ``global_step_<n>`` folder layout.

Chosen over copying ``fit`` (~400 lines to keep in sync, as verl's DAPO recipe does) and over
wrapping the rollout manager (whose output must keep the row count, since ``fit`` unions it with
the n-times repeated prompts). Padding happens once, in hook 1, to whole mini-batches and DP /
micro-batch shares, so the number of optimizer steps per training step is ceil(rows / mini-batch):
as in the release, it shrinks when many questions are gated to a single SFT row. verl's data
metrics (``critic/score/*``, ...) describe the sampled rollouts (hook 1 hands them to ``fit``'s
``compute_data_metrics``, :func:`verl_ext.verl_patches.install_rollout_data_metrics`).

Requires ``trainer.balance_batch=true`` (verl's default) and every rollout's score (``rm_scores``)
in hook 1; :mod:`verl_ext.checks` refuses settings that cannot work before Ray starts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Optional

import numpy as np
from verl import DataProto
from verl.trainer.ppo.ray_trainer import RayPPOTrainer

from verl_ext.hpt.config import HPTConfig, choice_seed
from verl_ext.hpt.demo_scorer import DemoScorer
from verl_ext.hpt.merge import neutralise_demo_rollout_log_probs, pad_with_zero_weight_rows
from verl_ext.hpt.metrics import skip_flags, skip_metrics
from verl_ext.hpt.state import STATE_FILE, SUMMARY_FILE, HPTState, write_summary
from verl_ext.hpt.step import HPTStep
from verl_ext.loss.batch_keys import HPT_ROW_KIND, annotate_arm_token_counts
from verl_ext.loss import fused_old_log_prob as fused
from verl_ext.loss.gal import annotate_gal_weights
from verl_ext.verl_patches import (
    ROLLOUT_DATA_METRICS,
    SKIP_GRAD_NORM,
    SKIP_NONFINITE,
    SKIP_OVERFLOW,
    install_rollout_data_metrics,
)

logger = logging.getLogger(__name__)

# batch.meta_info key: verl's mismatch metrics over the sampled rows, from hook 2 to hook 3
ROLLOUT_DEBUG_METRICS = "hpt_rollout_debug_metrics"
# Per-optimizer-step flags reported by the worker's step guard (verl prefixes actor/).
SKIP_KEYS = (f"actor/{SKIP_NONFINITE}", f"actor/{SKIP_GRAD_NORM}", f"actor/{SKIP_OVERFLOW}")


class HPTStopError(RuntimeError):
    """The run cannot usefully continue (e.g. too many non-finite steps in a row)."""


class RayHPTTrainer(RayPPOTrainer):
    def __init__(self, *args, hpt: HPTConfig, data_report=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.hpt = hpt  # the parsed hpt node (checked at start-up, verl_ext.checks)
        self.data_report = data_report  # verl_ext.checks.rows.DataReport from the TaskRunner
        self.state = HPTState()
        self.step = HPTStep(hpt, self.tokenizer, int(self.config.actor_rollout_ref.rollout.response_length),
                            DemoScorer.from_config(self.config), demo_seed=choice_seed(self.config),
                            pad_token_id=self._pad_token_id(),
                            use_kl_in_reward=bool(self.config.algorithm.get("use_kl_in_reward", False)))
        self._data_metrics_logged = False
        self._stop_reason: Optional[str] = None
        install_rollout_data_metrics()  # fit's critic/score/*, response_length/*: the rollouts' (hook 1)

    # ------------------------------------------------------------------ hook 1: the step + pad
    def _balance_batch(self, batch: DataProto, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
        # HPT's bookkeeping (step, padding and verl's balancing) timed as one phase, so its share of
        # the step (timing_s/step) is measured in the same run (scripts/bench).
        t0 = time.perf_counter()
        if not self._data_metrics_logged and self.data_report is not None:
            metrics.update(self.data_report.metrics())
            self._data_metrics_logged = True
        _check_step_input(batch)
        padding = getattr(getattr(self, "async_rollout_manager", None), "last_padding_rows", None)
        record = self.step(batch, self.state, self.global_steps, staged_padding_rows=padding)
        metrics.update(record.metrics)
        # Pad once, here, to whole mini-batches and whole DP/micro-batch shares, *before* verl's
        # balancing: the inert rows are then placed by the balancer like any other row. Rows
        # appended after it would shift every DP rank's contiguous share and undo the balance.
        merged, metrics["hpt/pad_rows"] = pad_with_zero_weight_rows(record.merged, self._row_divisor())
        merged.meta_info[ROLLOUT_DATA_METRICS] = record.rollout_data_metrics  # for fit's compute_data_metrics
        _replace_in_place(batch, merged)  # the one in-place change: fit goes on with the object it passed
        sync = getattr(self, "checkpoint_manager", None)
        if hasattr(sync, "deferred"):  # SFT-only baseline: DeferredWeightSync
            metrics["hpt/cumulative/weight_pushes"] = sync.pushes
            metrics["hpt/cumulative/weight_pushes_deferred"] = sync.deferred
        out = super()._balance_batch(batch, metrics, logging_prefix=logging_prefix, keep_minibatch=keep_minibatch)
        metrics["timing_s/hpt_bookkeeping"] = time.perf_counter() - t0
        return out

    def _mini_batch_rows(self) -> int:
        """Rows per global mini-batch: verl sizes it as ppo_mini_batch_size * rollout.n."""
        arr = self.config.actor_rollout_ref
        return int(arr.actor.ppo_mini_batch_size) * int(arr.rollout.n)

    def _row_divisor(self) -> int:
        """Rows must split into whole mini-batches (verl's ``make_iterator`` requires it), evenly
        over the DP ranks, and, without dynamic batch sizes, into the log-prob micro-batches of
        every rank (verl's ``prepare_micro_batches`` asserts it)."""
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
        """verl's old-log-prob pass, then demonstration rows' ``rollout_log_probs`` := the actor's;
        verl's mismatch metrics, computed by ``fit`` right after this call over every row, are
        replaced through hook 3's output by those of the sampled rows (carried in ``batch.meta_info``).
        With ``hpt.fuse_old_log_prob`` and a batch of one mini-batch: no pass; the update's forward
        supplies the old log-probs, the entropy and the mismatch metrics (verl_ext/loss/fused_old_log_prob.py)."""
        if self.hpt.fuse_old_log_prob and fused.fuses(len(batch), self._mini_batch_rows()):
            batch.meta_info[fused.FUSED_KEY] = True  # read by the loss in every micro-batch, and by hook 3
            return fused.placeholder(tuple(batch.batch["responses"].shape)), 0.0
        old_log_prob, mfu = super()._compute_old_log_prob(batch)
        debug = neutralise_demo_rollout_log_probs(batch, old_log_prob.batch["old_log_probs"])
        if debug:
            batch.meta_info[ROLLOUT_DEBUG_METRICS] = debug  # the batch carries them to hook 3
        return old_log_prob, mfu

    # ------------------------------------------------------------------ hook 3: totals + skips
    def _update_actor(self, batch: DataProto) -> DataProto:
        mini = self._mini_batch_rows()
        dp = self._get_dp_size(self.actor_rollout_wg, "actor")
        if len(batch) % mini:  # hook 1 pads to whole mini-batches; anything else is a bug here
            raise RuntimeError(f"HPT: {len(batch)} rows reached the update, not a multiple of the "
                               f"{mini}-row mini-batch (hook 1 should have padded them)")
        # Metrics for fit's log ride in the update's own metrics, which fit merges after verl's mismatch
        # metrics over all rows: the sampled rows' own replace them (lists, as verl reduces them).
        extra = dict(batch.meta_info.pop(ROLLOUT_DEBUG_METRICS, None) or {})
        annotate_arm_token_counts(batch, mini_batch_size=mini, dp_size=dp)
        if self.hpt.loss.gal_coef:  # DYPO's group alignment term: per-row weights from the old log-probs
            value, groups = annotate_gal_weights(batch, self.hpt.gate.correct_threshold, self.hpt.loss.gal_beta)
            extra.update({"hpt/gal/loss": value, "hpt/gal/groups": groups})
        is_fused = bool(batch.meta_info.get(fused.FUSED_KEY, False))
        out = super()._update_actor(batch)
        metrics = out.meta_info["metrics"]
        if self.hpt.fuse_old_log_prob:
            extra[fused.FUSED_METRIC] = float(is_fused)
            extra.update(fused.step_metrics(metrics, dp, self.config.actor_rollout_ref.actor.loss_agg_mode))
        metrics.update({key: [value] for key, value in extra.items()})
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

    def _account_skips(self, metrics: dict, dp: int) -> None:
        """Count the optimizer steps the worker's guard skipped (flags per mini-batch and DP rank,
        replaced in ``metrics`` by ``hpt/skipped_steps*``) and arm the stop after
        ``hpt.max_consecutive_skips`` skipped steps in a row (:meth:`HPTState.add_skips`)."""
        nonfinite, grad_norm, overflow = skip_flags(metrics, SKIP_KEYS, dp)
        self.state.add_skips(nonfinite, grad_norm, overflow)
        metrics.update(skip_metrics(nonfinite, grad_norm, overflow, self.state))
        st, limit = self.state, self.hpt.max_consecutive_skips
        if not limit or st.consecutive_skips < limit:
            return
        self._stop_reason = (
            f"HPT: stopping the run: {st.consecutive_skips} consecutive optimizer steps were skipped "
            f"(hpt.max_consecutive_skips={limit}; last at training step {self.global_steps}; in total "
            f"{st.skipped_steps} because the loss or the gradient was non-finite (NaN/inf), "
            f"{st.skipped_steps_grad_norm} because the pre-clip grad norm exceeded "
            f"hpt.skip_grad_norm_above={self.hpt.skip_grad_norm_above}). The parameters and optimizer state are "
            f"those of the last good step. Check the data, the learning rate and the loss settings (or raise "
            f"hpt.skip_grad_norm_above, or set it to null), then resume from the last checkpoint.")
        logger.error(self._stop_reason)

    # ------------------------------------------------------------------ hook 0: the armed stop
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
        # fit() increments global_steps after logging each step: the last finished step is one less.
        return self.state.summary(last_step=max(int(getattr(self, "global_steps", 0) or 0) - 1, 0),
                                  stopped=self._stop_reason,
                                  data=self.data_report.as_dict() if self.data_report is not None else None,
                                  max_consecutive_skips=self.hpt.max_consecutive_skips)

    def write_summary(self) -> Optional[str]:
        summary = self.final_summary()
        print(f"HPT run summary: {json.dumps(summary)}")
        path = write_summary(summary, self.config.trainer.default_local_dir)
        if path is None:  # the summary must never mask the run's own outcome
            logger.warning("HPT: could not write %s in %s", SUMMARY_FILE, self.config.trainer.default_local_dir)
        return path

    # ------------------------------------------------------------------ hook 4: rollout managers
    def init_workers(self):
        super().init_workers()
        rollout = self.config.actor_rollout_ref.rollout
        if self.hpt.stages is not None:
            from verl_ext.hpt.staging.manager import StagedRolloutManager
            from verl_ext.hpt.staging.prefix import DemonstrationPrefixer

            prefixer = DemonstrationPrefixer(self.tokenizer, int(rollout.response_length), self.hpt.demo_field,
                                             demo_choice=self.hpt.demo_choice, seed=self.step.demo_seed,
                                             chat_template_kwargs=self.config.data.get("apply_chat_template_kwargs"))
            self.async_rollout_manager = StagedRolloutManager(
                self.async_rollout_manager, self.hpt.stages, n=int(rollout.n),
                correct_threshold=self.hpt.gate.correct_threshold, prefixer=prefixer,
                default_agent=str(rollout.agent.default_agent_loop))
        if not self.hpt.gate.needs_rollouts:
            from verl_ext.hpt.demo_rollout import DeferredWeightSync, DemonstrationRolloutManager

            # No training-time generation: weight pushes wait until validation samples.
            self.checkpoint_manager = DeferredWeightSync(self.checkpoint_manager)
            self.async_rollout_manager = DemonstrationRolloutManager(
                self.async_rollout_manager, self.tokenizer, self.config, demo_field=self.hpt.demo_field,
                demo_choice=self.hpt.demo_choice, seed=self.step.demo_seed,
                before_rollout=self.checkpoint_manager.flush)

    # ------------------------------------------------------------------ hook 5: checkpoints
    def _save_checkpoint(self):
        # Before verl's save, whose last act is to write latest_checkpointed_iteration.txt: a
        # checkpoint the tracker points at then always has its hpt_state.
        self.state.save(os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}"))
        super()._save_checkpoint()

    def _load_checkpoint(self):
        out = super()._load_checkpoint()
        if self.global_steps:
            folder = loaded_checkpoint_folder(self.config.trainer, self.global_steps)
            state = HPTState.load(folder)
            if state is not None:
                self.state = state
                print(f"HPT: restored gate statistics {state.as_dict()} from {os.path.join(folder, STATE_FILE)}")
            else:
                print(f"HPT: no {STATE_FILE} in {folder}; gate statistics restart from zero")
        return out


def _check_step_input(batch: DataProto) -> None:
    """Hook 1's preconditions: called once per step, on a batch with every rollout's score."""
    if HPT_ROW_KIND in batch.batch.keys():
        raise RuntimeError(f"HPT: the batch reached _balance_batch already merged (it holds {HPT_ROW_KIND!r}); "
                           "RayPPOTrainer.fit is expected to call this hook once per step")
    if "rm_scores" not in batch.batch.keys():
        # Never train plain GRPO silently: the gate needs every rollout's verified score here.
        raise RuntimeError(
            "HPT: the batch reached verl's _balance_batch hook without rm_scores, so the gate cannot see "
            "the rollouts' scores. verl fills rm_scores in the agent loop when no reward model is used or "
            "when reward.reward_model.enable_resource_pool=true; a colocated reward model scores later and "
            "is refused at start-up (verl_ext.checks.settings.unsupported_settings).")


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
