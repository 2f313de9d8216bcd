"""Old log-probs from the update's own forward (``hpt.fuse_old_log_prob``): one forward pass fewer per step.

verl computes log π_θold in a separate forward over the batch before the update (``fit``'s
``old_log_prob`` phase), then the update forwards the same rows again. When the step's rows train in
exactly one optimizer step (one mini-batch, one epoch), every micro-batch of the update runs its
forward at θold, so

    log π_θold(y_t) = stop_gradient(log π_θ(y_t))   for every token of the step,

the PPO ratio is exactly 1, no clip ever fires, and ∇(ratio · Â) = Â · ∇log π_θ: the loss's gradient is
the one of the separate pass up to float rounding (the two forwards differ in the last bits:
tests/unit/loss/test_fused_old_log_prob.py). The same idea, measured elsewhere: miles PR #1934,
ms-swift PR #9874. On this project's CPU main job the separate pass was 0.55-0.65 s of a 3.1-3.6 s
step (``scripts/bench/bench_step.py``).

What the separate pass also fed, and where it comes from in a fused step:

- ``actor/entropy``: verl aggregates the pass's token entropies over the batch with
  ``actor.loss_agg_mode``. A fused step takes the entropies of the update's forward (which computes
  them when ``actor.calculate_entropy=true``): each micro-batch adds its partial sums
  (:func:`micro_batch_stats`), hook 3 combines them (:func:`step_metrics`) into the same number.
- verl's rollout-vs-actor mismatch metrics (``training/rollout_probs_diff_{max,mean,std,valid}``,
  ``training/rollout_actor_probs_pearson_corr``), over the sampled tokens as
  :func:`verl_ext.hpt.merge.neutralise_demo_rollout_log_probs` computes them: from each micro-batch's
  sufficient statistics (count, Σd, Σd², max d, Σx, Σy, Σx², Σy², Σxy with d = |x − y|, x and y the
  actor's and the rollout's token probabilities), combined in hook 3.
- ``perf/mfu/actor_infer``: 0 (no inference pass ran).

Everything else that reads the old log-probs before the update cannot be fed from the update's forward,
so a fused run refuses it at start-up (:func:`fusion_problems`): more than one epoch, verl's rollout
correction (its IS weights, rejection and ``rollout_corr/*`` metrics come from the old log-probs:
``algorithm.rollout_correction`` must be null), KL in the reward, DYPO's group alignment weights
(``hpt.loss.gal_coef``). A step whose batch is more than one mini-batch runs verl's separate pass
(``hpt/old_log_prob_fused`` 0 for that step): later mini-batches see θ after an optimizer step.

The fit loop asserts the old log-probs are in the batch before the update; a fused step puts NaN there
(:func:`placeholder`), so a consumer this module does not know about fails loudly instead of reading
a stand-in, and the loss (which reads the flag :data:`FUSED_KEY` from the micro-batch) never reads them.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from verl.utils.metric import AggregationType, Metric

# batch.meta_info key (hook 2 -> the update's micro-batches, where verl carries meta_info as non-tensor data)
FUSED_KEY = "hpt_old_log_prob_fused"
FUSED_METRIC = "hpt/old_log_prob_fused"
_STAT = "hpt/_fused/"
# partial sums per micro-batch: Σ H·m, Σ m, live sequences, Σ_seq (Σ_t H·m / Σ_t m)
ENTROPY_STATS = ("entropy_sum", "entropy_tokens", "entropy_seqs", "entropy_seq_means")
# sampled tokens: count, Σd, Σd², Σx, Σy, Σx², Σy², Σxy (x actor prob, y rollout prob, d = |x − y|)
MISMATCH_SUMS = ("n", "d", "d2", "x", "y", "xx", "yy", "xy")
MISMATCH_MAX = "d_max"
# verl's loss_agg_mode values whose batch aggregate the entropy partial sums above reproduce
ENTROPY_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean")
MISMATCH_KEYS = ("training/rollout_probs_diff_valid", "training/rollout_probs_diff_max",
                 "training/rollout_probs_diff_mean", "training/rollout_probs_diff_std",
                 "training/rollout_actor_probs_pearson_corr")


def fusion_problems(config) -> list[str]:
    """Settings that ``hpt.fuse_old_log_prob=true`` cannot honour, each with the fix (empty: none)."""
    if not bool((config.get("hpt", None) or {}).get("fuse_old_log_prob", False)):
        return []
    arr = config.actor_rollout_ref
    actor, algorithm = arr.actor, config.get("algorithm", None) or {}
    hpt_loss = (config.get("hpt", None) or {}).get("loss", None) or {}
    head = "hpt.fuse_old_log_prob=true takes the old log-probs from the update's own forward, "
    out = []
    if int(actor.get("ppo_epochs", 1)) != 1:
        out.append(head + f"which equals the old policy only in the first epoch; actor_rollout_ref.actor.ppo_epochs="
                   f"{actor.ppo_epochs}: set ppo_epochs=1 or hpt.fuse_old_log_prob=false")
    if algorithm.get("rollout_correction", None) is not None:
        out.append(head + "but verl's rollout correction computes its IS weights, rejections and rollout_corr/* "
                   "metrics from them before the update: set algorithm.rollout_correction=null, or "
                   "hpt.fuse_old_log_prob=false")
    if algorithm.get("use_kl_in_reward", False):
        out.append(head + "but algorithm.use_kl_in_reward=true needs them before the update: set "
                   "hpt.fuse_old_log_prob=false")
    if hpt_loss.get("gal_coef", 0):
        out.append(head + "but DYPO's group alignment weights (hpt.loss.gal_coef) are computed from them before "
                   "the update: set hpt.fuse_old_log_prob=false")
    if not actor.get("calculate_entropy", False):
        out.append(head + "and actor/entropy from the update's token entropies, which verl computes only with "
                   "actor_rollout_ref.actor.calculate_entropy=true: set it")
    mode = str(actor.get("loss_agg_mode", "token-mean"))
    if mode not in ENTROPY_AGG_MODES:
        out.append(head + f"and aggregates actor/entropy as verl does for loss_agg_mode in {list(ENTROPY_AGG_MODES)}; "
                   f"actor_rollout_ref.actor.loss_agg_mode={mode}: set hpt.fuse_old_log_prob=false")
    return out


def fuses(batch_rows: int, mini_batch_rows: int) -> bool:
    """Whether a step of ``batch_rows`` rows trains in one optimizer step (one mini-batch; the
    single epoch is a start-up condition)."""
    return batch_rows == mini_batch_rows


def placeholder(old_log_prob_shape: tuple[int, int]):
    """What hook 2 returns for a fused step, in place of the pass's output: NaN old log-probs and
    entropies of the batch's (B, T) response shape (see the module docstring)."""
    from verl import DataProto

    nan = torch.full(old_log_prob_shape, float("nan"), dtype=torch.float32)
    return DataProto.from_dict(tensors={"old_log_probs": nan, "entropys": nan.clone()})


