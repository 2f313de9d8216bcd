"""Every ``hpt/*`` metric of a step, computed once, here (logged beside verl's own).

Per step: the gate and the merged batch (:func:`step_metrics`), the grader's flags
(:func:`reward_flag_metrics`), generated tokens and where they went (:func:`generation_metrics`),
optimizer steps the worker's guard skipped (:func:`skip_metrics`); ``hpt/cumulative/*`` read the
run's :class:`verl_ext.hpt.state.HPTState`, which the same functions update. verl's own data
metrics of the sampled rollouts and of the trained batch: :func:`scored_data_metrics`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from verl_ext.hpt.staging.stages import SAMPLED_KEY
from verl_ext.loss.batch_keys import HPT_PREFIX_MASK, HPT_ROW_KIND, HPT_ROW_WEIGHT, RowKind

# Reward extra-info keys of verl_ext.reward (1.0 per answer) summed into hpt/reward/<name>.
REWARD_COUNT_KEYS = {"timeout": "timeouts", "grader_error": "grader_errors"}


# ------------------------------------------------------------------ the gate and the merged batch
def step_metrics(merged, decision, demos, state) -> dict:
    """Metrics of one gate decision and the merged batch it produced (``state`` already holds this step).

    - ``hpt/sft_question_share``: fraction of questions with a demonstration row (β > 0); the
      paper's Fig. 6 "offline data ratio" (the release logs it as ``uni/sft_data_ratio``).
    - ``hpt/pass_rate_hist/<k>``: fraction of questions with k of n rollouts correct.
    - ``hpt/demo_token_share``: demonstration tokens / all trained response tokens.
    - ``hpt/response_length/{rl,demo}``: mean response length per arm.
    """
    stats, alpha, beta = decision.stats, decision.alpha, decision.beta
    m: dict[str, float] = {}
    q = len(stats.uids)
    m["hpt/questions"] = q
    m["hpt/sft_question_share"] = float((beta > 0).mean()) if q else 0.0
    m["hpt/rl_question_share"] = float((alpha > 0).mean()) if q else 0.0
    m["hpt/pass_rate/mean"] = float(stats.pass_rate.mean()) if q else 0.0
    n_mode = int(np.bincount(stats.n).argmax()) if q else 0
    for k in range(n_mode + 1):
        m[f"hpt/pass_rate_hist/{k}"] = float(((stats.correct == k) & (stats.n == n_mode)).mean()) if q else 0.0
    td = merged.batch
    lengths = td["response_mask"].sum(-1).float()
    demo = (td[HPT_ROW_KIND] != RowKind.ROLLOUT if HPT_ROW_KIND in td.keys()
            else torch.zeros(len(lengths), dtype=torch.bool))  # (B,) demonstration rows
    live = td[HPT_ROW_WEIGHT] > 0 if HPT_ROW_WEIGHT in td.keys() else torch.ones(len(lengths), dtype=torch.bool)
    total = float(lengths[live].sum())
    m["hpt/demo_token_share"] = float(lengths[live & demo].sum()) / total if total else 0.0
    m["hpt/rows/rollout"] = int((live & ~demo).sum())
    m["hpt/rows/demo"] = int((live & demo).sum())
    m["hpt/response_length/rl"] = float(lengths[live & ~demo].mean()) if bool((live & ~demo).any()) else 0.0
    m["hpt/response_length/demo"] = float(lengths[live & demo].mean()) if bool((live & demo).any()) else 0.0
    m["hpt/demo_truncated"] = demos.truncated
    m["hpt/cumulative/sft_question_share"] = state.gated / max(state.questions, 1)
    m["hpt/demo_missing"] = len(demos.missing)
    m["hpt/demo_prefix_overlap"] = sum(1 for n in demos.overlaps if n)  # starts dropped (the prompt holds them)
    m["hpt/cumulative/demo_missing"] = state.demo_missing
    if decision.kept_all_correct:
        m["hpt/dropped_all_correct_kept"] = decision.kept_all_correct
    if decision.dropped_all_correct is not None:  # hpt.gate.drop_all_correct (DYPO)
        m["hpt/dropped_all_correct"] = decision.dropped_all_correct
    if decision.stopped_to_sft is not None:
        m["hpt/stages/stopped_to_sft"] = decision.stopped_to_sft
    return m


# ------------------------------------------------------------------ the grader's flags
def reward_flag_metrics(batch, state) -> dict:
    """Sum the grader's per-answer flags (timeouts, crashes; both scored 0) of this step's rollouts
    into ``hpt/reward/*`` and the state's cumulative counts."""
    nt = batch.non_tensor_batch
    m = {}
    for key, name in REWARD_COUNT_KEYS.items():
        if key not in nt:
            continue
        try:
            count = int(np.nansum(np.asarray(nt[key], dtype=np.float64) > 0))
        except (TypeError, ValueError):
            continue
        m[f"hpt/reward/{name}"] = count
        total = state.add(f"reward_{name}", count)
        m[f"hpt/cumulative/reward_{name}"] = total
    return m


# ------------------------------------------------------------------ generated tokens
def generation_accounting(response_tokens: np.ndarray, sampled: np.ndarray, question_of_row: np.ndarray,
                          trained_rl: np.ndarray) -> dict[str, float]:
    """Tokens generated this step and where they went (plain and staged runs alike).

    response_tokens: (N,) response tokens per row; sampled: (N,) bool (False: placeholder, never
    drawn); question_of_row: (N,) int question index; trained_rl: (Q,) bool, the question's rollouts
    reach the loss (α > 0, or kept in the group). Rows of a question whose rollouts are not trained
    were generated for nothing (``wasted``). ``saved_est`` estimates what stopping early saved: each
    placeholder at the mean length of its question's drawn rows.
    """
    tokens = np.asarray(response_tokens, dtype=np.float64)
    sampled = np.asarray(sampled, dtype=bool)
    qrow = np.asarray(question_of_row, dtype=np.int64)
    trained = np.asarray(trained_rl, dtype=bool)[qrow]
    q = int(np.asarray(trained_rl).shape[0])
    drawn_tokens = np.bincount(qrow[sampled], weights=tokens[sampled], minlength=q)
    drawn_rows = np.bincount(qrow[sampled], minlength=q)
    skipped_rows = np.bincount(qrow[~sampled], minlength=q)
    mean_len = drawn_tokens / np.maximum(drawn_rows, 1)
    return {
        "tokens": float(tokens[sampled].sum()),
        "rows": float(sampled.sum()),
        "rows_skipped": float((~sampled).sum()),
        "tokens_wasted": float(tokens[sampled & ~trained].sum()),
        "tokens_saved_est": float((skipped_rows * mean_len).sum()),
    }


def generation_metrics(batch, decision, state, generated: bool, staged_padding_rows: Optional[int]) -> dict:
    """Tokens generated this step (``fit``'s batch, placeholders included) and where they went:
    ``hpt/gen/*`` per step, ``hpt/cumulative/gen_*`` (and ``hpt_summary.json``) over the run.
    ``generated=False``: the SFT-only baseline, whose rows are demonstrations (nothing generated)."""
    stats, alpha = decision.stats, decision.alpha
    m = {}
    nt = batch.non_tensor_batch
    n_rows = len(batch)
    sampled = np.asarray(nt[SAMPLED_KEY], dtype=bool) if SAMPLED_KEY in nt else np.ones(n_rows, dtype=bool)
    index = {u: q for q, u in enumerate(stats.uids)}
    question = np.asarray([index[u] for u in nt["uid"]], dtype=np.int64)
    tokens = batch.batch["response_mask"].sum(-1).numpy()  # (N,)
    if not generated:
        tokens = np.zeros_like(tokens)
    if HPT_PREFIX_MASK in batch.batch.keys():  # staged continue_with_prefix rows (drawn rows only)
        prefix = batch.batch[HPT_PREFIX_MASK].float().sum(-1).numpy()  # (N,) copied, not generated
        tokens = tokens - prefix.astype(tokens.dtype)
        m["hpt/stages/prefix_rows"] = int(((prefix * sampled) > 0).sum())
        m["hpt/stages/prefix_tokens"] = float((prefix * sampled).sum())
    if SAMPLED_KEY in nt and staged_padding_rows is not None:
        # staged requests filled up to the agent-loop worker count: generated, then dropped
        m["hpt/stages/padding_rows"] = int(staged_padding_rows)
    acc = generation_accounting(tokens, sampled, question, trained_rl=np.asarray(alpha) > 0)
    for key, value in acc.items():
        m[f"hpt/gen/{key}"] = value
    for key in ("tokens", "tokens_wasted", "tokens_saved_est", "rows_skipped"):
        m[f"hpt/cumulative/gen_{key}"] = state.add(f"gen_{key}", acc[key])
    return m


# ------------------------------------------------------------------ skipped optimizer steps
def skip_flags(metrics: dict, keys: tuple[str, str, str], dp: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The worker's per-optimizer-step flags (popped from the update's ``metrics``; one per
    mini-batch and DP rank) as (nonfinite, grad_norm, overflow) bool arrays, one entry per step."""
    def per_step(key):
        flags = np.asarray(metrics.pop(key, []) or [], dtype=np.float64).ravel()
        if dp > 1 and flags.size % dp == 0:
            flags = flags.reshape(-1, dp).max(axis=1)  # every rank takes the same decision
        return flags > 0

    return tuple(per_step(k) for k in keys)


def skip_metrics(nonfinite: np.ndarray, grad_norm: np.ndarray, overflow: np.ndarray, state) -> dict:
    """``hpt/skipped_steps*``, ``hpt/fp16_overflows``, ``hpt/consecutive_skips`` (lists, like the
    update's own per-mini-batch metrics) after ``state.add_skips``."""
    return {
        "hpt/skipped_steps": [int(nonfinite.sum())],
        "hpt/skipped_steps_grad_norm": [int(grad_norm.sum())],
        "hpt/fp16_overflows": [int(overflow.sum())],
        "hpt/consecutive_skips": [state.consecutive_skips],
        "hpt/cumulative/skipped_steps": [state.skipped_steps],
        "hpt/cumulative/skipped_steps_grad_norm": [state.skipped_steps_grad_norm],
    }


# verl's data metrics (``verl.trainer.ppo.metric_utils.compute_data_metrics``) that describe what the
# policy generated: scores, rewards and lengths. ``fit`` computes them on the trained batch (kept
# rollouts + demonstration rows + padding); HPT logs them for the step's sampled rollouts instead and
# the trained batch's under ``hpt/trained/``. Advantages and returns exist for trained rows only and stay verl's.
ROLLOUT_DATA_PREFIXES = ("critic/score/", "critic/rewards/", "response_length/", "response_length_non_aborted/",
                         "response/aborted_ratio", "prompt_length/", "num_turns/", "tool_call_counts/")
TRAINED_PREFIX = "hpt/trained/"


def scored_data_metrics(batch, with_rewards: bool = True) -> dict:
    """verl's own ``compute_data_metrics`` of a batch as it is in the ``_balance_batch`` hook (each
    row's verified score in ``rm_scores``; no KL penalty, advantages or returns yet), restricted to
    :data:`ROLLOUT_DATA_PREFIXES`. ``with_rewards=False`` leaves out ``critic/rewards/*`` (with
    ``algorithm.use_kl_in_reward`` a reward is the score minus a KL penalty computed later, on the
    trained rows only)."""
    from verl import DataProto
    from verl.trainer.ppo.metric_utils import compute_data_metrics

    td = batch.batch
    scores = td["rm_scores"].float()  # (B, R): the score on the last response token
    zeros = torch.zeros_like(scores)
    view = DataProto.from_dict(
        tensors={"token_level_scores": scores, "token_level_rewards": scores, "advantages": zeros, "returns": zeros,
                 "prompts": td["prompts"], "responses": td["responses"], "response_mask": td["response_mask"],
                 "attention_mask": td["attention_mask"]},
        non_tensors={k: batch.non_tensor_batch[k] for k in ("__num_turns__", "tool_call_counts")
                     if k in batch.non_tensor_batch})
    out = compute_data_metrics(view, use_critic=False)
    return {k: v for k, v in out.items() if k.startswith(ROLLOUT_DATA_PREFIXES)
            and (with_rewards or not k.startswith("critic/rewards/"))}
