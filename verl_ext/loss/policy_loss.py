"""UPGE rollout arms registered as plain verl policy losses (``actor.policy_loss.loss_mode=<name>``).

For rollout-only methods verl's own ``ppo_loss`` is enough; these registrations let it run the
UPGE estimator without a custom loss_fn. A registered policy loss only receives
``(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights)``,
and ``actor.policy_loss`` is a closed dataclass (``PolicyLossConfig``: unknown keys are rejected
when verl builds it), so the stabilisation mask and reference denominator cannot be read from the
config: each combination is its own name. The numeric settings come from verl's keys:

    ε_low/ε_high   actor.clip_ratio_low / clip_ratio_high (fallback actor.clip_ratio)
    c (dual clip)  actor.clip_ratio_c (default 3.0; ppo_clip only, as verl's vanilla always applies it)
    aggregation    actor.loss_agg_mode with config.global_batch_info (exactly verl's normalisation)

    name            1_stable        π_ref      equals
    upge / upge_ppo ppo_clip + c    old        verl ``vanilla`` (PPO, GRPO, Dr.GRPO, DAPO clip-higher)
    upge_noclip     none            old        LUFFY / HPT release rollout term −Â·π_θ/π_θold
    upge_reinforce  none            self       REINFORCE −Â·log π_θ
    upge_cispo      cispo           old        verl ``cispo``
    upge_gspo       gspo_seq_clip   gspo_seq   verl ``gspo``

Demonstration rows need :func:`verl_ext.loss.actor_loss.hpt_actor_loss` (a policy loss never sees
the per-row keys). Importing this module registers the names; it must be imported in every Ray
worker (``verl_ext.plugins`` through ``VERL_USE_EXTERNAL_MODULES``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from verl.trainer.ppo.core_algos import register_policy_loss
from verl.utils import torch_functional as verl_F

from verl_ext.loss.config import VERL_AGG_MODES, UPGEArmConfig
from verl_ext.loss.upge import upge_arm_loss

REGISTERED_ARMS = {
    "upge": dict(stable="ppo_clip", ref="old"),
    "upge_ppo": dict(stable="ppo_clip", ref="old"),
    "upge_noclip": dict(stable="none", ref="old"),
    "upge_reinforce": dict(stable="none", ref="self"),
    "upge_cispo": dict(stable="cispo", ref="old"),
    "upge_gspo": dict(stable="gspo_seq_clip", ref="gspo_seq"),
}


def arm_from_actor_config(parts: dict, config, loss_agg_mode: str) -> UPGEArmConfig:
    """The rollout arm ``parts`` with ε, c and the aggregation taken from verl's actor config."""
    if loss_agg_mode not in VERL_AGG_MODES:
        raise ValueError(f"actor.loss_agg_mode={loss_agg_mode!r} is not one of {list(VERL_AGG_MODES)}")
    clip = config.clip_ratio
    low = config.clip_ratio_low if config.clip_ratio_low is not None else clip
    high = config.clip_ratio_high if config.clip_ratio_high is not None else clip
    clip_c = config.get("clip_ratio_c", 3.0) if parts["stable"] == "ppo_clip" else None
    arm = UPGEArmConfig(clip_low=low, clip_high=high, clip_c=clip_c, adv="batch", agg=loss_agg_mode, **parts)
    return arm.validate("actor (policy_loss.loss_mode=upge*)")


def _make_policy_loss(parts: dict):
    def policy_loss(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "token-mean",
        config: Optional[Any] = None,
        rollout_is_weights: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        assert config is not None, "the upge policy losses need verl's ActorConfig"
        arm = arm_from_actor_config(parts, config, loss_agg_mode)
        info = config.global_batch_info
        loss, terms = upge_arm_loss(
            log_prob,
            old_log_prob,
            advantages,
            response_mask.bool(),
            arm,
            token_weight=rollout_is_weights,
            dp_size=info.get("dp_size", 1),
            num_tokens=info.get("batch_num_tokens"),
            num_seqs=info.get("global_batch_size"),
            loss_scale_factor=info.get("loss_scale_factor"),
        )
        # Same three local-mean metrics as verl's vanilla (ppo_loss wraps them as MEAN Metrics).
        metrics = {
            "actor/pg_clipfrac": _fraction(terms.clipped, response_mask),
            "actor/ppo_kl": verl_F.masked_mean(-terms.neg_kl, response_mask).item(),
            "actor/pg_clipfrac_lower": _fraction(terms.clipped_lower, response_mask),
        }
        return loss, metrics

    return policy_loss


def _fraction(indicator: Optional[torch.Tensor], mask: torch.Tensor) -> float:
    if indicator is None:  # the arm has no such mask: nothing was clipped
        return 0.0
    return verl_F.masked_mean(indicator.float(), mask).item()


for _name, _parts in REGISTERED_ARMS.items():
    register_policy_loss(_name)(_make_policy_loss(_parts))
