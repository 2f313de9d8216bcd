"""DYPO's Group Alignment Loss (GAL, arXiv 2604.08926 Eq. 14-19; read from the authors' code).

Within one question's group of rollouts with both outcomes (S correct, F wrong, N = |S| + |F|), each
pair (i ∈ S, j ∈ F) should rank the correct rollout above the wrong one::

    s(τ)   = Σ_t log π(y_t | ·)                    sequence log-likelihood (no length normalisation)
    d_ij   = β · (s_i − s_j)
    L_g    = mean_{i∈S, j∈F} −log σ(d_ij)          one group
    L_GAL  = mean over the step's mixed groups of L_g

The source evaluates s with the old policy's log-probs (π_θold; minus π_ref's when a reference model
exists, none here) and trains through a surrogate whose gradient is the pairwise loss's: per row a
coefficient (sums to zero within a group)::

    c_i = +β · N · Σ_j σ(−d_ij) / (|S||F|)   for i ∈ S
    c_j = −β · N · Σ_i σ(−d_ij) / (|S||F|)   for j ∈ F
    surrogate_g = (1/N) Σ_r −c_r · Σ_t log π_θ(y_rt)        ∇surrogate_g = ∇L_g at θ = θold

Here the per-row weight w_r = c_r / (N_g · G), G the number of mixed groups of the step, is computed
once per step by the trainer (:func:`gal_row_weights`, batch key ``hpt_gal_weight``) and the actor loss
adds ``gal_coef · Σ_r −w_r · Σ_t log π_θ(y_rt)``: a sum of per-row terms, so its gradient does not
depend on how rows are split into micro-batches or ranks (the source takes a row mean per micro-batch).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

HPT_GAL_WEIGHT = "hpt_gal_weight"


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def gal_group(seq_logp: np.ndarray, correct: np.ndarray, beta: float) -> tuple[float, np.ndarray]:
    """One group: (L_g, c) with seq_logp (N,) float, correct (N,) bool; c (N,) the surrogate's
    coefficients (module docstring). A group without both outcomes has L_g = 0 and c = 0."""
    s = np.asarray(seq_logp, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    c = np.zeros_like(s)
    n_s, n_f = int(ok.sum()), int((~ok).sum())
    if n_s == 0 or n_f == 0:
        return 0.0, c
    d = beta * (s[ok][:, None] - s[~ok][None, :])  # (|S|, |F|)
    loss = float(-_log_sigmoid(d).mean())
    sig = 1.0 / (1.0 + np.exp(d))  # σ(−d)
    n = n_s + n_f
    c[ok] = beta * n * sig.sum(axis=1) / (n_s * n_f)
    c[~ok] = -beta * n * sig.sum(axis=0) / (n_s * n_f)
    return loss, c


def gal_row_weights(uids: Sequence, correct: np.ndarray, seq_logp: np.ndarray, eligible: np.ndarray,
                    beta: float) -> tuple[np.ndarray, float, int]:
    """Per-row surrogate weights w (B,) over a step's rows, the exact L_GAL, and G (mixed groups).

    uids (B,): group ids; correct (B,) bool; seq_logp (B,) Σ_t log π_θold per row; eligible (B,) bool:
    the rows that take part (live rollout rows). Rows outside a mixed group get w = 0.
    """
    uids = np.asarray(uids, dtype=object)
    correct = np.asarray(correct, dtype=bool)
    seq_logp = np.asarray(seq_logp, dtype=np.float64)
    eligible = np.asarray(eligible, dtype=bool)
    groups: dict = {}
    for r in np.flatnonzero(eligible):
        groups.setdefault(uids[r], []).append(int(r))
    mixed = [np.asarray(rows) for rows in groups.values() if 0 < correct[rows].sum() < len(rows)]
    w = np.zeros(len(uids), dtype=np.float64)
    if not mixed:
        return w, 0.0, 0
    total = 0.0
    for rows in mixed:
        loss, c = gal_group(seq_logp[rows], correct[rows], beta)
        w[rows] = c / (len(rows) * len(mixed))
        total += loss
    return w, total / len(mixed), len(mixed)


def annotate_gal_weights(batch, correct_threshold: float, beta: float) -> tuple[float, int]:
    """Fill ``batch.batch[HPT_GAL_WEIGHT]`` (B,) of a verl ``DataProto`` about to be trained, from its
    ``old_log_probs``, scores and row kinds; returns (exact L_GAL, mixed groups). Rows taking part: live
    (``hpt_row_weight`` > 0) rollout rows; demonstration and padding rows get weight 0."""
    from verl_ext.loss.batch_keys import HPT_ROW_KIND, HPT_ROW_WEIGHT, RowKind

    b = batch.batch
    mask = b["response_mask"].float()  # (B, T)
    seq_old = (b["old_log_probs"].float() * mask).sum(-1).numpy()  # (B,) Σ_t log π_θold
    score_key = "token_level_scores" if "token_level_scores" in b.keys() else "rm_scores"
    correct = b[score_key].sum(-1).float().numpy() >= correct_threshold  # (B,)
    eligible = ((b[HPT_ROW_KIND] == RowKind.ROLLOUT) & (b[HPT_ROW_WEIGHT] > 0)).numpy()  # (B,)
    weights, value, groups = gal_row_weights(batch.non_tensor_batch["uid"], correct, seq_old, eligible, beta)
    b[HPT_GAL_WEIGHT] = torch.as_tensor(weights, dtype=torch.float32)
    return value, groups
