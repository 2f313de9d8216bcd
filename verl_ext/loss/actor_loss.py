"""``hpt_actor_loss``: a drop-in replacement for verl's ``verl.workers.utils.losses.ppo_loss``.

Bind it once and hand it to the actor (``ActorRolloutRefWorker.set_loss_fn`` / ``actor.set_loss_fn``)::

    loss_fn = functools.partial(hpt_actor_loss, config=actor_cfg, upge=load_upge_config(cfg.hpt.loss))

verl's engine calls ``loss_fn(model_output=..., data=micro_batch, dp_group=...)`` once per
micro-batch and back-propagates each result undivided (no 1/gradient-accumulation factor); FSDP
then averages gradients over the D DP ranks. Each row belongs to one arm (``hpt_row_kind``, a
``RowKind``: 0 rollout, 1 demo, 2 demo_off; see :mod:`verl_ext.loss.batch_keys`), and the micro-batch loss is

    L = s · ( Σ_arm [coef_arm · agg_arm(w ⊙ ℓ_arm) + c_N,arm · agg_N,arm(w ⊙ e^{κ_N H̄} ⊙ (−log π_θ))]
              −  c_H · agg_H(H)  [+ c_KL · agg(KL)] )

with ℓ_arm the arm's UPGE surrogate and the optional entropy-weighted NLL term
(:mod:`verl_ext.loss.upge`), w the row weight (times verl's ``rollout_is_weights`` on rollout rows),
H the token entropy over all live tokens of all arms (a demonstration trained by both demo arms is
two rows, so its tokens count twice there), KL verl's ``use_kl_loss`` term, and s = 1/D when
``average_over_dp_ranks`` else 1.

Every aggregation is one of two kinds, and the 1/D of ``average_over_dp_ranks`` means different
things for them:

- *Global* (verl's modes with the arm's totals over the global mini-batch, and ``const-len``):
  the micro-batch loss is a partial sum, scaled by D, so Σ_micro Σ_ranks / D is the global-batch
  loss whatever the split. The release computes the Σ/const terms (``const-len``) per micro-batch
  without the ×D and FSDP averages them, so its gradient is exactly 1/D of the global-batch loss's:
  for these terms ``average_over_dp_ranks`` (s = 1/D) *is* the release rule.
- *Per micro-batch mean* (``micro-token-mean``: the release's SFT arm, SRFT's NLL term and, with
  ``entropy_agg: micro-token-mean``, the entropy bonus): the release subtracts the mean over *this
  micro-batch's* tokens in every micro-batch, undivided, and FSDP averages ranks, so its gradient is
  (1/D) Σ_ranks Σ_micro ∇mean_micro. That is not 1/D of any global mean (it grows with the number of
  micro-batches k, ≈ k·D × the global mean / D), so a global mean times s = 1/D would be 1/(k·D) of
  the release's term. These terms are computed as mean_micro · D, so that with s = 1/D each
  micro-batch contributes mean_micro undivided and the FSDP average gives the release's (1/D) Σ Σ.

``hpt.loss.entropy_agg`` chooses the entropy bonus's kind per preset: ``global`` (verl's
``actor.loss_agg_mode`` over the live rows of the global mini-batch; every non-release preset) or
``micro-token-mean`` (the official release, LUFFY and SRFT code: ``c_H · masked_mean(H)`` of each
micro-batch; the release presets). The KL term always follows verl (no release preset uses it).
Apart from ``micro-token-mean`` terms, a mixed batch yields the sum of the arms' gradients whatever
the micro-batch split or DP size (``UPGELossConfig.split_invariant``).

Metrics follow ppo_loss's conventions (``verl.utils.metric.Metric``): quantities normalised by
global totals are partial sums per micro-batch (``SUM``), others are ``MEAN``; per arm, with
P = ``hpt/rl`` (rollout), ``hpt/sft`` (demo) or ``hpt/off`` (demo_off; only when that arm is set):
``P/pg_loss`` (rollout, demo_off) resp. ``P/loss`` (demo), ``P/clipfrac``,
``P/clipfrac_lower``, ``P/ppo_kl``, ``P/ratio_mean`` (token-weighted, exact over the mini-batch),
``P/ratio_min``/``P/ratio_max`` (``MIN``/``MAX``; ±inf in a micro-batch without that arm, so they
never distort the step's extremes), ``P/nll_term`` (the arm's entropy-weighted NLL term, only for an
arm with ``nll_coef != 0``), ``P/adv_mean`` (token mean of Â, only for ``adv: outcome``),
``hpt/sft/nll``, ``hpt/demo_token_share`` (tokens of both demo arms / all live tokens); plus verl's
``actor/pg_loss``, ``actor/pg_clipfrac``, ``actor/ppo_kl``, ``actor/pg_clipfrac_lower`` (rollout
arm), ``actor/entropy_loss``, ``kl_loss``, ``kl_coef``. Every key is emitted on every micro-batch,
because verl aggregates per-key lists across DP ranks and requires equal lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from tensordict import TensorDict

from verl.trainer.ppo.core_algos import agg_loss, kl_penalty
from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.padding import no_padding_2_padding

from verl_ext.loss.batch_keys import (
    ALL_TOTAL_KEYS,
    ARM_KINDS,
    ARM_TOTAL_KEYS,
    HPT_PREFIX_MASK,
    HPT_ROW_KIND,
    LIVE_SEQS_TOTAL_KEY,
    HPT_ROW_WEIGHT,
    RowKind,
    arm_token_masks,
    row_kinds,
)
from verl_ext.loss.config import ARM_NAMES, DEMO_ARMS, UPGELossConfig
from verl_ext.loss.fused_old_log_prob import FUSED_KEY, micro_batch_stats
from verl_ext.loss.gal import HPT_GAL_WEIGHT
from verl_ext.loss.upge import UPGETokenTerms, row_mean_entropy, upge_arm_loss

ARM_METRIC_PREFIX = {"rollout": "hpt/rl", "demo": "hpt/sft", "demo_off": "hpt/off"}
ARM_LOSS_METRIC = {"rollout": "pg_loss", "demo": "loss", "demo_off": "pg_loss"}
# Modes whose normaliser is a global count; const-len, token-sum and micro-token-mean need none.
_NEEDS_TOTALS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
# Per-token verifier scores, for adv: outcome. verl's trainer sets token_level_scores = rm_scores
# (the score on the row's last response token) before the actor update; either one will do.
SCORE_KEYS = ("token_level_scores", "rm_scores")


@dataclass
class _Totals:
    """Global-mini-batch counts of one arm (or of all live rows); None = unknown (local fallback)."""

    tokens: Optional[float]
    seqs: Optional[float]


def hpt_actor_loss(config, model_output, data: TensorDict, dp_group=None, *, upge: UPGELossConfig):
    """Per-micro-batch actor loss: the UPGE arms plus verl's entropy bonus and KL loss.

    Same signature and return value as ``ppo_loss(config, model_output, data, dp_group)``:
    ``(loss scalar, dict of Metric)``. ``config`` is verl's ActorConfig (entropy_coeff,
    use_kl_loss, kl_loss_coef, kl_loss_type, loss_agg_mode for the KL term and for the entropy
    bonus under ``entropy_agg: global``, loss_scale_factor, global_batch_info); ``upge`` the
    validated ``hpt.loss`` node. Arms with ``adv: outcome`` read the rows' scores from
    ``token_level_scores`` (or ``rm_scores``); parts weighted by H̄_i read ``model_output["entropy"]``.
    """
    # B = rows of this micro-batch, T = response width (verl pads the packed outputs back to it)
    log_prob = no_padding_2_padding(model_output["log_probs"], data)  # (B, T) log π_θ(y_t | ·)
    entropy = model_output.get("entropy", None)
    if entropy is not None:
        entropy = no_padding_2_padding(entropy, data)  # (B, T) H_t

    dp_size = tu.get_non_tensor_data(data=data, key="dp_size", default=1)
    batch_num_tokens = tu.get_non_tensor_data(data=data, key="batch_num_tokens", default=None)
    global_batch_size = tu.get_non_tensor_data(data=data, key="global_batch_size", default=None)
    # Keep verl's side effect: other code (e.g. verl's policy losses) reads config.global_batch_info.
    config.global_batch_info["dp_size"] = dp_size
    config.global_batch_info["batch_num_tokens"] = batch_num_tokens
    config.global_batch_info["global_batch_size"] = global_batch_size
    config.global_batch_info["loss_scale_factor"] = config.loss_scale_factor
    verl_global = (
        dp_size > 1
        or batch_num_tokens is not None
        or global_batch_size is not None
        or config.loss_scale_factor is not None
    )

    # A fused step (hpt.fuse_old_log_prob, verl_ext/loss/fused_old_log_prob.py): this forward runs at θold.
    fused = bool(tu.get_non_tensor_data(data=data, key=FUSED_KEY, default=False))
    fields = ["response_mask", "old_log_probs", "advantages"]
    fields += [k for k in ("rollout_is_weights", "ref_log_prob", HPT_ROW_KIND, HPT_ROW_WEIGHT, HPT_PREFIX_MASK)
               if k in data.keys()]
    if fused and "rollout_log_probs" in data.keys():
        fields.append("rollout_log_probs")
    if upge.gal_coef:
        if HPT_GAL_WEIGHT not in data.keys():
            raise ValueError(f"hpt.loss.gal_coef={upge.gal_coef} needs the per-row {HPT_GAL_WEIGHT!r} in the batch "
                             "(RayHPTTrainer._update_actor fills it from the old log-probs)")
        fields.append(HPT_GAL_WEIGHT)
    score_key = _check_row_inputs(upge, data, entropy is not None)
    if score_key is not None:
        fields.append(score_key)
    have_totals = all(k in data.keys() for k in ALL_TOTAL_KEYS)
    if have_totals:
        fields += list(ALL_TOTAL_KEYS)
        if LIVE_SEQS_TOTAL_KEY in data.keys():
            fields.append(LIVE_SEQS_TOTAL_KEY)
    td = data.select(*fields).to_padded_tensor()

    response_mask = td["response_mask"].to(torch.bool)  # (B, T)
    num_rows = response_mask.shape[0]
    advantages = td["advantages"]  # (B, T)
    # (B, T) log π_θold: the separate pass's, or in a fused step this forward's own, detached (ratio 1)
    old_log_prob = log_prob.detach() if fused else td["old_log_probs"]
    arm_code = (
        row_kinds(td[HPT_ROW_KIND].reshape(num_rows))
        if HPT_ROW_KIND in td.keys()
        else torch.zeros(num_rows, dtype=torch.int64, device=response_mask.device)
    )  # (B,) RowKind: 0 rollout, 1 SFT demonstration, 2 off-policy demonstration
    row_weight = td[HPT_ROW_WEIGHT].reshape(num_rows).to(log_prob.dtype) if HPT_ROW_WEIGHT in td.keys() else None
    live = row_weight > 0 if row_weight is not None else torch.ones(num_rows, dtype=torch.bool, device=arm_code.device)
    valid = response_mask & live.unsqueeze(-1)  # (B, T): tokens of non-padding rows
    prefix = td[HPT_PREFIX_MASK] if HPT_PREFIX_MASK in td.keys() else None  # (B, T) demo-prefix tokens
    arm_masks = arm_token_masks(response_mask, arm_code, live, prefix)  # arm -> (B, T) bool

    totals = _arm_totals(td, upge, have_totals, batch_num_tokens, global_batch_size)
    use_sum = have_totals or verl_global
    metric_agg = AggregationType.SUM if use_sum else AggregationType.MEAN
    scale = 1.0 / dp_size if upge.average_over_dp_ranks else 1.0

    metrics = {}
    # Zero, but attached to the graph: a micro-batch of padding rows only (no live row, no entropy/KL
    # term) must still back-propagate, since verl calls loss.backward() on every micro-batch.
    policy_loss = torch.where(valid, log_prob, 0.0).sum() * 0.0
    local_tokens = {}
    for name in ARM_NAMES:
        rows = arm_masks[name].any(dim=-1) | (live & (arm_code == ARM_KINDS[name]))  # (B,)
        n_rows = int(rows.sum())
        arm = upge.arm(name)
        if arm is None:
            if n_rows:
                raise ValueError(f"hpt.loss.{name} is null but the micro-batch has {n_rows} live {name} rows")
            local_tokens[name] = 0
            continue
        if n_rows == 0:
            local_tokens[name] = 0
            metrics.update(_arm_metrics(name, None, None, None, totals[name], dp_size, metric_agg, None))
            metrics.update(_extra_arm_metrics(name, arm, None, scale, metric_agg, None, totals[name], dp_size))
            continue
        # The arm works on its own rows only: no work, and no NaN risk, on the other arm's rows.
        pick = _row_picker(rows, n_rows, num_rows)  # (B, ...) -> (b, ...), b = n_rows
        mask = pick(arm_masks[name])  # (b, T): the arm's tokens of its rows
        local_tokens[name] = mask.sum()
        arm_log_prob = pick(log_prob)
        weight = None if row_weight is None else pick(row_weight).unsqueeze(-1)
        row_entropy = row_mean_entropy(pick(entropy), mask) if arm.needs_row_entropy else None  # (b,1)
        row_score = pick(td[score_key]).sum(dim=-1) if arm.adv == "outcome" else None  # (b,)
        if name == "rollout" and "rollout_is_weights" in td.keys():
            # verl's rollout-correction IS weights describe the rollout engine's sampling; demo tokens
            # were not sampled by it, so they only weight the rollout arm.
            is_w = pick(td["rollout_is_weights"])
            weight = is_w if weight is None else weight * is_w
        arm_loss, terms = upge_arm_loss(
            arm_log_prob,
            pick(old_log_prob),
            pick(advantages),
            mask,
            arm,
            token_weight=weight,
            dp_size=dp_size,
            num_tokens=totals[name].tokens,
            num_seqs=totals[name].seqs,
            loss_scale_factor=config.loss_scale_factor,
            row_score=row_score,
            row_entropy=row_entropy,
        )
        arm_loss = arm_loss * scale
        policy_loss = policy_loss + arm_loss
        metrics.update(_arm_metrics(name, arm_loss, terms, mask, totals[name], dp_size, metric_agg, arm_log_prob))
        metrics.update(_extra_arm_metrics(name, arm, terms, scale, metric_agg, mask, totals[name], dp_size))

    metrics.update(_share_metric(totals, local_tokens))
    for suffix in ("clipfrac", "ppo_kl", "clipfrac_lower"):
        key = f"{ARM_METRIC_PREFIX['rollout']}/{suffix}"
        if key in metrics:
            metrics[f"actor/pg_{suffix}" if suffix != "ppo_kl" else "actor/ppo_kl"] = metrics[key]
    metrics["actor/pg_loss"] = Metric(value=policy_loss, aggregation=metric_agg)

    if upge.gal_coef:
        # DYPO's group alignment surrogate: Σ_rows −w_r · Σ_t log π_θ(y_rt), w_r per row from the
        # trainer (already normalised over the step), × D for FSDP's rank average (verl_ext/loss/gal.py).
        gal_w = td[HPT_GAL_WEIGHT].reshape(num_rows).to(log_prob.dtype)  # (B,)
        seq_logp = torch.where(valid, log_prob, 0.0).sum(dim=-1)  # (B,) Σ_t log π_θ
        gal = -(gal_w * seq_logp).sum() * dp_size
        policy_loss = policy_loss + upge.gal_coef * gal * scale
        metrics["actor/hpt/gal_surrogate"] = Metric(value=gal.detach() / dp_size, aggregation=AggregationType.SUM)

    all_totals = totals["all"]

    def agg_over_live_rows(loss_mat):
        # verl's own aggregation (as ppo_loss does for entropy/KL), normalised by the live-row totals.
        return agg_loss(loss_mat=loss_mat, loss_mask=valid, loss_agg_mode=config.loss_agg_mode, dp_size=dp_size,
                        batch_num_tokens=all_totals.tokens, global_batch_size=all_totals.seqs,
                        loss_scale_factor=config.loss_scale_factor)

    if entropy is not None:
        if upge.entropy_agg == "micro-token-mean":
            # The release: c_H · mean entropy of this micro-batch, undivided, in every micro-batch.
            # × D so that s = 1/D leaves it undivided and FSDP's average gives (1/D) Σ_ranks Σ_micro.
            entropy_loss = micro_token_mean(entropy, valid)
            policy_loss = policy_loss - config.entropy_coeff * entropy_loss * dp_size * scale
            # Logged as the release logs it: the micro-batch mean, averaged over micro-batches.
            metrics["actor/entropy_loss"] = Metric(value=entropy_loss.detach(), aggregation=AggregationType.MEAN)
        else:
            entropy_loss = agg_over_live_rows(entropy)
            policy_loss = policy_loss - config.entropy_coeff * entropy_loss * scale
            metrics["actor/entropy_loss"] = Metric(value=entropy_loss, aggregation=metric_agg)

    if config.use_kl_loss:
        kld = kl_penalty(logprob=log_prob, ref_logprob=td["ref_log_prob"], kl_penalty=config.kl_loss_type)
        kl_loss = agg_over_live_rows(kld)
        policy_loss = policy_loss + kl_loss * config.kl_loss_coef * scale
        metrics["kl_loss"] = Metric(value=kl_loss, aggregation=metric_agg)
        metrics["kl_coef"] = config.kl_loss_coef

    if fused:  # what the separate pass would have given fit: entropy and mismatch partial sums
        sampled = response_mask & (arm_code == RowKind.ROLLOUT).unsqueeze(-1)  # (B, T) tokens of rollout rows
        if prefix is not None:
            sampled = sampled & ~prefix.bool()  # demonstration prefixes were not sampled
        rollout_lp = td["rollout_log_probs"] if "rollout_log_probs" in td.keys() else None
        metrics.update(micro_batch_stats(log_prob, entropy, response_mask, rollout_lp, sampled))

    return policy_loss, metrics


def micro_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t values·mask / max(Σ mask, 1) over this micro-batch, a scalar: (B,T), (B,T) bool -> ()."""
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp(min=1)


