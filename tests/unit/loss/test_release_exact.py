"""Release presets against the official HPT release's loss rule, total gradient, float64 on CPU.

The reference below is the release's update rule (TsinghuaC3I/Unify-Post-Training, a LUFFY fork:
``mix_src/mix_actor.py`` update_policy), re-derived and written here independently of both that
code and ``verl_ext.loss``. For D data-parallel
ranks, each with its own micro-batches (rows of that rank only), the release computes per
micro-batch

    ℓ_mb = pg_mb + coef·sft_mb − c_H · mean_{tokens of mb}(H)        (SRFT: + its own terms, below)

back-propagates ℓ_mb / G undivided (G = ppo_mini_batch_size/ppo_micro_batch_size = 64/64 = 1 in
every release script) and FSDP averages the ranks, so the gradient of one mini-batch is

    g = (1/D) Σ_ranks Σ_mb ∇ℓ_mb

with, on the micro-batch's rows (on = rollout rows, demo = demonstration rows, L = 8192):

    pg_mb     (Σ_on −Â·exp(log π_θ − log π_θold) + Σ_demo off-policy terms) / L
    sft_mb    mean over the demo tokens of the micro-batch of −log π_θ (left out without demo rows)
    LUFFY     off-policy term on demo tokens −Â·p/(p+0.1), p = π_θ
    SRFT      H̄_i = row mean entropy (detached); on-policy term −Â'_i·log π_θ with
              Â'_i = 0.1·exp(H̄_i) if Σ_t score_it == 1 else −1; demo: −Â·p/(p+0.1);
              sft_mb = mean over the demo tokens of the micro-batch of 0.5·exp(−H̄_i)·(−log π_θ)

Each preset's gradient through ``hpt_actor_loss`` (verl's micro-batch layout, its dp_size scaling,
undivided per-micro-batch backward, FSDP's average over ranks: ``tests.unit.loss.test_upge.run_loss``)
must equal this to 1e-12 for 1 to 6 micro-batches × ranks.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest
import torch

from tests.unit.loss.test_upge import DT, Batch, preset, run_loss, upge_loss_fn

L_CONST = 8192
C_H = 0.001  # the release's entropy_coeff
TOL = 1e-12
RELEASE_PRESETS = ["hpt_release", "hpt_release_global", "hpt_release_off", "luffy", "srft_release"]
# (micro-batches per rank k, DP ranks D): k·D from 1 to 6
SPLITS = [(1, 1), (2, 1), (3, 1), (6, 1), (1, 2), (2, 2), (3, 2), (1, 3), (2, 3), (1, 6)]
N_ROWS = 12
ROWS = {  # demo rows (hpt_row_kind = 1) and demo_off rows (= 2) per preset
    "hpt_release": ([1, 4, 8, 10], []),
    "hpt_release_global": ([1, 4, 8, 10], []),
    "hpt_release_off": ([1, 8], [4, 10]),
    "luffy": ([2, 5, 7, 11], []),
    "srft_release": ([2, 5, 7, 11], []),
}


def _masked_mean(values, mask):
    # the release's masked_mean: Σ values·mask / Σ mask (NaN without tokens: the caller skips it)
    return (values * mask).sum() / mask.sum()


def release_micro_loss(name, batch, rows, sft_coef=1.0, global_sft=False):
    """The release's loss ℓ_mb of one micro-batch holding ``rows`` (one rank's rows)."""
    rows = torch.as_tensor(rows)
    logp = batch.response_log_prob()[rows]  # (b,R)
    ent = batch.response_entropy()[rows]  # (b,R)
    m = batch.response_mask[rows].to(DT)  # (b,R)
    old, adv = batch.old_log_probs[rows], batch.advantages[rows]
    kind = batch.is_demo[rows]
    on, demo, demo_off = (kind == 0).to(DT)[:, None], (kind == 1).to(DT)[:, None], (kind == 2).to(DT)[:, None]
    p = logp.exp()
    shaped = p / (p + 0.1)

    if name == "srft_release":
        h_row = ((ent * m).sum(-1) / m.sum(-1)).detach()[:, None]  # (b,1)
        correct = (batch.row_score[rows] == 1)[:, None]
        on_adv = torch.where(correct, 0.1 * torch.exp(h_row), torch.tensor(-1.0, dtype=DT))
        token = on * (-on_adv * logp) + demo * (-adv * shaped)
        pg = (token * m).sum() / L_CONST
        sft_token = -logp * 0.5 * torch.exp(-h_row)
    else:
        ratio = torch.exp(logp - old)
        off_token = demo * (-adv * shaped) if name == "luffy" else demo_off * (-adv * shaped)
        pg = ((on * (-adv * ratio) + off_token) * m).sum() / L_CONST
        sft_token = -logp

    loss = pg - C_H * _masked_mean(ent, m)
    has_sft = name != "luffy" and bool(demo.any())
    if has_sft and not global_sft:
        sft = _masked_mean(sft_token * demo, m * demo)
        loss = loss + (sft if name == "srft_release" else sft_coef * sft)
    return loss


def release_gradient(name, batch, split, sft_coef=1.0):
    """g = (1/D) Σ_ranks Σ_mb ∇ℓ_mb (hpt_release_global: its SFT arm as (1/D)·global token mean)."""
    n_ranks = len(split)
    glob = name == "hpt_release_global"
    total = sum(release_micro_loss(name, batch, mb, sft_coef, glob) for rank in split for mb in rank) / n_ranks
    if glob:
        demo = (batch.is_demo == 1).to(DT)[:, None]
        m = batch.response_mask.to(DT) * demo
        total = total + sft_coef * _masked_mean(-batch.response_log_prob(), m) / n_ranks
    (g,) = torch.autograd.grad(total, batch.leaf)
    return g


def make_split(k, dp, seed):
    """verl's layout: rank r holds the r-th contiguous chunk; its rows are packed into k micro-batches
    in some order (dynamic batch size reorders rows), of uneven sizes."""
    g = torch.Generator().manual_seed(seed)
    per_rank = N_ROWS // dp
    split = []
    for r in range(dp):
        rows = (r * per_rank + torch.randperm(per_rank, generator=g)).tolist()
        cuts = sorted(torch.randperm(per_rank - 1, generator=g)[: k - 1].add(1).tolist())
        split.append([rows[a:b] for a, b in zip([0] + cuts, cuts + [per_rank])])
    assert all(len(mb) > 0 for rank in split for mb in rank) and len(split[0]) == k
    return split


def project_gradient(name, batch, split, upge=None, **actor):
    upge = upge if upge is not None else preset(name)
    dp = len(split)
    td = batch.tensordict(mini_batch_size=N_ROWS, dp_size=dp)
    fn = upge_loss_fn(upge, entropy_coeff=C_H, **actor)
    loss, metrics = run_loss(batch, fn, td, split, dp_size=dp, with_entropy=True, n_ranks=dp)
    (g,) = torch.autograd.grad(loss, batch.leaf)
    return g, metrics


def _batch(name, seed):
    demo, demo_off = ROWS[name]
    return Batch(N_ROWS, seed=seed, demo=demo, demo_off=demo_off)


@pytest.mark.parametrize("k,dp", SPLITS)
@pytest.mark.parametrize("name", RELEASE_PRESETS)
def test_release_preset_total_gradient_equals_the_release_rule(name, k, dp):
    for seed in (0, 1):
        batch = _batch(name, seed)
        split = make_split(k, dp, seed=100 * k + dp + seed)
        want = release_gradient(name, batch, split)
        got, _ = project_gradient(name, batch, split)
        assert want.abs().max() > 1e-5, "the reference gradient is ~0: nothing is tested"
        diff = (got - want).abs().max().item()
        assert diff <= TOL, f"{name} k={k} D={dp} seed={seed}: max |Δgrad| = {diff:.3e}"


@pytest.mark.parametrize("k,dp", [(1, 1), (3, 2)])
def test_release_sft_loss_coef(k, dp):
    # Qwen2.5-Math-1.5B runs sft_loss_coef = 0.3 (hpt.loss.demo.coef)
    batch = _batch("hpt_release", 3)
    split = make_split(k, dp, seed=7)
    upge = preset("hpt_release")
    upge = replace(upge, demo=replace(upge.demo, coef=0.3))
    got, _ = project_gradient("hpt_release", batch, split, upge=upge)
    assert (got - release_gradient("hpt_release", batch, split, sft_coef=0.3)).abs().max() <= TOL


@pytest.mark.parametrize("name", RELEASE_PRESETS)
def test_entropy_bonus_is_what_the_check_detects(name):
    # The tests above can fail: verl's global entropy mean (the old behaviour) gives 1/(k·D) of the
    # release's entropy gradient, a difference far above the tolerance, for every k·D > 1 ...
    batch = _batch(name, 0)
    split = make_split(2, 2, seed=5)
    want = release_gradient(name, batch, split)
    global_agg = replace(preset(name), entropy_agg="global")
    got, _ = project_gradient(name, batch, split, upge=global_agg)
    assert (got - want).abs().max() > 1e-6
    # ... and the entropy term alone (c_H only, no policy term) is exactly k·D times larger in the
    # release when every micro-batch holds the same number of tokens.
    upge = preset(name)
    zero_arms = {a: replace(upge.arm(a), coef=0.0, nll_coef=0.0) for a in ("rollout", "demo", "demo_off")
                 if upge.arm(a) is not None}
    only_entropy = replace(upge, **zero_arms)
    equal = Batch(N_ROWS, seed=9, demo=ROWS[name][0], demo_off=ROWS[name][1], resp_len=5)
    equal.response_mask[:] = 1
    equal.attention_mask[:, equal.P :] = 1
    ratios = []
    for k, dp in [(1, 1), (2, 1), (3, 1), (1, 2), (3, 2)]:
        size = N_ROWS // (k * dp)  # equal micro-batches: contiguous slices, k per rank
        sp = [[list(range((r * k + j) * size, (r * k + j + 1) * size)) for j in range(k)] for r in range(dp)]
        g_rel, _ = project_gradient(name, equal, sp, upge=only_entropy)
        g_glob, _ = project_gradient(name, equal, sp, upge=replace(only_entropy, entropy_agg="global"))
        ratios.append((k * dp, (g_rel.norm() / g_glob.norm()).item()))
    for kd, ratio in ratios:
        assert abs(ratio - kd) < 1e-9, ratios


def test_srft_release_parts_each_matter():
    # Each SRFT part changes the gradient by far more than the tolerance: no part is dead code.
    batch = _batch("srft_release", 4)
    split = make_split(2, 3, seed=13)
    want = release_gradient("srft_release", batch, split)
    base = preset("srft_release")
    variants = {
        "no shaping": replace(base, demo=replace(base.demo, shaping_gamma=None)),
        "no NLL term": replace(base, demo=replace(base.demo, nll_coef=0.0)),
        "NLL global mean": replace(base, demo=replace(base.demo, nll_agg="token-mean")),
        "Â without entropy": replace(base, rollout=replace(base.rollout, adv_entropy_exp=0.0)),
        "batch Â": replace(base, rollout=replace(base.rollout, adv="batch")),
        "no 1/D": replace(base, average_over_dp_ranks=False),
    }
    for label, upge in variants.items():
        got, _ = project_gradient("srft_release", batch, split, upge=upge)
        assert (got - want).abs().max() > 1e-6, label
    assert set(batch.row_score.tolist()) == {0.0, 1.0}  # both outcomes occur


def test_outcome_advantage_reads_rm_scores_without_token_level_scores():
    batch = _batch("srft_release", 5)
    split = [[list(range(N_ROWS))]]
    want = release_gradient("srft_release", batch, split)
    td = batch.tensordict()
    td["rm_scores"] = td.pop("token_level_scores")
    loss, _ = run_loss(batch, upge_loss_fn(preset("srft_release"), entropy_coeff=C_H), td, split, with_entropy=True)
    (got,) = torch.autograd.grad(loss, batch.leaf)
    assert (got - want).abs().max() <= TOL


def test_missing_inputs_name_the_config_key():
    batch = _batch("srft_release", 6)
    fn = upge_loss_fn(preset("srft_release"), entropy_coeff=C_H)
    split = [[list(range(N_ROWS))]]
    with pytest.raises(ValueError, match=r"hpt\.loss\.rollout\.adv_entropy_exp=1\.0 .*calculate_entropy=true"):
        run_loss(batch, fn, batch.tensordict(), split, with_entropy=False)
    td = batch.tensordict()
    td.pop("token_level_scores")
    with pytest.raises(ValueError, match=r"hpt\.loss\.rollout\.adv='outcome' needs each row's verifier score"):
        run_loss(batch, fn, td, split, with_entropy=True)


def test_release_metrics_entropy_is_the_mean_of_micro_batch_means():
    from verl.utils.metric import Metric

    batch = _batch("srft_release", 8)
    split = make_split(3, 1, seed=17)
    _, metrics = project_gradient("srft_release", batch, split)
    ent, m = batch.response_entropy().detach(), batch.response_mask.to(DT)
    want = sum(_masked_mean(ent[mb], m[mb]).item() for mb in split[0]) / 3
    got = Metric.aggregate_dp([functools.reduce(lambda a, b: (a.extend(b), a)[1],
                                                [x["actor/entropy_loss"] for x in metrics])])
    assert abs(got - want) < 1e-12
    keys = set(metrics[0])
    assert {"hpt/sft/nll_term", "hpt/rl/adv_mean"} <= keys and all(set(x) == keys for x in metrics)
