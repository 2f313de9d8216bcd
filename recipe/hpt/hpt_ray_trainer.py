"""RayHPTTrainer: verl's ``RayPPOTrainer`` with HPT's gate and demonstration merge.

Where it hooks verl's V0 step (``verl/trainer/ppo/ray_trainer.py::RayPPOTrainer.fit``, 0.9.1):

1. ``_balance_batch`` — called by ``fit`` right after ``batch.repeat(n).union(gen_batch_output)``,
   when every rollout already carries its verified score (``rm_scores`` from verl's reward loop)
   and *before* ``extract_reward``, old-log-prob, advantage and update. The override computes each
   question's pass rate, gates it (:mod:`verl_ext.hpt.gate`), rewrites the batch in place into the
   merged batch (:mod:`verl_ext.hpt.merge`: kept rollouts + demonstration rows, flagged per row),
   pads it to the actor's DP size with inert rows, then runs verl's own balancing. Everything after
   it (old log-probs, GRPO advantage per uid, update) is verl's unchanged code on the merged batch.
   Chosen over copying ``fit`` (~400 lines to keep in sync, as verl's DAPO recipe does) and over
   wrapping the rollout manager (whose output must keep the row count, since ``fit`` unions it
   with the n-times repeated prompts).
2. ``_update_actor`` — pads the batch to a multiple of the global mini-batch
   (``ppo_mini_batch_size * rollout.n`` rows, verl's ``make_iterator`` requires it) with inert
   rows and annotates the per-arm token totals the HPT loss normalises by. The number of
   optimizer steps per training step is therefore ceil(rows / mini-batch): as in the release,
   it shrinks when many questions are gated to a single SFT row.
3. ``init_workers`` — for ``hpt.gate.strategy=always`` (SFT baseline) the rollout manager is
   wrapped so training batches get demonstration "rollouts" without any generation.
4. ``_save_checkpoint`` / ``_load_checkpoint`` — also persist the cumulative gate statistics.

Requires ``trainer.balance_batch=true`` (verl's default): that flag is what makes ``fit`` call
hook 1. The constructor refuses a config without it.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo.ray_trainer import RayPPOTrainer

from verl_ext.hpt.demo_scoring import DemoScorer
from verl_ext.hpt.gate import GateConfig, gate_by_pass_rate, question_stats
from verl_ext.hpt.merge import IS_DEMO, ROW_WEIGHT, encode_demonstrations, merge_demonstrations, pad_with_zero_weight_rows
from verl_ext.hpt.metrics import hpt_step_metrics

logger = logging.getLogger(__name__)

HPT_STATE_FILE = "hpt_state.json"


class RayHPTTrainer(RayPPOTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        hpt = self.config.get("hpt", None) or {}
        self.gate_config = GateConfig.from_mapping(
            OmegaConf.to_container(hpt.get("gate", {}), resolve=True) if hpt else {})
        self.demo_field = str(hpt.get("demo_field", "target")) if hpt else "target"
        if not self.config.trainer.balance_batch:
            raise ValueError(
                "trainer.balance_batch=false: RayHPTTrainer gates and merges inside verl's _balance_batch "
                "hook, which RayPPOTrainer.fit only calls when trainer.balance_batch=true"
            )
        self._demo_scorer = DemoScorer.from_config(self.config)
        # Cumulative gate statistics (persisted in checkpoints).
        self.hpt_state: dict[str, Any] = {"questions": 0, "gated": 0, "steps": 0, "demo_truncated": 0}

    # ------------------------------------------------------------------ hook 1: gate + merge
    def _balance_batch(self, batch: DataProto, metrics, logging_prefix="global_seqlen", keep_minibatch=False):
        if "rm_scores" in batch.batch.keys() and IS_DEMO not in batch.batch.keys():
            self._gate_and_merge(batch, metrics)
        padded, n_pad = pad_with_zero_weight_rows(batch, self._row_divisor())
        if n_pad:
            _replace_in_place(batch, padded)
        metrics["hpt/pad_rows"] = n_pad
        return super()._balance_batch(batch, metrics, logging_prefix=logging_prefix, keep_minibatch=keep_minibatch)

    def _gate_and_merge(self, batch: DataProto, metrics: dict) -> None:
        cfg = self.gate_config
        scores = batch.batch["rm_scores"].sum(-1).float().numpy()
        stats = question_stats(batch.non_tensor_batch["uid"], scores, cfg.correct_threshold)
        infos = batch.non_tensor_batch.get("extra_info")
        question_indices = [
            int((infos[int(r)] or {}).get("index", -1)) if infos is not None else -1 for r in stats.first_row
        ]
        alpha, beta = gate_by_pass_rate(stats.correct, stats.n, cfg)

        gated = np.flatnonzero(beta > 0)
        demo_ids: list[Optional[list[int]]] = [None] * len(stats.uids)
        demo_scores = [0.0] * len(stats.uids)
        demo_extra: dict[str, list] = {}
        truncated = 0
        if len(gated):
            extra_infos = batch.non_tensor_batch.get("extra_info")
            if extra_infos is None:
                raise KeyError("HPT needs demonstrations: the batch has no 'extra_info' column "
                               f"(expected extra_info['{self.demo_field}'] per row)")
            targets = []
            for q in gated:
                row = int(stats.first_row[q])
                info = extra_infos[row] or {}
                if self.demo_field not in info or not info[self.demo_field]:
                    raise KeyError(
                        f"row {row} (uid {stats.uids[q]!r}, index {info.get('index')!r}) has no "
                        f"extra_info['{self.demo_field}'] demonstration but its question was gated to SFT")
                targets.append(str(info[self.demo_field]))
            ids, truncated = encode_demonstrations(
                self.tokenizer, targets, int(self.config.actor_rollout_ref.rollout.response_length))
            for q, i in zip(gated, ids):
                demo_ids[q] = i
            scored = self._demo_scorer.score(batch, stats.first_row[gated], targets)
            for q, s in zip(gated, scored):
                demo_scores[q] = float(s.get("score", 0.0))
            for key in batch.meta_info.get("reward_extra_keys", []) or []:
                demo_extra[key] = [None] * len(stats.uids)
                for q, s in zip(gated, scored):
                    demo_extra[key][q] = s.get(key, demo_scores[q])
        merged, mstats = merge_demonstrations(
            batch, stats, alpha, beta, demo_ids, self._pad_token_id(), placement=cfg.placement,
            demo_scores=demo_scores, demo_extra=demo_extra)
        if mstats.demo_rows and "rollout_log_probs" in merged.batch.keys():
            # Demonstrations were not sampled by the rollout engine: there is no rollout
            # log-prob to compare with (verl only uses it for mismatch metrics / IS correction).
            merged.batch.pop("rollout_log_probs")
        _replace_in_place(batch, merged)

        self.hpt_state["questions"] += mstats.num_questions
        self.hpt_state["gated"] += mstats.num_gated
        self.hpt_state["steps"] += 1
        self.hpt_state["demo_truncated"] += truncated
        # Dataset indices of this step's questions: makes the data order auditable across resumes.
        self.hpt_state.setdefault("batch_indices", {})[str(self.global_steps)] = question_indices
        metrics.update(hpt_step_metrics(batch, stats, alpha, beta, self.hpt_state, truncated))

    def _row_divisor(self) -> int:
        """Rows must split evenly over the DP ranks and, without dynamic batch sizes, into the
        log-prob micro-batches of every rank (verl's ``prepare_micro_batches`` asserts it)."""
        import math

        arr = self.config.actor_rollout_ref
        dp = self._get_dp_size(self.actor_rollout_wg, "actor")
        divisor = 1
        if not arr.rollout.get("log_prob_use_dynamic_bsz", False):
            micro = [arr.rollout.get("log_prob_micro_batch_size_per_gpu")]
            if self.use_reference_policy:
                micro.append(arr.ref.get("log_prob_micro_batch_size_per_gpu"))
            for m in micro:
                if m:
                    divisor = divisor * int(m) // math.gcd(divisor, int(m))
        return dp * divisor

    def _pad_token_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    # ------------------------------------------------------------------ hook 2: pad + annotate
    def _update_actor(self, batch: DataProto) -> DataProto:
        from verl_ext.loss.batch_keys import annotate_arm_token_counts

        mini = int(self.config.actor_rollout_ref.actor.ppo_mini_batch_size) * int(
            self.config.actor_rollout_ref.rollout.n)
        dp = self._get_dp_size(self.actor_rollout_wg, "actor")
        padded, n_pad = pad_with_zero_weight_rows(batch, mini)
        if self.config.actor_rollout_ref.actor.get("shuffle", False):
            # Shuffling regroups rows into mini-batches after the per-arm totals were computed.
            raise ValueError("actor.shuffle=true breaks the per-mini-batch arm totals; HPT needs shuffle=false")
        annotate_arm_token_counts(padded, mini_batch_size=mini, dp_size=dp)
        out = super()._update_actor(padded)
        metrics = out.meta_info["metrics"]
        # An arm with no rows in a mini-batch reports ratio min/max as +/-inf (the identity of
        # the cross-micro-batch min/max); drop those instead of logging infinities.
        for key in [k for k in metrics if k.endswith(("/ratio_min", "/ratio_max"))]:
            vals = [v for v in np.atleast_1d(np.asarray(metrics[key], dtype=np.float64)) if np.isfinite(v)]
            if vals:
                metrics[key] = vals
            else:
                metrics.pop(key)
        metrics["hpt/pad_rows_update"] = n_pad
        return out

    # ------------------------------------------------------------------ hook 3: SFT-only baseline
    def init_workers(self):
        super().init_workers()
        if not self.gate_config.needs_rollouts:
            from verl_ext.hpt.demo_rollout import DemonstrationRolloutManager

            self.async_rollout_manager = DemonstrationRolloutManager(
                self.async_rollout_manager, self.tokenizer, self.config, demo_field=self.demo_field)

    # ------------------------------------------------------------------ hook 4: checkpoints
    def _save_checkpoint(self):
        super()._save_checkpoint()
        folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, HPT_STATE_FILE), "w") as f:
            json.dump(self.hpt_state, f)

    def _load_checkpoint(self):
        out = super()._load_checkpoint()
        if self.global_steps:
            folder = self.config.trainer.default_local_dir
            if not os.path.isabs(folder):
                folder = os.path.join(os.getcwd(), folder)
            path = os.path.join(folder, f"global_step_{self.global_steps}", HPT_STATE_FILE)
            if os.path.exists(path):
                with open(path) as f:
                    self.hpt_state.update(json.load(f))
                print(f"HPT: restored gate statistics {self.hpt_state} from {path}")
            else:
                print(f"HPT: no {HPT_STATE_FILE} in the checkpoint; gate statistics restart from zero")
        return out


def _replace_in_place(target: DataProto, source: DataProto) -> None:
    """``fit`` holds a reference to its batch object: mutate it rather than return a new one."""
    target.batch = source.batch
    target.non_tensor_batch = source.non_tensor_batch
    target.meta_info.update(source.meta_info)