def _check_row_inputs(upge: UPGELossConfig, data: TensorDict, have_entropy: bool) -> Optional[str]:
    """The score key ``adv: outcome`` reads (None if no arm needs one); raises, naming the config key,
    when a part's input is missing from the micro-batch."""
    score_key = None
    for name in ARM_NAMES:
        arm = upge.arm(name)
        if arm is None:
            continue
        if arm.needs_row_entropy and not have_entropy:
            key = "adv_entropy_exp" if arm.adv == "outcome" and arm.adv_entropy_exp != 0.0 else "nll_entropy_exp"
            raise ValueError(
                f"hpt.loss.{name}.{key}={getattr(arm, key)!r} weights rows by their mean entropy, but the model "
                "output has no entropy: set actor_rollout_ref.actor.calculate_entropy=true (verl computes the "
                "entropy only then or when actor.entropy_coeff != 0)"
            )
        if arm.adv == "outcome" and score_key is None:
            score_key = next((k for k in SCORE_KEYS if k in data.keys()), None)
            if score_key is None:
                raise ValueError(
                    f"hpt.loss.{name}.adv='outcome' needs each row's verifier score, but the batch has none of "
                    f"{list(SCORE_KEYS)}"
                )
    return score_key


def _extra_arm_metrics(name, arm, terms, scale, metric_agg, mask, totals: _Totals, dp_size) -> dict:
    """Metrics of the optional parts: ``P/nll_term`` (nll_coef != 0), ``P/adv_mean`` (adv: outcome)."""
    prefix, out = ARM_METRIC_PREFIX[name], {}
    if arm.has_nll:
        value = 0.0 if terms is None else terms.nll_loss.detach() * scale
        out[f"{prefix}/nll_term"] = Metric(value=value, aggregation=metric_agg)
    if arm.adv == "outcome":
        if totals.tokens is not None:
            denom, agg = max(totals.tokens, 1) / dp_size, AggregationType.SUM
        else:
            denom, agg = (mask.sum().clamp(min=1) if mask is not None else 1), AggregationType.MEAN
        value = 0.0 if terms is None else torch.where(mask, terms.advantage, 0.0).sum() / denom
        out[f"{prefix}/adv_mean"] = Metric(value=value, aggregation=agg)
    return out


