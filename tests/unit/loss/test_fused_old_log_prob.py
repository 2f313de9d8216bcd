"""Old log-probs from the update's own forward (verl_ext/loss/fused_old_log_prob.py), float64 on CPU.

The fused loss's gradient equals the separate pass's for every preset (old log-probs = the same
policy's), whatever the micro-batch split and DP size; the entropy and mismatch metrics rebuilt from
per-micro-batch partial sums equal what verl's fit computes over the whole batch; the start refuses
the settings that read old log-probs before the update.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo.core_algos import agg_loss
from verl.utils import tensordict_utils as tu
from verl.utils.debug.metrics import calculate_debug_metrics
from verl.utils.metric import Metric

from verl_ext.loss import fused_old_log_prob as fused
from verl_ext.loss.fused_old_log_prob import FUSED_KEY, fusion_problems, micro_batch_stats, step_metrics
from tests.helpers import PRESETS
from tests.unit.loss.test_upge import DT, Batch, assert_grad_close, grad, preset, run_loss, upge_loss_fn

SPLITS = ([[list(range(10))]], [[[0, 5], [1, 2, 3, 4, 6, 7, 8, 9]]], [[[8, 1, 3], [0, 2, 4, 5, 6, 7, 9]]])


def _on_policy_batch(name, seed=0):
    """A batch whose old log-probs are the policy's own (drift 0): what the separate pass gives."""
    cfg = preset(name)
    demo = (list(range(10)) if cfg.rollout is None else [1, 4, 7]) if cfg.demo is not None else []
    demo_off = [2, 5] if cfg.demo_off is not None else []
    batch = Batch(10, seed, demo=demo, demo_off=demo_off, drift=torch.zeros(10, dtype=DT))
    assert torch.equal(batch.old_log_probs, batch.response_log_prob().detach() * batch.response_mask)
    return batch


def _fused_td(batch, **kw):
    td = batch.tensordict(**kw)
    td["old_log_probs"] = torch.full_like(td["old_log_probs"], float("nan"))  # the placeholder hook 2 puts there
    tu.assign_non_tensor(td, **{FUSED_KEY: True})
    return td


@pytest.mark.parametrize("name", [p for p in PRESETS if not preset(p).gal_coef])
def test_fused_gradient_equals_the_separate_pass_for_any_split(name):
    batch = _on_policy_batch(name)
    fn = upge_loss_fn(preset(name))
    # a fused run always has the update's entropies (actor.calculate_entropy=true, checked at start-up)
    ref, _ = run_loss(batch, fn, batch.tensordict(), SPLITS[0], with_entropy=True)
    for split in SPLITS:
        loss, _ = run_loss(batch, fn, _fused_td(batch), split, with_entropy=True)
        sep, _ = run_loss(batch, fn, batch.tensordict(), split, with_entropy=True)
        assert_grad_close(grad(sep, batch), grad(loss, batch))
    # two DP ranks (FSDP averages them)
    ranks = [[[0, 1, 2, 3, 4]], [[5, 6, 7, 8, 9]]]
    loss2, _ = run_loss(batch, fn, _fused_td(batch, mini_batch_size=10, dp_size=2), ranks, dp_size=2, n_ranks=2,
                        with_entropy=True)
    sep2, _ = run_loss(batch, fn, batch.tensordict(mini_batch_size=10, dp_size=2), ranks, dp_size=2, n_ranks=2,
                       with_entropy=True)
    assert_grad_close(grad(sep2, batch), grad(loss2, batch))
    assert torch.isfinite(grad(ref, batch)).all()


def test_the_placeholder_is_never_read_in_a_fused_step_and_poisons_an_unfused_one():
    batch = _on_policy_batch("hpt")
    fn = upge_loss_fn(preset("hpt"))
    td = _fused_td(batch)
    tu.assign_non_tensor(td, **{FUSED_KEY: False})  # the NaN placeholder without the flag: the loss reads it
    loss, _ = run_loss(batch, fn, td, SPLITS[0])
    assert not torch.isfinite(loss)  # NaN: the step guard skips it, loudly


def test_fused_ratio_is_one_where_the_separate_pass_has_rounding():
    """The point of the identity: with the separate pass off by float rounding the ratio is not 1."""
    batch = _on_policy_batch("grpo")
    batch.old_log_probs = batch.old_log_probs + 1e-9 * batch.response_mask
    fn = upge_loss_fn(preset("grpo"))
    _, m_fused = run_loss(batch, fn, _fused_td(batch), SPLITS[0])
    _, m_sep = run_loss(batch, fn, batch.tensordict(), SPLITS[0])
    key = "hpt/rl/ratio_max"
    assert float(m_fused[0][key].values[0]) == 1.0
    assert float(m_sep[0][key].values[0]) != 1.0


# ---------------------------------------------------------------- metrics from partial sums
def _metric_batch(seed=3):
    batch = Batch(10, seed, demo=[2, 7], pad=[9])
    g = torch.Generator().manual_seed(seed)
    batch.response_mask[9] = 0  # a padding row: no response token (verl_ext/hpt/merge.py)
    prefix = torch.zeros_like(batch.response_mask, dtype=torch.bool)
    prefix[0, :2] = True
    batch.prefix_mask = (prefix & batch.response_mask.bool()).to(DT)
    lp = batch.response_log_prob().detach()
    batch.rollout_log_probs = (lp + 1e-3 * torch.randn(lp.shape, generator=g, dtype=DT)) * batch.response_mask
    return batch


