"""The Unified Policy Gradient Estimator (UPGE), implemented once; each method is a YAML preset.

    config.py       UPGEArmConfig / UPGELossConfig, load_upge_config (the ``hpt.loss`` node)
    upge.py         pure tensor functions: per-token surrogate and aggregation of one arm, the per-row
                    outcome advantage and the entropy-weighted NLL term
    batch_keys.py   the per-row keys the trainer supplies; annotate_arm_token_counts
    actor_loss.py   hpt_actor_loss, the drop-in for verl's ppo_loss (rollout / demo / demo_off arms + entropy + KL)
    policy_loss.py  UPGE rollout arms registered as verl policy losses (``loss_mode=upge_*``)

Importing this package registers the ``upge*`` policy losses in verl's registry.
"""

from verl_ext.loss import policy_loss as _policy_loss  # noqa: F401  (registers upge* in verl)
from verl_ext.loss.actor_loss import hpt_actor_loss
from verl_ext.loss.batch_keys import (
    ALL_TOTAL_KEYS,
    ARM_KINDS,
    HPT_ROW_KIND,
    HPT_ROW_WEIGHT,
    RowKind,
    annotate_arm_token_counts,
    mini_batch_ids,
)
from verl_ext.loss.config import UPGEArmConfig, UPGEConfigError, UPGELossConfig, load_upge_config
from verl_ext.loss.upge import (
    aggregate_arm_loss,
    entropy_weighted_nll,
    outcome_advantage,
    row_mean_entropy,
    upge_arm_loss,
    upge_token_loss,
)

__all__ = [
    "ALL_TOTAL_KEYS",
    "ARM_KINDS",
    "HPT_ROW_KIND",
    "HPT_ROW_WEIGHT",
    "RowKind",
    "UPGEArmConfig",
    "UPGEConfigError",
    "UPGELossConfig",
    "aggregate_arm_loss",
    "annotate_arm_token_counts",
    "entropy_weighted_nll",
    "hpt_actor_loss",
    "load_upge_config",
    "mini_batch_ids",
    "outcome_advantage",
    "row_mean_entropy",
    "upge_arm_loss",
    "upge_token_loss",
]
