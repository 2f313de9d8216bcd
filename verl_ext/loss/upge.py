"""The Unified Policy Gradient Estimator (UPGE) as pure tensor functions: no Ray, no trainer.

Paper Eq. 6 (arXiv 2509.04419): for a response token y_t of a sequence τ,

    grad = 1_stable · (1/π_ref) · Â · ∇π_θ(y_t)

Symbols and shapes (B rows, T padded response positions):

    log_prob      (B,T)  log π_θ(y_t | ·), requires grad
    old_log_prob  (B,T)  log π_θold(y_t | ·) (verl's `old_log_probs`), no grad
    advantages    (B,T)  Â (verl's `advantages`, already broadcast over tokens)
    response_mask (B,T)  bool, the tokens this arm owns

Every arm builds a per-token *surrogate* ℓ_t whose gradient is the UPGE term. The key identity is
∇π_θ / π_ref = ρ · ∇log π_θ for the ratio value ρ = π_θ/π_ref, so the parts act as follows.

Reference denominator ``ref`` (the "ratio" ρ carries the gradient, its value is π_θ/π_ref):

    old       ρ = exp(clamp(log π_θ − log π_θold, ±20))     (PPO/GRPO; the clamp is verl's)
    self      ρ = exp(log π_θ − sg(log π_θ)) ≡ 1, ∇ρ = ∇log π_θ   (SFT, REINFORCE)
    one       ρ = π_θ = exp(log π_θ)                          (off-policy, π_ref ≡ 1: LUFFY, SRFT)
    gspo_seq  ρ = exp(min(log π_θ − sg(log π_θ) + sg(s̄), 10)),  s̄ = mean_t (log π_θ − log π_θold)
              i.e. π_ref = π_θ · (π_θold(τ)/π_θ(τ))^{1/|τ|} (GSPO; the clamp is verl's)

Advantage ``adv``: ``batch`` uses verl's advantages as they are (GRPO with/without std, RLOO,
Dr.GRPO, GAE...), ``one`` uses Â ≡ 1 (SFT), ``outcome`` a per-row advantage from the row's
correctness and mean entropy (:func:`outcome_advantage`):

    Â_i = a₊ · sg(exp(κ_A · H̄_i))   if row i is correct (Σ_t score_it == correct_score)
    Â_i = a₋                        otherwise

with H̄_i = Σ_t m_it H_it / Σ_t m_it the row's mean token entropy (:func:`row_mean_entropy`).
κ_A = 0, a± = ±1 is REINFORCE's ±1; SRFT's on-policy term is a₊ = 0.1, κ_A = 1, a₋ = −1.

Entropy-weighted NLL term (``nll_coef`` = c_N ≠ 0; SRFT's SFT term on demonstrations, c_N = 0.5,
κ_N = −1): the arm's loss gains

    c_N · agg_N( sg(exp(κ_N · H̄_i)) · (−log π_θ(y_t)) )

over the arm's tokens, aggregated by ``nll_agg`` with the arm's own totals
(:func:`entropy_weighted_nll`). Its gradient is the UPGE term with π_ref = π_θ and Â = c_N·w_i:
an SFT instance with a per-row weight, added to the arm's main estimator on the same rows.

Policy shaping ``shaping_gamma`` = γ (LUFFY, γ = 0.1): ρ is replaced by f(ρ) = ρ/(ρ+γ), so the
gradient gains the factor f'(ρ)=γ/(ρ+γ)²; with ref=one this is LUFFY's −Â·p/(p+γ).

Stabilization mask ``stable`` (1_stable, a stop-gradient on unstable tokens):

    none           ℓ = −Â·ρ                                   (−Â·log π_θ for ref=self: same gradient,
                                                                and the value is the NLL for SFT)
    ppo_clip       ℓ = max(−Â·ρ, −Â·clip(ρ, 1−ε_low, 1+ε_high)); with dual clip c (Â<0): min(ℓ, −Â·c)
    cispo          ℓ = −sg(clip(ρ, 1−ε_low, 1+ε_high)) · Â · log π_θ   (CISPO: clipped IS weight, sg)
    gspo_seq_clip  the PPO clip decided on the *sequence* ratio s = exp(min(s̄, 10)): tokens of a
                   sequence with −Â·clip(s) > −Â·s get ℓ = −Â·clip(s) (no gradient), others ℓ = −Â·ρ

With ref=gspo_seq, ``gspo_seq_clip`` reproduces verl's ``gspo`` loss, and ppo_clip with
ref=old and c=3 reproduces verl's ``vanilla``; cispo with ref=old reproduces verl's ``cispo``.

Aggregation turns the masked (B,T) matrix into a scalar (see :func:`aggregate_arm_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import math

import torch

from verl.trainer.ppo.core_algos import agg_loss

from verl_ext.loss.config import VERL_AGG_MODES, UPGEArmConfig

# Same numerical guards as verl's vanilla/cispo (±20 on the token log-ratio) and gspo (≤10 on the
# sequence log-ratio), so that the presets reproduce verl's gradients exactly.
_LOG_RATIO_CLAMP = 20.0
_SEQ_LOG_RATIO_MAX = 10.0


@dataclass
class UPGETokenTerms:
    """Per-token output of one arm. All (B,T); only ``loss_mat`` carries gradient.

    loss_mat       the surrogate ℓ_t (unmasked, unweighted)
    ratio          ρ = π_θ/π_ref value (before shaping), detached
    clipped        bool, tokens whose gradient 1_stable removes through the ε clip; None: no such mask
    clipped_lower  bool, tokens cut by the dual clip c (Â<0); None without a dual clip
    neg_kl         log π_θ − log π_θold, detached (for the ppo_kl metric)
    nll_loss       scalar, the arm's aggregated entropy-weighted NLL term (set by
                   :func:`upge_arm_loss` when ``nll_coef != 0``; already inside the arm's loss)
    advantage      (B,1) the per-row Â of ``adv: outcome`` (set by :func:`upge_arm_loss`), else None
    """

    loss_mat: torch.Tensor
    ratio: torch.Tensor
    clipped: Optional[torch.Tensor]
    clipped_lower: Optional[torch.Tensor]
    neg_kl: torch.Tensor
    nll_loss: Optional[torch.Tensor] = None
    advantage: Optional[torch.Tensor] = None


def _sequence_log_ratio(log_prob, old_log_prob, response_mask):
    """s̄_i = Σ_t m_it (log π_θ − log π_θold) / max(Σ_t m_it, 1), detached, shape (B,1)."""
    diff = (log_prob.detach() - old_log_prob) * response_mask
    length = response_mask.sum(dim=-1).clamp(min=1)
    return (diff.sum(dim=-1) / length).unsqueeze(-1)


def row_mean_entropy(entropy: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """H̄_i = Σ_t m_it H_it / Σ_t m_it, detached, shape (B,1); a row without tokens gets 0.

    Args:
        entropy: (B,T) token entropy H_t = −Σ_v π_θ(v|·) log π_θ(v|·) (verl's ``entropy`` output).
        response_mask: (B,T) bool, the row's tokens.
    """
    mask = response_mask.to(entropy.dtype)
    total = (entropy.detach() * mask).sum(dim=-1, keepdim=True)  # (B,1)
    return total / mask.sum(dim=-1, keepdim=True).clamp(min=1)  # (B,1)


def outcome_advantage(row_score: torch.Tensor, row_entropy: Optional[torch.Tensor], arm: UPGEArmConfig) -> torch.Tensor:
    """Per-row Â of ``adv: outcome``, shape (B,1), no gradient.

        Â_i = a₊ · exp(κ_A · H̄_i)  if s_i == correct_score,  else a₋

    Args:
        row_score: (B,) s_i = Σ_t token_level_scores_it, the row's verifier score.
        row_entropy: (B,1) H̄_i from :func:`row_mean_entropy`; may be None when κ_A = 0.
        arm: a₊ = ``adv_correct``, a₋ = ``adv_incorrect``, κ_A = ``adv_entropy_exp``.
    """
    correct = (row_score == arm.correct_score).unsqueeze(-1)  # (B,1) bool
    dtype = row_entropy.dtype if row_entropy is not None else torch.get_default_dtype()
    positive = torch.full(correct.shape, arm.adv_correct, dtype=dtype, device=row_score.device)  # (B,1)
    if arm.adv_entropy_exp != 0.0:
        positive = positive * torch.exp(arm.adv_entropy_exp * row_entropy.detach())
    return torch.where(correct, positive, torch.full_like(positive, arm.adv_incorrect))  # (B,1)


def entropy_weighted_nll(
    log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    row_entropy: Optional[torch.Tensor],
    arm: UPGEArmConfig,
    *,
    token_weight: Optional[torch.Tensor] = None,
    dp_size: int = 1,
    num_tokens: Optional[float] = None,
    num_seqs: Optional[float] = None,
    loss_scale_factor: Optional[float] = None,
) -> torch.Tensor:
    """The arm's extra term c_N · agg_N(sg(exp(κ_N·H̄_i)) · (−log π_θ)), a scalar.

    Args:
        log_prob: (B,T) log π_θ of the arm's rows, requires grad.
        response_mask: (B,T) bool, the arm's tokens.
        row_entropy: (B,1) H̄_i; may be None when κ_N = 0.
        arm: c_N = ``nll_coef``, κ_N = ``nll_entropy_exp``, agg_N = ``nll_agg`` (``const_len`` for const-len).
        token_weight, dp_size, num_tokens, num_seqs, loss_scale_factor: as :func:`upge_arm_loss`.
    """
    nll = -log_prob  # (B,T)
    if arm.nll_entropy_exp != 0.0:
        nll = nll * torch.exp(arm.nll_entropy_exp * row_entropy.detach())  # (B,T) · (B,1)
    if token_weight is not None:
        nll = nll * token_weight
    as_arm = replace(arm, agg=arm.nll_agg, coef=arm.nll_coef)
    return aggregate_arm_loss(
        nll, response_mask, as_arm, dp_size=dp_size, num_tokens=num_tokens, num_seqs=num_seqs,
        loss_scale_factor=loss_scale_factor,
    )


def upge_ratio(log_prob, old_log_prob, response_mask, ref: str, ref_floor: float = 0.1) -> torch.Tensor:
    """ρ = π_θ/π_ref with the gradient of the UPGE term (∇ρ = ρ·∇log π_θ); shape (B,T)."""
    if ref == "old":
        return torch.exp(torch.clamp(log_prob - old_log_prob, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))
    if ref == "self":
        return torch.exp(log_prob - log_prob.detach())
    if ref == "one":
        return torch.exp(log_prob)
    if ref == "self_floor":
        # π_θ / sg(max(π_θ, α)): 1 (plain SFT) where π_θ ≥ α, π_θ/α (damped) below (TRAPO's TrSFT)
        return torch.exp(log_prob - torch.clamp(log_prob.detach(), min=math.log(ref_floor)))
    if ref == "gspo_seq":
        seq = _sequence_log_ratio(log_prob, old_log_prob, response_mask)
        return torch.exp(torch.clamp(log_prob - log_prob.detach() + seq, max=_SEQ_LOG_RATIO_MAX))
    raise ValueError(f"unknown ref {ref!r}")


def upge_token_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    arm: UPGEArmConfig,
) -> UPGETokenTerms:
    """Per-token UPGE surrogate ℓ (B,T) for one arm, plus the metric tensors.

    Args:
        log_prob: (B,T) log π_θ, requires grad.
        old_log_prob: (B,T) log π_θold (used by ref=old/gspo_seq, gspo_seq_clip and ppo_kl).
        advantages: (B,T) or (B,1) Â: verl's for ``adv: batch``, :func:`outcome_advantage`'s for
            ``adv: outcome`` (ignored when ``arm.adv == "one"``).
        response_mask: (B,T) bool, this arm's valid tokens (only gspo's sequence mean reads it).
        arm: the arm's four parts; see the module docstring for the formulas.

    Returns:
        :class:`UPGETokenTerms`; ``loss_mat`` must still be masked and aggregated.
    """
    # Â ≡ 1 as a 0-dim tensor: broadcasts through every formula without a (B,T) buffer.
    adv = log_prob.new_ones(()) if arm.adv == "one" else advantages
    ratio = upge_ratio(log_prob, old_log_prob, response_mask, arm.ref, arm.ref_floor)
    neg_kl = (log_prob.detach() - old_log_prob).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    stable = arm.stable

    if stable == "none":
        if arm.shaping_gamma is not None:
            loss = -adv * (ratio / (ratio + arm.shaping_gamma))
        elif arm.ref == "self":
            # −Â·log π_θ has the gradient of −Â·ρ at ρ ≡ 1 and gives SFT its NLL as the loss value.
            loss = -adv * log_prob
        else:
            loss = -adv * ratio
        return UPGETokenTerms(loss, ratio.detach(), None, None, neg_kl)

    low, high = 1.0 - arm.clip_low, 1.0 + arm.clip_high
    if stable == "ppo_clip":
        loss_unclipped = -adv * ratio
        loss_clipped = -adv * torch.clamp(ratio, low, high)
        clipped = loss_clipped > loss_unclipped
        loss = torch.maximum(loss_unclipped, loss_clipped)
        clipped_lower = None
        if arm.clip_c is not None:
            # Dual clip (Ye et al. 2019): for Â<0 the loss is capped at −Â·c, i.e. ρ is cut above c.
            loss_dual = -adv * arm.clip_c
            negative = adv < 0
            clipped_lower = negative & (loss > loss_dual)
            loss = torch.where(negative, torch.minimum(loss, loss_dual), loss)
        return UPGETokenTerms(loss, ratio.detach(), clipped, clipped_lower, neg_kl)

    if stable == "cispo":
        weight = torch.clamp(ratio.detach(), low, high)
        loss = -weight * adv * log_prob
        return UPGETokenTerms(loss, ratio.detach(), weight != ratio.detach(), None, neg_kl)

    if stable == "gspo_seq_clip":
        seq_ratio = torch.exp(
            torch.clamp(_sequence_log_ratio(log_prob, old_log_prob, response_mask), max=_SEQ_LOG_RATIO_MAX)
        ).expand_as(log_prob)
        loss_clipped = -adv * torch.clamp(seq_ratio, low, high)
        clipped = loss_clipped > -adv * seq_ratio
        loss = torch.where(clipped, loss_clipped, -adv * ratio)
        return UPGETokenTerms(loss, ratio.detach(), clipped, None, neg_kl)

    raise ValueError(f"unknown stable {stable!r}")


def aggregate_arm_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    arm: UPGEArmConfig,
    *,
    dp_size: int = 1,
    num_tokens: Optional[float] = None,
    num_seqs: Optional[float] = None,
    loss_scale_factor: Optional[float] = None,
) -> torch.Tensor:
    """Scalar loss of one arm on this micro-batch, times ``arm.coef``.

    ``mask`` (B,T) bool is the arm's valid tokens on this rank's micro-batch. ``num_tokens`` and
    ``num_seqs`` are the arm's totals over the whole global mini-batch (all micro-batches, all DP
    ranks). Every mode except micro-token-mean is then linear in the tokens, so summing the
    micro-batch losses and averaging gradients over DP ranks gives the global-batch loss whatever
    the split. With M = mask, N = num_tokens, S = num_seqs, D = dp_size:

        verl modes        core_algos.agg_loss(ℓ, M, mode, D, N, S, loss_scale_factor): e.g.
                          token-mean = Σ ℓ·M / N · D,  seq-mean-token-mean = Σ_i mean_t(ℓ_i) / S · D
        const-len         Σ ℓ·M / L · D                  (release RL arm: token sum / 8192, rows summed)
        micro-token-mean  Σ ℓ·M / Σ M · D                (release SFT arm: mean over *this micro-batch's*
                                                          tokens; depends on the micro-batch split)

    Counts of zero are clamped to one: the arm then has no tokens and the sum is zero anyway.
    """
    mode = arm.agg
    if mode in VERL_AGG_MODES:
        if dp_size == 1:
            # Without global totals fall back to this micro-batch's counts, as agg_loss would, but
            # never divide by zero: an arm can be absent from a micro-batch.
            if num_tokens is None:
                num_tokens = mask.sum()
            if num_seqs is None:
                num_seqs = (mask.sum(dim=-1) > 0).sum()
        loss = agg_loss(
            loss_mat=loss_mat,
            loss_mask=mask,
            loss_agg_mode=mode,
            dp_size=dp_size,
            batch_num_tokens=_at_least_one(num_tokens),
            global_batch_size=_at_least_one(num_seqs),
            loss_scale_factor=loss_scale_factor,
        )
    else:
        total = torch.where(mask, loss_mat, 0.0).sum()
        if mode == "const-len":
            loss = total / arm.const_len * dp_size
        elif mode == "micro-token-mean":
            loss = total / mask.sum().clamp(min=1) * dp_size
        else:
            raise ValueError(f"unknown agg {mode!r}")
    return loss * arm.coef if arm.coef != 1.0 else loss


def _at_least_one(count):
    if count is None:
        return None
    if isinstance(count, torch.Tensor):
        return count.clamp(min=1)
    return max(count, 1)


def upge_arm_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    arm: UPGEArmConfig,
    *,
    token_weight: Optional[torch.Tensor] = None,
    dp_size: int = 1,
    num_tokens: Optional[float] = None,
    num_seqs: Optional[float] = None,
    loss_scale_factor: Optional[float] = None,
    row_score: Optional[torch.Tensor] = None,
    row_entropy: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, UPGETokenTerms]:
    """One arm end to end: ``coef · agg(w ⊙ ℓ, mask)`` with ℓ from :func:`upge_token_loss`, plus the
    arm's entropy-weighted NLL term when ``arm.nll_coef != 0``.

    ``token_weight`` (B,T) or (B,1) multiplies ℓ (row weights α/β, rollout IS weights) and the NLL
    term; it does not enter the token/sequence counts. ``row_score`` (B,) is needed by
    ``adv: outcome``, ``row_entropy`` (B,1) (:func:`row_mean_entropy`) by the parts with κ ≠ 0.
    """
    if arm.adv == "outcome":
        if row_score is None:
            raise ValueError("adv='outcome' needs row_score (Σ_t token_level_scores of each row)")
        advantages = outcome_advantage(row_score, row_entropy, arm).to(log_prob.dtype)  # (B,1)
    if arm.needs_row_entropy and row_entropy is None:
        raise ValueError("an entropy-weighted part (adv_entropy_exp / nll_entropy_exp != 0) needs row_entropy")
    terms = upge_token_loss(log_prob, old_log_prob, advantages, response_mask, arm)
    if arm.adv == "outcome":
        terms.advantage = advantages
    loss_mat = terms.loss_mat if token_weight is None else terms.loss_mat * token_weight
    loss = aggregate_arm_loss(
        loss_mat,
        response_mask,
        arm,
        dp_size=dp_size,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        loss_scale_factor=loss_scale_factor,
    )
    if arm.has_nll:
        terms.nll_loss = entropy_weighted_nll(
            log_prob, response_mask, row_entropy, arm, token_weight=token_weight, dp_size=dp_size,
            num_tokens=num_tokens, num_seqs=num_seqs, loss_scale_factor=loss_scale_factor,
        )
        loss = loss + terms.nll_loss
    return loss, terms
