"""HPT's per-step metrics (logged under ``hpt/`` beside verl's own)."""

from __future__ import annotations

import numpy as np
import torch

from verl_ext.loss.batch_keys import HPT_ROW_KIND, HPT_ROW_WEIGHT, RowKind


def hpt_step_metrics(merged, stats, alpha: np.ndarray, beta: np.ndarray, state: dict, truncated: int) -> dict:
    """Metrics of one gate decision and the merged batch it produced.

    - ``hpt/sft_question_share``: fraction of questions with a demonstration row (β > 0); the
      paper's Fig. 6 "offline data ratio" (the release logs it as ``uni/sft_data_ratio``).
    - ``hpt/pass_rate_hist/<k>``: fraction of questions with k of n rollouts correct.
    - ``hpt/demo_token_share``: demonstration tokens / all trained response tokens.
    - ``hpt/response_length/{rl,demo}``: mean response length per arm.
    """
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
    m["hpt/demo_truncated"] = truncated
    m["hpt/cumulative/sft_question_share"] = state["gated"] / max(state["questions"], 1)
    return m


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