def _arm_totals(td, upge: UPGELossConfig, have_totals: bool, batch_num_tokens, global_batch_size) -> dict:
    """Per-arm and all-row global totals, from the ``hpt_*_total`` keys or verl's own counts."""
    if have_totals:
        out = {}
        for name in ARM_NAMES:
            tok_key, seq_key = ARM_TOTAL_KEYS[name]
            # One value per mini-batch, repeated on each of its rows: any row will do, max() is cheap.
            out[name] = _Totals(int(td[tok_key].max().item()), int(td[seq_key].max().item()))
        # A prefix-guided row has tokens in two arms: count its sequence once (LIVE_SEQS_TOTAL_KEY).
        seqs = (int(td[LIVE_SEQS_TOTAL_KEY].max().item()) if LIVE_SEQS_TOTAL_KEY in td.keys()
                else sum(out[n].seqs for n in ARM_NAMES))
        out["all"] = _Totals(sum(out[n].tokens for n in ARM_NAMES), seqs)
        return out
    arms = [n for n in ARM_NAMES if upge.arm(n) is not None]
    if len(arms) > 1:
        for name in arms:
            if upge.arm(name).agg in _NEEDS_TOTALS:
                raise ValueError(
                    f"hpt.loss.{name}.agg={upge.arm(name).agg!r} normalises by per-arm totals over the global "
                    f"mini-batch, but the batch lacks {list(ALL_TOTAL_KEYS)}: call "
                    "verl_ext.loss.annotate_arm_token_counts(batch, mini_batch_size=..., dp_size=...) "
                    "before update_actor"
                )
    # A single-arm method: verl's own totals over all rows are this arm's totals.
    verl_totals = _Totals(batch_num_tokens, global_batch_size)
    return {**{name: verl_totals for name in ARM_NAMES}, "all": verl_totals}