def micro_batch_stats(log_prob: torch.Tensor, entropy: Optional[torch.Tensor], response_mask: torch.Tensor,
                      rollout_log_prob: Optional[torch.Tensor], sampled: Optional[torch.Tensor]) -> dict:
    """One micro-batch's partial sums, as ``Metric``s (SUM, MAX) that verl collects per micro-batch.

    log_prob, entropy, rollout_log_prob: (B, T); response_mask: (B, T) bool; sampled: (B, T) bool,
    the tokens the rollout engine sampled (rollout rows, demonstration prefixes left out)."""
    out = {}
    if entropy is not None:
        m = response_mask.to(torch.float64)
        h = entropy.detach().to(torch.float64) * m  # (B, T)
        seq_tokens = m.sum(-1)  # (B,)
        live = seq_tokens > 0
        values = (h.sum(), m.sum(), live.sum().to(torch.float64),
                  (h.sum(-1)[live] / seq_tokens[live]).sum())
        out.update({_STAT + k: Metric(AggregationType.SUM, float(v)) for k, v in zip(ENTROPY_STATS, values)})
    if rollout_log_prob is not None and sampled is not None:
        x = torch.exp(log_prob.detach().to(torch.float64))[sampled]  # (N,) actor probabilities
        y = torch.exp(rollout_log_prob.to(torch.float64))[sampled]  # (N,) rollout probabilities
        d = (x - y).abs()
        sums = (float(x.numel()), d.sum(), (d * d).sum(), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(),
                (x * y).sum())
        out.update({_STAT + "mm_" + k: Metric(AggregationType.SUM, float(v)) for k, v in zip(MISMATCH_SUMS, sums)})
        # -inf in a micro-batch without sampled tokens: the identity of max
        out[_STAT + "mm_" + MISMATCH_MAX] = Metric(AggregationType.MAX, float(d.max()) if d.numel() else -math.inf)
    return out


def step_metrics(metrics: dict, dp_size: int, loss_agg_mode: str) -> dict:
    """Pop the partial sums of a fused step from the update's ``metrics`` (one value per mini-batch:
    summed over micro-batches, averaged over DP ranks by verl) and return ``actor/entropy`` and the
    mismatch metrics, computed as verl computes them over the whole batch."""
    # verl's _update_actor names the loss's metrics actor/<key>
    stat = {k.split(_STAT, 1)[1]: metrics.pop(k) for k in [k for k in metrics if _STAT in k]}
    if not stat:
        return {}

    def total(key):  # verl averaged the per-rank sums over the DP ranks; undo that
        return float(np.sum(np.asarray(stat[key], dtype=np.float64))) * dp_size

    out = {}
    if ENTROPY_STATS[0] in stat:
        s, tokens, seqs, seq_means = (total(k) for k in ENTROPY_STATS)
        value = {"token-mean": s / tokens if tokens else float("nan"), "token-sum": s,
                 "seq-mean-token-sum": s / seqs if seqs else float("nan"),
                 "seq-mean-token-mean": seq_means / seqs if seqs else float("nan")}[loss_agg_mode]
        out["actor/entropy"] = value
    if "mm_n" in stat:
        n, sd, sd2, sx, sy, sxx, syy, sxy = (total("mm_" + k) for k in MISMATCH_SUMS)
        if n == 0:  # verl's answer when no token is valid
            out.update(dict(zip(MISMATCH_KEYS, (0, float("nan"), float("nan"), float("nan"), float("nan")))))
        else:
            var = (sd2 - sd * sd / n) / (n - 1) if n > 1 else float("nan")  # torch.std: unbiased
            cov, vx, vy = n * sxy - sx * sy, n * sxx - sx * sx, n * syy - sy * sy
            corr = cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else float("nan")
            d_max = float(np.max(np.asarray(stat["mm_" + MISMATCH_MAX], dtype=np.float64)))
            out.update(dict(zip(MISMATCH_KEYS, (1, d_max, sd / n, math.sqrt(max(var, 0.0)), corr))))
    return out