def _verl_aggregate(per_rank: list[list[dict]]) -> dict:
    """verl's collection of a loss's metrics over micro-batches and DP ranks (engine_workers.py)."""
    keys = per_rank[0][0].keys()
    out = {}
    for k in keys:
        ranks = []
        for micro in per_rank:
            m = Metric(micro[0][k].aggregation)
            for d in micro:
                m.extend(d[k])
            ranks.append(m)
        out["actor/" + k] = [Metric.aggregate_dp(ranks)]
    return out


@pytest.mark.parametrize("mode", fused.ENTROPY_AGG_MODES)
@pytest.mark.parametrize("split", [[[list(range(10))]], [[[0, 1, 2], [3, 4, 5, 6, 7, 8, 9]]],
                                   [[[0, 9], [4, 5]], [[1, 2, 3], [6, 7, 8]]]])
def test_entropy_and_mismatch_from_partial_sums_equal_verls_over_the_batch(mode, split):
    batch = _metric_batch()
    logp, ent = batch.response_log_prob().detach(), batch.response_entropy().detach()
    mask = batch.response_mask.bool()
    kind = batch.is_demo
    sampled_rows = kind == 0
    prefix = batch.prefix_mask.bool()
    per_rank = []
    for rank in split:
        micro = []
        for rows in rank:
            rows = torch.as_tensor(rows)
            sampled = mask[rows] & sampled_rows[rows, None] & ~prefix[rows]
            micro.append(micro_batch_stats(logp[rows], ent[rows], mask[rows], batch.rollout_log_probs[rows], sampled))
        per_rank.append(micro)
    got = step_metrics(_verl_aggregate(per_rank), len(split), mode)

    want_entropy = float(agg_loss(loss_mat=ent, loss_mask=mask, loss_agg_mode=mode))  # fit's actor/entropy
    assert got["actor/entropy"] == pytest.approx(want_entropy, rel=1e-12)
    view = DataProto.from_dict(tensors={  # neutralise_demo_rollout_log_probs's view: sampled rows and tokens
        "rollout_log_probs": batch.rollout_log_probs[sampled_rows], "old_log_probs": logp[sampled_rows],
        "response_mask": (mask & ~prefix)[sampled_rows].long(), "responses": batch.input_ids[sampled_rows, batch.P:]})
    want = calculate_debug_metrics(view)
    assert want["training/rollout_probs_diff_mean"] > 1e-6  # the metric has something to measure
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-15), key


def test_no_sampled_token_gives_verls_invalid_answer_and_no_partial_key_survives():
    batch = _metric_batch()
    logp = batch.response_log_prob().detach()
    none = torch.zeros_like(batch.response_mask, dtype=torch.bool)
    stats = micro_batch_stats(logp, None, batch.response_mask.bool(), batch.rollout_log_probs, none)
    metrics = _verl_aggregate([[stats]]) | {"actor/pg_loss": [1.0]}
    got = step_metrics(metrics, 1, "token-mean")
    assert got["training/rollout_probs_diff_valid"] == 0 and "actor/entropy" not in got
    assert set(metrics) == {"actor/pg_loss"}


# ---------------------------------------------------------------- start-up refusals
def _config(**over):
    cfg = OmegaConf.create({
        "hpt": {"fuse_old_log_prob": True, "loss": {"gal_coef": 0.0}},
        "algorithm": {"rollout_correction": None, "use_kl_in_reward": False},
        "actor_rollout_ref": {"actor": {"ppo_epochs": 1, "calculate_entropy": True, "loss_agg_mode": "token-mean"}}})
    for k, v in over.items():
        OmegaConf.update(cfg, k, v, merge=False)
    return cfg


@pytest.mark.parametrize("key,value,named", [
    ("actor_rollout_ref.actor.ppo_epochs", 2, "ppo_epochs=2"),
    ("algorithm.rollout_correction", {"rollout_is": None}, "algorithm.rollout_correction=null"),
    ("algorithm.use_kl_in_reward", True, "use_kl_in_reward"),
    ("hpt.loss.gal_coef", 0.5, "gal_coef"),
    ("actor_rollout_ref.actor.calculate_entropy", False, "calculate_entropy=true"),
    ("actor_rollout_ref.actor.loss_agg_mode", "seq-mean-token-sum-norm", "loss_agg_mode=seq-mean-token-sum-norm"),
])
def test_fusion_refuses_settings_that_read_old_log_probs_before_the_update(key, value, named):
    assert fusion_problems(_config()) == []
    problems = fusion_problems(_config(**{key: value}))
    assert len(problems) == 1 and named in problems[0] and "hpt.fuse_old_log_prob" in problems[0]
    assert fusion_problems(_config(**{key: value, "hpt.fuse_old_log_prob": False})) == []


def test_a_step_fuses_only_as_one_mini_batch():
    assert fused.fuses(128, 128) and not fused.fuses(256, 128) and not fused.fuses(64, 128)
    ph = fused.placeholder((4, 6))
    assert ph.batch["old_log_probs"].shape == (4, 6) and torch.isnan(ph.batch["old_log_probs"]).all()