def _row_picker(rows: torch.Tensor, n_rows: int, num_rows: int):
    """Selects the arm's rows from (B,...) tensors; the identity when the arm owns every row."""
    if n_rows == num_rows:
        return lambda t: t
    index = rows.nonzero(as_tuple=True)[0]
    return lambda t: t.index_select(0, index)


def _arm_metrics(
    name: str,
    arm_loss: Optional[torch.Tensor],
    terms: Optional[UPGETokenTerms],
    mask: Optional[torch.Tensor],
    totals: _Totals,
    dp_size: int,
    metric_agg: AggregationType,
    log_prob: Optional[torch.Tensor],
) -> dict:
    """The arm's metrics on this micro-batch; ``terms is None`` when the micro-batch has none of its rows."""
    prefix = ARM_METRIC_PREFIX[name]
    if totals.tokens is not None:
        # Σ_micro-batch x / N_global · dp, SUM over micro-batches, mean over ranks = exact global mean.
        denom, agg = max(totals.tokens, 1) / dp_size, AggregationType.SUM
    else:
        denom, agg = (mask.sum().clamp(min=1) if mask is not None else 1), AggregationType.MEAN

    def token_mean(values, sign=1.0):
        if values is None:  # no rows, or no such clip mask: nothing to count
            return Metric(value=0.0, aggregation=agg)
        if values.dtype == torch.bool:  # indicators are counted exactly
            total = (values & mask).sum().double()
        else:
            total = torch.where(mask, values, 0.0).sum()
        return Metric(value=sign * total / denom, aggregation=agg)

    if terms is None:
        out = {f"{prefix}/{ARM_LOSS_METRIC[name]}": Metric(value=0.0, aggregation=metric_agg)}
        for key in ("clipfrac", "clipfrac_lower", "ppo_kl", "ratio_mean"):
            out[f"{prefix}/{key}"] = token_mean(None)
        # ±inf never wins the step's MIN/MAX against a micro-batch that has the arm.
        out[f"{prefix}/ratio_min"] = Metric(AggregationType.MIN, float("inf"))
        out[f"{prefix}/ratio_max"] = Metric(AggregationType.MAX, float("-inf"))
        if name == "demo":
            out[f"{prefix}/nll"] = token_mean(None)
        return out

    out = {f"{prefix}/{ARM_LOSS_METRIC[name]}": Metric(value=arm_loss.detach(), aggregation=metric_agg)}
    out[f"{prefix}/clipfrac"] = token_mean(terms.clipped)
    out[f"{prefix}/clipfrac_lower"] = token_mean(terms.clipped_lower)
    out[f"{prefix}/ppo_kl"] = token_mean(terms.neg_kl, sign=-1.0)
    out[f"{prefix}/ratio_mean"] = token_mean(terms.ratio)
    # where() instead of ratio[mask]: no nonzero/gather pass; a row set without tokens gives ±inf.
    out[f"{prefix}/ratio_min"] = Metric(AggregationType.MIN, torch.where(mask, terms.ratio, float("inf")).min())
    out[f"{prefix}/ratio_max"] = Metric(AggregationType.MAX, torch.where(mask, terms.ratio, float("-inf")).max())
    if name == "demo":
        out[f"{prefix}/nll"] = token_mean(log_prob.detach(), sign=-1.0)
    return out


def _share_metric(totals: dict, local_tokens: dict) -> dict:
    """Fraction of live response tokens that are demonstration tokens, both demo arms together
    (global when the per-arm totals are known)."""
    if totals["demo"] is not totals["rollout"] and all(totals[n].tokens is not None for n in ARM_NAMES):
        demo, n_all = sum(totals[n].tokens for n in DEMO_ARMS), totals["all"].tokens
        share = demo / max(n_all, 1)
    else:
        n_demo, n_all = sum(local_tokens[n] for n in DEMO_ARMS), sum(local_tokens[n] for n in ARM_NAMES)
        share = float(n_demo) / max(float(n_all), 1.0)
    return {"hpt/demo_token_share": Metric(AggregationType.MEAN, float(share))}
