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
