"""Tests of the Unified Policy Gradient Estimator loss (verl_ext.loss), float64 on CPU.

Every preset's gradient with respect to the *logits* is compared with an independent reference:
verl's own registered policy losses (vanilla, cispo, gspo), verl's REINFORCE function, or a
hand-written formula. The loss under test always goes through ``hpt_actor_loss`` with the micro-batch
layout verl's V0 actor update produces (``left_right_2_no_padding``, nested log-probs over the
unpadded sequences, ``no_padding_2_padding`` inside the loss).
"""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import copy
import functools
import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
import verl
from omegaconf import OmegaConf
from tensordict import TensorDict

from verl.trainer.ppo.core_algos import agg_loss, compute_policy_loss_reinforce, get_policy_loss_fn, kl_penalty
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.metric import Metric
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import left_right_2_no_padding

from verl_ext.loss import (
    ALL_TOTAL_KEYS,
    UPGEArmConfig,
    UPGEConfigError,
    UPGELossConfig,
    annotate_arm_token_counts,
    hpt_actor_loss,
    load_upge_config,
    mini_batch_ids,
)

from tests.helpers import PRESET_DIR, PRESETS  # noqa: E402
REPO = str(TESTS_REPO)
DT = torch.float64
ATOL, RTOL = 1e-8, 1e-6


# ----------------------------------------------------------------------------------------- fixtures


def preset(name: str) -> UPGELossConfig:
    return load_upge_config(OmegaConf.load(os.path.join(PRESET_DIR, f"{name}.yaml")))


@functools.lru_cache(maxsize=1)
def _actor_node():
    path = os.path.join(os.path.dirname(verl.__file__), "trainer", "config", "_generated_ppo_trainer.yaml")
    node = OmegaConf.load(path).actor_rollout_ref.actor
    node.ppo_micro_batch_size_per_gpu = 2
    return node


def actor_config(**overrides):
    """verl's ActorConfig from its packaged defaults (verl-0.9-notes §8 B2), with overrides."""
    node = copy.deepcopy(_actor_node())
    for key, value in overrides.items():
        OmegaConf.update(node, key, value, merge=False)
    return omega_conf_to_dataclass(node)


ROW_FIELDS = (
    "input_ids", "attention_mask", "position_ids", "response_mask", "old_log_probs", "ref_log_prob",
    "advantages", "is_demo", "row_weight", "index", "token_level_scores",
)  # fmt: skip


class Batch:
    """A padded V0 batch (left-padded prompts, right-padded responses) over a logits leaf.

    drift: per-row std of log π_θold − log π_θ (the policy has moved since the rollout).
    ``subset(rows)`` gives a batch of some rows that shares the same leaf, so gradients of
    different sub-batches land in one tensor and can be added.
    """

    def __init__(self, n_rows, seed, demo=(), pad=(), prompt_len=4, resp_len=7, vocab=11, drift=None, demo_off=()):
        g = torch.Generator().manual_seed(seed)
        P, R, L = prompt_len, resp_len, prompt_len + resp_len
        self.B, self.P, self.R = n_rows, P, R
        p_lens = torch.randint(1, P + 1, (n_rows,), generator=g)
        r_lens = torch.randint(1, R + 1, (n_rows,), generator=g)
        r_lens[0] = R  # one full-width row, as verl pads responses to the longest
        pos = torch.arange(L)
        self.attention_mask = ((pos >= P - p_lens[:, None]) & (pos < P + r_lens[:, None])).long()
        self.response_mask = self.attention_mask[:, P:].clone()
        self.input_ids = torch.randint(0, vocab, (n_rows, L), generator=g) * self.attention_mask
        self.position_ids = (self.attention_mask.cumsum(-1) - 1).clamp(min=0)
        self.leaf = torch.randn(n_rows, L, vocab, generator=g, dtype=DT).requires_grad_(True)
        self.index = torch.arange(n_rows)
        with torch.no_grad():
            logp = self.response_log_prob()
            if drift is None:
                drift = torch.full((n_rows,), 0.6, dtype=DT)
            noise = torch.randn(n_rows, R, generator=g, dtype=DT) * torch.as_tensor(drift, dtype=DT)[:, None]
            self.old_log_probs = (logp + noise) * self.response_mask
            self.ref_log_prob = (logp + 0.3 * torch.randn(n_rows, R, generator=g, dtype=DT)) * self.response_mask
            self.advantages = torch.randn(n_rows, 1, generator=g, dtype=DT).expand(n_rows, R) * self.response_mask
        self.is_demo = torch.zeros(n_rows, dtype=DT)
        self.is_demo[list(demo)] = 1.0
        self.is_demo[list(demo_off)] = 2.0
        self.row_weight = torch.ones(n_rows, dtype=DT)
        self.row_weight[list(pad)] = 0.0
        # verifier score 0/1 on the last valid response token, as verl's token_level_scores (drawn
        # last, so that the tensors above do not depend on it)
        score = torch.randint(0, 2, (n_rows,), generator=g).to(DT)
        self.token_level_scores = torch.zeros(n_rows, R, dtype=DT)
        self.token_level_scores[torch.arange(n_rows), r_lens - 1] = score

    @property
    def logits(self):
        return self.leaf[self.index]

    def subset(self, rows):
        sub = copy.copy(self)
        rows = torch.as_tensor(rows)
        for key in ROW_FIELDS:
            setattr(sub, key, getattr(self, key)[rows])
        sub.B = len(rows)
        return sub

    def response_log_prob(self):
        """log π_θ(y_t) of response token t, (B,R): what the loss sees after no_padding_2_padding."""
        lp = torch.log_softmax(self.logits[:, self.P - 1 : self.P + self.R - 1], dim=-1)
        return lp.gather(-1, self.input_ids[:, self.P :].unsqueeze(-1)).squeeze(-1)

    def response_entropy(self):
        """Token entropy H_t = −Σ_v π log π at response token t, (B,R), with gradient."""
        lp = torch.log_softmax(self.logits[:, self.P - 1 : self.P + self.R - 1], dim=-1)
        return -(lp.exp() * lp).sum(-1)

    @property
    def row_score(self):
        """(B,) Σ_t token_level_scores: 1.0 for a correct row, 0.0 otherwise."""
        return self.token_level_scores.sum(-1)

    def model_output(self, rows, with_entropy=False):
        """What verl's engine returns: nested (jagged) per-sequence tensors over the unpadded tokens,
        position j holding the value for predicting token j+1 (last position: junk)."""
        logits = self.logits[rows]
        ids = self.input_ids[rows]
        lp = torch.log_softmax(logits, dim=-1)
        next_tok = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
        full = {"log_probs": lp.gather(-1, next_tok.unsqueeze(-1)).squeeze(-1)}
        if with_entropy:
            full["entropy"] = -(lp.exp() * lp).sum(-1)
        attention = self.attention_mask[rows].bool()
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), attention.sum(-1).cumsum(0)])
        return {k: torch.nested.nested_tensor_from_jagged(v[attention], offsets) for k, v in full.items()}

    def tensordict(self, hpt_keys=True, mini_batch_size=None, dp_size=1, totals=True):
        """The whole batch as verl's _update_actor hands it over (after left_right_2_no_padding)."""
        fields = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
            "prompts": self.input_ids[:, : self.P],
            "responses": self.input_ids[:, self.P :],
            "response_mask": self.response_mask,
            "old_log_probs": self.old_log_probs,
            "advantages": self.advantages,
            "ref_log_prob": self.ref_log_prob,
            "token_level_scores": self.token_level_scores,
        }
        if hpt_keys:
            fields["hpt_row_kind"] = self.is_demo
            fields["hpt_row_weight"] = self.row_weight
            if getattr(self, "prefix_mask", None) is not None:
                fields["hpt_prefix_mask"] = self.prefix_mask
        if getattr(self, "rollout_log_probs", None) is not None:
            fields["rollout_log_probs"] = self.rollout_log_probs
        td = TensorDict(fields, batch_size=[self.B])
        if hpt_keys and totals:
            annotate_arm_token_counts(td, mini_batch_size=mini_batch_size, dp_size=dp_size)
        return left_right_2_no_padding(td)


def run_loss(batch, loss_fn, td, micro_batches, dp_size=1, with_entropy=False, n_ranks=1):
    """Simulate verl's actor update of one mini-batch: every micro-batch gets the global
    batch_num_tokens / dp_size / global_batch_size, its loss is back-propagated undivided, and
    FSDP averages the ranks' gradients. ``micro_batches[r]`` lists rank r's micro-batch row indices.
    Returns (Σ_ranks Σ_micro loss / n_ranks, list of metric dicts)."""
    tu.assign_non_tensor(
        td,
        dp_size=dp_size,
        batch_num_tokens=int(td["loss_mask"].sum().item()),
        global_batch_size=batch.B,
    )
    total, metrics = 0.0, []
    for rank_micro in micro_batches:
        for rows in rank_micro:
            rows = torch.as_tensor(rows)
            micro = tu.index_select_tensor_dict(td, rows)
            loss, m = loss_fn(model_output=batch.model_output(rows, with_entropy), data=micro, dp_group=None)
            total = total + loss
            metrics.append(m)
    return total / n_ranks, metrics


_run_loss = run_loss


def grad(loss, batch):
    # retain_graph: some tests share intermediate tensors between the two losses they compare
    (g,) = torch.autograd.grad(loss, batch.leaf, retain_graph=True)
    return g


def upge_loss_fn(upge, **actor_overrides):
    return functools.partial(hpt_actor_loss, config=actor_config(**actor_overrides), upge=upge)


def one_micro(batch):
    return [[list(range(batch.B))]]


def assert_grad_close(a, b):
    assert a.abs().max() > 1e-6, "reference gradient is zero: the test would not detect anything"
    torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


def verl_policy_loss(name, batch, rows, agg, **actor_overrides):
    """verl's registered policy loss on the given rows (padded (B,R) inputs), gradient to logits."""
    cfg = actor_config(loss_agg_mode=agg, **actor_overrides)
    logp = batch.response_log_prob()[rows]
    loss, _ = get_policy_loss_fn(name)(
        old_log_prob=batch.old_log_probs[rows],
        log_prob=logp,
        advantages=batch.advantages[rows],
        response_mask=batch.response_mask[rows].bool(),
        loss_agg_mode=agg,
        config=cfg,
        rollout_is_weights=None,
    )
    return loss


def masked(batch, rows):
    return batch.response_mask[rows].bool()


# --------------------------------------------------------------------------- presets vs references

ROLLOUT_ROWS = list(range(6))


def _arm_rows(batch, arm):
    """Rows of one arm: hpt_row_kind 0 rollout, 1 demo, 2 demo_off."""
    code = {"rollout": 0.0, "demo": 1.0, "demo_off": 2.0}[arm]
    return [i for i in range(batch.B) if batch.is_demo[i] == code]


def _rows(batch, demo):
    return _arm_rows(batch, "demo" if demo else "rollout")


def reference_loss(name, batch):
    """Independent implementation of each preset's loss on ``batch`` (one micro-batch, dp=1)."""
    logp_all = batch.response_log_prob()
    ro, de = _rows(batch, False), _rows(batch, True)

    def nll_token_mean(rows):
        m = masked(batch, rows)
        return -(logp_all[rows] * m).sum() / m.sum()

    def const_len_sum(values, rows):
        return (values[rows] * masked(batch, rows)).sum() / 8192

    A = batch.advantages
    if name == "sft":
        return nll_token_mean(de)
    if name == "reinforce":
        cfg = actor_config(loss_agg_mode="seq-mean-token-sum")
        return compute_policy_loss_reinforce(
            batch.old_log_probs[ro], logp_all[ro], A[ro], masked(batch, ro), "seq-mean-token-sum", cfg
        )[0]
    if name == "ppo":
        return verl_policy_loss("vanilla", batch, ro, "token-mean")
    if name == "grpo":
        return verl_policy_loss("vanilla", batch, ro, "seq-mean-token-mean")
    if name == "dr_grpo":
        return verl_policy_loss("vanilla", batch, ro, "seq-mean-token-sum-norm")
    if name == "cispo":
        return verl_policy_loss("cispo", batch, ro, "token-mean", clip_ratio_low=1.0, clip_ratio_high=0.2)
    if name in ("gspo", "dypo"):
        rl = verl_policy_loss("gspo", batch, ro, "seq-mean-token-mean", clip_ratio_low=0.0003, clip_ratio_high=0.0004)
        return rl if name == "gspo" else rl + nll_token_mean(de)  # dypo: + SFT (its GAL term tested apart)
    on_policy = -A * torch.exp(logp_all - batch.old_log_probs)
    if name == "luffy":
        p = logp_all.exp()
        return const_len_sum(on_policy, ro) + const_len_sum(-A * p / (p + 0.1), de)
    if name in ("srft", "srft_release"):
        # SRFT: rollouts −Â_i·log π with Â_i = 0.1·exp(H̄_i) (correct) / −1; demonstrations −Â·π (paper)
        # or −Â·p/(p+0.1) (release), plus 0.5·exp(−H̄_i)·NLL as a token mean over the demo tokens.
        m = batch.response_mask.to(DT)
        h_bar = ((batch.response_entropy().detach() * m).sum(-1) / m.sum(-1)).unsqueeze(-1)
        a_on = torch.where((batch.row_score == 1.0).unsqueeze(-1), 0.1 * torch.exp(h_bar), -1.0)
        p = logp_all.exp()
        off = p / (p + 0.1) if name == "srft_release" else p
        m_de = masked(batch, de)
        sft = (0.5 * torch.exp(-h_bar[de]) * -logp_all[de] * m_de).sum() / m_de.sum()
        return const_len_sum(-a_on * logp_all, ro) + const_len_sum(-A * off, de) + sft
    if name in ("hpt", "hpt_release", "hpt_release_global"):
        return const_len_sum(on_policy, ro) + nll_token_mean(de)
    if name == "trapo":
        # generated tokens −Â·π/π_old; demonstration tokens −π/sg(max(π, 0.1)); both Σ / 8192
        trsft = -torch.exp(logp_all - torch.clamp(logp_all.detach(), min=math.log(0.1)))
        return const_len_sum(on_policy, ro) + const_len_sum(trsft, de)
    if name == "rasft":
        # weighted SFT only: correct rollouts imitated (Â = 1), wrong ones not (Â = 0), each arm a token mean
        correct = (batch.row_score == 1.0).to(DT).unsqueeze(-1)
        m = masked(batch, ro)
        return -(correct[ro] * logp_all[ro] * m).sum() / m.sum() + nll_token_mean(de)
    if name == "hpt_release_off":
        p = logp_all.exp()
        off = _arm_rows(batch, "demo_off")
        return const_len_sum(on_policy, ro) + nll_token_mean(de) + const_len_sum(-A * p / (p + 0.1), off)
    if name == "hpt_paper":
        rl = verl_policy_loss("vanilla", batch, ro, "seq-mean-token-sum", clip_ratio_c=1e12)  # no dual clip
        m = masked(batch, de)
        per_seq = -(logp_all[de] * m).sum(-1) / m.sum(-1)
        return rl + per_seq.mean()
    raise KeyError(name)


def preset_batch(name, seed=0):
    cfg = preset(name)
    n = 9
    demo, demo_off = [], []
    if cfg.demo is not None:
        demo = list(range(n)) if cfg.rollout is None else [1, 4, 7]
    if cfg.demo_off is not None:
        demo_off = [2, 5]
    drift = None
    if name in ("ppo", "grpo", "dr_grpo", "hpt_paper"):
        # large enough drift for ratios beyond 1±0.2 and beyond the dual clip c=3
        drift = torch.full((n,), 1.2, dtype=DT)
    if name in ("gspo", "dypo"):
        # GSPO's ε=3e-4 clips almost every sequence at drift 0.6: mix near-on-policy rows in.
        drift = torch.tensor([1e-5, 0.3, 1e-5, 1e-5, 0.3, 1e-5, 0.3, 1e-5, 1e-5], dtype=DT)
    return Batch(n, seed, demo=demo, demo_off=demo_off, drift=drift)


def test_every_preset_has_a_reference():
    assert set(PRESETS) == {
        "sft", "reinforce", "ppo", "grpo", "dr_grpo", "cispo", "gspo", "luffy", "srft", "srft_release",
        "hpt", "hpt_release", "hpt_release_global", "hpt_paper", "hpt_release_off", "rasft", "dypo", "trapo",
    }  # fmt: skip


@pytest.mark.parametrize("name", PRESETS)
def test_preset_gradient_matches_reference(name):
    batch = preset_batch(name)
    upge = preset(name)
    if upge.gal_coef:  # DYPO's group alignment term has its own parity tests (test_gal_*)
        upge = replace(upge, gal_coef=0.0)
    td = batch.tensordict()
    # entropy_coeff is verl's default 0: the entropy output only feeds the H̄-weighted parts
    loss, metrics = run_loss(batch, upge_loss_fn(upge), td, one_micro(batch), with_entropy=upge.needs_row_entropy)
    got = grad(loss, batch)
    want = grad(reference_loss(name, batch), batch)
    assert_grad_close(want, got)


def test_ppo_preset_exercises_both_clips():
    # The PPO reference comparison only means something if clipped and dual-clipped tokens occur.
    batch = preset_batch("ppo")
    _, metrics = run_loss(batch, upge_loss_fn(preset("ppo")), batch.tensordict(), one_micro(batch))
    assert metrics[0]["hpt/rl/clipfrac"].aggregate() > 0.05
    assert metrics[0]["hpt/rl/clipfrac_lower"].aggregate() > 0.0


def test_gspo_preset_clips_some_sequences_not_all():
    batch = preset_batch("gspo")
    _, metrics = run_loss(batch, upge_loss_fn(preset("gspo")), batch.tensordict(), one_micro(batch))
    assert 0.05 < metrics[0]["hpt/rl/clipfrac"].aggregate() < 0.95


# ------------------------------------------------------------------------------- reference = self


@pytest.mark.parametrize("stable", ["none", "ppo_clip"])
def test_ref_self_is_sft_even_when_policy_drifted(stable):
    # π_ref = π_θ makes the ratio ≡ 1 whatever old_log_prob is: the gradient is plain NLL.
    batch = Batch(6, seed=3, demo=range(6), drift=torch.full((6,), 2.0, dtype=DT))
    arm = UPGEArmConfig(stable=stable, ref="self", adv="one", agg="token-mean")
    loss, _ = run_loss(batch, upge_loss_fn(UPGELossConfig(demo=arm)), batch.tensordict(), one_micro(batch))
    m = batch.response_mask.bool()
    g_nll = grad(-(batch.response_log_prob() * m).sum() / m.sum(), batch)
    assert_grad_close(g_nll, grad(loss, batch))
    # and ref=old would not be SFT under this drift (the test can fail)
    arm_old = replace(arm, ref="old")
    loss_old, _ = run_loss(batch, upge_loss_fn(UPGELossConfig(demo=arm_old)), batch.tensordict(), one_micro(batch))
    assert not torch.allclose(grad(loss_old, batch), g_nll, atol=1e-6)


# ---------------------------------------------------------------- mixed batches and micro-batching

MIXED = ["hpt", "hpt_paper", "hpt_release_global", "luffy", "srft"]


def _single_arm_grad(name, arm_name, batch, rows):
    """Gradient of one arm alone, on the sub-batch of its rows, as a one-arm method."""
    upge = preset(name)
    one = UPGELossConfig(**{arm_name: upge.arm(arm_name)}, average_over_dp_ranks=upge.average_over_dp_ranks)
    sub = batch.subset(rows)
    loss, _ = run_loss(sub, upge_loss_fn(one), sub.tensordict(), one_micro(sub), with_entropy=upge.needs_row_entropy)
    return grad(loss, batch)


@pytest.mark.parametrize("name", MIXED)
def test_mixed_batch_is_sum_of_arms_for_any_micro_split_and_dp(name):
    batch = Batch(8, seed=11, demo=[0, 3, 4, 6])
    upge = preset(name)
    assert upge.split_invariant(with_entropy_bonus=False)
    fn = upge_loss_fn(upge)
    run_loss = functools.partial(_run_loss, with_entropy=upge.needs_row_entropy)
    full, _ = run_loss(batch, fn, batch.tensordict(), one_micro(batch))
    g_full = grad(full, batch)

    demo_rows, ro_rows = _rows(batch, True), _rows(batch, False)
    g_sum = _single_arm_grad(name, "demo", batch, demo_rows) + _single_arm_grad(name, "rollout", batch, ro_rows)
    assert_grad_close(g_sum, g_full)

    # verl-style splits of the same mini-batch: uneven, reordered (dynamic bsz), single-arm micro-batches
    for split in ([[0, 1, 2], [3, 4, 5, 6, 7]], [[7, 2], [5, 0, 3], [1, 6, 4]], [demo_rows, ro_rows]):
        loss, _ = run_loss(batch, fn, batch.tensordict(), [split])
        assert_grad_close(g_full, grad(loss, batch))

    # two DP ranks: contiguous halves, totals over both ranks, gradients averaged by FSDP
    td = batch.tensordict(mini_batch_size=8, dp_size=2)
    loss, _ = run_loss(batch, fn, td, [[[0, 1], [2, 3]], [[4, 5, 6, 7]]], dp_size=2, n_ranks=2)
    want = g_full / 2 if preset(name).average_over_dp_ranks else g_full
    assert_grad_close(want, grad(loss, batch))


def test_release_sft_mean_is_per_micro_batch():
    # The release's SFT arm is a mean per micro-batch: splitting the demo rows changes the gradient
    # (to Σ_micro mean_micro), while hpt_release_global stays at the global mean.
    batch = Batch(8, seed=5, demo=[0, 3, 4, 6])
    split = [[[0, 1, 2, 3], [4, 5, 6, 7]]]
    logp = batch.response_log_prob()
    m = batch.response_mask.bool()
    ro = _rows(batch, False)
    rl = (-batch.advantages * torch.exp(logp - batch.old_log_probs) * m)[ro].sum() / 8192

    def mean_nll(rows):
        return -(logp[rows] * m[rows]).sum() / m[rows].sum()

    loss, _ = run_loss(batch, upge_loss_fn(preset("hpt_release")), batch.tensordict(), split)
    assert_grad_close(grad(rl + mean_nll([0, 3]) + mean_nll([4, 6]), batch), grad(loss, batch))
    loss_g, _ = run_loss(batch, upge_loss_fn(preset("hpt_release_global")), batch.tensordict(), split)
    assert_grad_close(grad(rl + mean_nll([0, 3, 4, 6]), batch), grad(loss_g, batch))
    assert not torch.allclose(grad(loss, batch), grad(loss_g, batch), atol=1e-6)


def test_mixed_batch_without_totals_raises():
    batch = Batch(4, seed=2, demo=[1])
    td = batch.tensordict(totals=False)
    with pytest.raises(ValueError, match="annotate_arm_token_counts"):
        run_loss(batch, upge_loss_fn(preset("hpt_paper")), td, one_micro(batch))


def test_absent_arm_with_rows_raises():
    batch = Batch(4, seed=2, demo=[1])
    with pytest.raises(ValueError, match=r"hpt\.loss\.demo is null"):
        run_loss(batch, upge_loss_fn(preset("grpo")), batch.tensordict(), one_micro(batch))


# ------------------------------------------------------------------------ three arms: demo_off

# A three-arm method whose every aggregation needs its own arm's global totals (so the split
# invariance below also checks the demo_off totals): PPO-clipped rollouts (seq-mean-token-mean),
# SFT demonstrations (token mean, coef 0.3), LUFFY off-policy demonstrations (token mean, γ = 0.1).
MIX3 = UPGELossConfig(
    rollout=UPGEArmConfig(stable="ppo_clip", clip_c=3.0, ref="old", adv="batch", agg="seq-mean-token-mean"),
    demo=UPGEArmConfig(stable="none", ref="self", adv="one", agg="token-mean", coef=0.3),
    demo_off=UPGEArmConfig(stable="none", ref="one", adv="batch", shaping_gamma=0.1, agg="token-mean", coef=1.5),
)


def _mix3_references(batch):
    """Each arm's loss written independently of verl_ext.loss, on its own rows: (rollout, demo, demo_off)."""
    logp = batch.response_log_prob()
    ro, de, off = (_arm_rows(batch, a) for a in ("rollout", "demo", "demo_off"))
    rl = verl_policy_loss("vanilla", batch, ro, "seq-mean-token-mean")  # ppo clip 0.2, dual clip 3
    m_de, m_off = masked(batch, de), masked(batch, off)
    sft = 0.3 * -(logp[de] * m_de).sum() / m_de.sum()
    p = logp[off].exp()
    off_term = 1.5 * (-batch.advantages[off] * p / (p + 0.1) * m_off).sum() / m_off.sum()
    return rl, sft, off_term


def test_three_arm_batch_is_the_sum_of_independent_references_for_any_split_and_dp():
    # rows 0..9: rollouts, demo (SFT) rows 1, 4, 8, demo_off rows 2, 5, 6; drift large enough to clip
    batch = Batch(10, seed=41, demo=[1, 4, 8], demo_off=[2, 5, 6], drift=torch.full((10,), 1.2, dtype=DT))
    refs = _mix3_references(batch)
    for ref in refs:  # each arm contributes: a missing arm would be detected
        assert grad(ref, batch).abs().max() > 1e-4
    g_want = grad(sum(refs), batch)
    fn = upge_loss_fn(MIX3)
    loss, metrics = run_loss(batch, fn, batch.tensordict(), one_micro(batch))
    assert_grad_close(g_want, grad(loss, batch))
    assert metrics[0]["hpt/rl/clipfrac"].aggregate() > 0.0  # the PPO clip is exercised

    # verl-style micro-batch splits: uneven, reordered, one arm per micro-batch, arms mixed
    rows = {a: _arm_rows(batch, a) for a in ("rollout", "demo", "demo_off")}
    for split in ([[0, 1, 2], [3, 4, 5, 6, 7, 8, 9]], [[9, 2], [5, 0, 8], [1, 6, 4, 3, 7]],
                  [rows["rollout"], rows["demo"], rows["demo_off"]], [[i] for i in range(10)]):  # fmt: skip
        loss, _ = run_loss(batch, fn, batch.tensordict(), [split])
        assert_grad_close(g_want, grad(loss, batch))

    # two DP ranks: contiguous halves, totals over both ranks, gradients averaged by FSDP
    td = batch.tensordict(mini_batch_size=10, dp_size=2)
    loss, _ = run_loss(batch, fn, td, [[[0, 1], [2, 3, 4]], [[5, 6, 7], [8, 9]]], dp_size=2, n_ranks=2)
    assert_grad_close(g_want, grad(loss, batch))


def test_three_arm_metrics_per_arm():
    batch = Batch(10, seed=43, demo=[1, 4, 8], demo_off=[2, 5, 6])
    split = [[[0, 3], [1, 4, 8], [2, 5, 6, 7, 9]]]  # a micro-batch without demo_off rows, one without rollouts
    _, metrics = run_loss(batch, upge_loss_fn(MIX3), batch.tensordict(), split)
    keys = set(metrics[0])
    assert all(set(m) == keys for m in metrics)
    agg = {k: Metric.aggregate_dp([_collect(metrics, k)]) for k in keys}
    rl, sft, off = (r.item() for r in _mix3_references(batch))
    assert abs(agg["hpt/rl/pg_loss"] - rl) < 1e-9
    assert abs(agg["hpt/sft/loss"] - sft) < 1e-9
    assert abs(agg["hpt/off/pg_loss"] - off) < 1e-9
    assert abs(agg["actor/pg_loss"] - (rl + sft + off)) < 1e-9
    m = batch.response_mask.bool()
    off_rows = _arm_rows(batch, "demo_off")
    p = batch.response_log_prob().detach()[off_rows][m[off_rows]].exp()
    assert abs(agg["hpt/off/ratio_mean"] - p.mean().item()) < 1e-9  # π_ref ≡ 1: the ratio is p
    demo_rows = _arm_rows(batch, "demo") + off_rows
    assert abs(agg["hpt/demo_token_share"] - m[demo_rows].sum().item() / m.sum().item()) < 1e-12
    # the rollout arm's verl aliases are not polluted by the demo_off arm
    assert agg["actor/pg_clipfrac"] == agg["hpt/rl/clipfrac"]


def test_two_arm_preset_has_no_off_metrics_and_rejects_demo_off_rows():
    batch = Batch(6, seed=45, demo=[1])
    _, metrics = run_loss(batch, upge_loss_fn(preset("hpt_release_global")), batch.tensordict(), one_micro(batch))
    assert not any(k.startswith("hpt/off/") for k in metrics[0])
    batch = Batch(6, seed=45, demo=[1], demo_off=[3])
    with pytest.raises(ValueError, match=r"hpt\.loss\.demo_off is null but the micro-batch has 1 live demo_off rows"):
        run_loss(batch, upge_loss_fn(preset("hpt_release_global")), batch.tensordict(), one_micro(batch))
    # a padding row (weight 0) of the absent arm is fine
    batch = Batch(6, seed=45, demo=[1], demo_off=[3], pad=[3])
    run_loss(batch, upge_loss_fn(preset("hpt_release_global")), batch.tensordict(), one_micro(batch))


@pytest.mark.parametrize("value", [0.5, 3.0, -1.0, float("nan")])
def test_unknown_row_kind_raises(value):
    batch = Batch(4, seed=47, demo=[1])
    batch.is_demo[2] = value
    with pytest.raises(ValueError,
                       match=r"hpt_row_kind holds .*must be a RowKind: 0 \(ROLLOUT\), 1 \(SFT_DEMO\), "
                             r"2 \(OFF_POLICY_DEMO\)"):
        batch.tensordict()  # annotate_arm_token_counts reads it first
    td = batch.tensordict(totals=False)
    with pytest.raises(ValueError, match=r"hpt_row_kind holds"):
        run_loss(batch, upge_loss_fn(MIX3), td, one_micro(batch))


# ------------------------------------------------------------------------------------ padding rows


@pytest.mark.parametrize("name", ["hpt", "hpt_paper", "hpt_release_global", "grpo"])
def test_zero_weight_padding_rows_change_nothing(name):
    kw = dict(entropy_coeff=0.01, use_kl_loss=True, kl_loss_coef=0.05)
    pad = [6, 7, 8]
    demo = [1, 4, 7] if preset(name).demo is not None else []
    padded = Batch(9, seed=7, demo=demo, pad=pad)
    real = padded.subset(range(6))

    fn = upge_loss_fn(preset(name), **kw)
    split = [[0, 6, 2, 7], [1, 8, 3, 4, 5]]
    if not preset(name).split_invariant(with_entropy_bonus=True):
        # per-micro-batch means (release entropy bonus): keep the live rows in one micro-batch, with
        # padding rows among them and a micro-batch of padding only
        split = [[0, 6, 2, 7, 1, 3, 4, 5], [8]]
    loss_p, _ = run_loss(padded, fn, padded.tensordict(), [split], with_entropy=True)
    loss_r, _ = run_loss(real, fn, real.tensordict(), one_micro(real), with_entropy=True)
    torch.testing.assert_close(loss_p, loss_r, rtol=RTOL, atol=ATOL)
    g_p, g_r = grad(loss_p, padded), grad(loss_r, padded)
    assert_grad_close(g_r, g_p)
    assert g_p[pad].abs().max() == 0
    # the same rows with weight 1 do change the loss (the test can fail)
    padded.row_weight[pad] = 1.0
    loss_1, _ = run_loss(padded, fn, padded.tensordict(), one_micro(padded), with_entropy=True)
    assert not torch.allclose(loss_1, loss_r)


def test_row_weight_scales_policy_terms():
    batch = Batch(6, seed=9, demo=[2, 5])
    upge = preset("hpt_release_global")
    loss1, _ = run_loss(batch, upge_loss_fn(upge), batch.tensordict(), one_micro(batch))
    g1 = grad(loss1, batch)
    batch.row_weight[:] = 0.5
    loss_half, _ = run_loss(batch, upge_loss_fn(upge), batch.tensordict(), one_micro(batch))
    assert_grad_close(g1 / 2, grad(loss_half, batch))


# ---------------------------------------------------------------------- drop-in parity with ppo_loss


def test_rollout_only_matches_verl_ppo_loss_with_entropy_and_kl():
    batch = Batch(6, seed=13)
    kw = dict(entropy_coeff=0.01, use_kl_loss=True, kl_loss_coef=0.1, loss_agg_mode="token-mean")
    td = batch.tensordict(hpt_keys=False)
    split = [[[0, 1, 2], [3, 4, 5]]]
    ours, ours_m = run_loss(batch, upge_loss_fn(preset("ppo"), **kw), td, split, with_entropy=True)
    theirs, theirs_m = run_loss(
        batch, functools.partial(ppo_loss, config=actor_config(**kw)), batch.tensordict(hpt_keys=False), split,
        with_entropy=True,
    )
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)
    assert_grad_close(grad(theirs, batch), grad(ours, batch))
    for key in ("actor/pg_loss", "actor/entropy_loss", "kl_loss"):
        a = Metric.aggregate_dp([_collect(ours_m, key)])
        b = Metric.aggregate_dp([_collect(theirs_m, key)])
        assert abs(a - b) < 1e-9, key


def _collect(metrics, key):
    out = Metric(aggregation=metrics[0][key].aggregation)
    for m in metrics:
        out.extend(m[key])
    return out


# ----------------------------------------------------------------------------------------- metrics


def test_metrics_are_exact_over_the_mini_batch_and_present_in_every_micro_batch():
    batch = Batch(8, seed=17, demo=[0, 3, 4, 6])
    upge = preset("hpt_paper")
    td = batch.tensordict()
    split = [[[1, 2], [0, 3], [5, 7, 4, 6]]]  # a rollout-only and a demo-only micro-batch
    _, metrics = run_loss(batch, upge_loss_fn(upge), td, split)
    keys = set(metrics[0])
    assert all(set(m) == keys for m in metrics)
    for key in ("hpt/rl/pg_loss", "hpt/sft/loss", "hpt/rl/clipfrac", "hpt/rl/ratio_mean", "hpt/rl/ratio_min",
                "hpt/rl/ratio_max", "hpt/demo_token_share", "actor/pg_clipfrac", "hpt/sft/nll"):  # fmt: skip
        assert key in keys, key

    agg = {k: Metric.aggregate_dp([_collect(metrics, k)]) for k in keys}
    m = batch.response_mask.bool()
    ro, de = _rows(batch, False), _rows(batch, True)
    logp = batch.response_log_prob().detach()
    ratio = torch.exp(logp - batch.old_log_probs)[ro][m[ro]]
    A = batch.advantages[ro][m[ro]]
    clipped = (-A * ratio.clamp(0.8, 1.2)) > (-A * ratio)
    assert abs(agg["hpt/rl/clipfrac"] - clipped.double().mean().item()) < 1e-9
    assert abs(agg["hpt/rl/ratio_mean"] - ratio.mean().item()) < 1e-9
    assert abs(agg["hpt/rl/ratio_min"] - ratio.min().item()) < 1e-12
    assert abs(agg["hpt/rl/ratio_max"] - ratio.max().item()) < 1e-12
    assert abs(agg["hpt/demo_token_share"] - m[de].sum().item() / m.sum().item()) < 1e-12
    assert abs(agg["hpt/sft/nll"] - (-logp[de][m[de]].mean().item())) < 1e-9
    total = Metric.aggregate_dp([_collect(metrics, "actor/pg_loss")])
    assert abs(total - agg["hpt/rl/pg_loss"] - agg["hpt/sft/loss"]) < 1e-9


# ----------------------------------------------------------------------------- annotate and layout


def test_mini_batch_ids_follow_verls_dispatch_and_iterator():
    n, mini, dp = 24, 8, 2
    td = TensorDict({"row": torch.arange(n)}, batch_size=[n])
    expected = torch.empty(n, dtype=torch.long)
    for rank_td in tu.chunk_tensordict(td, dp):  # verl's DP dispatch: contiguous chunks
        it = tu.make_iterator(rank_td, mini_batch_size=mini // dp, epochs=1, seed=1,
                              dataloader_kwargs={"shuffle": False})
        for k, mb in enumerate(it):
            expected[mb["row"]] = k
    assert torch.equal(mini_batch_ids(n, mini, dp), expected)


def test_annotate_counts_per_arm_per_mini_batch():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    td = TensorDict(
        {
            "response_mask": mask,
            "hpt_row_kind": torch.tensor([0.0, 1.0, 0.0, 1.0]),
            "hpt_row_weight": torch.tensor([1.0, 1.0, 0.0, 1.0]),
        },
        batch_size=[4],
    )
    annotate_arm_token_counts(td, mini_batch_size=2, dp_size=1)
    assert td["hpt_rollout_tokens_total"].tolist() == [2, 2, 0, 0]
    assert td["hpt_demo_tokens_total"].tolist() == [1, 1, 2, 2]
    assert td["hpt_rollout_seqs_total"].tolist() == [1, 1, 0, 0]
    assert td["hpt_demo_seqs_total"].tolist() == [1, 1, 1, 1]
    assert td["hpt_demo_off_tokens_total"].tolist() == [0] * 4
    assert td["hpt_demo_off_seqs_total"].tolist() == [0] * 4
    assert set(ALL_TOTAL_KEYS) <= set(td.keys()) and len(ALL_TOTAL_KEYS) == 6

    # demo_off rows (hpt_row_kind = 2) have totals of their own; demo rows are not counted in them
    td["hpt_row_kind"] = torch.tensor([2.0, 1.0, 2.0, 2.0])
    annotate_arm_token_counts(td, mini_batch_size=2, dp_size=1)
    assert td["hpt_demo_off_tokens_total"].tolist() == [2, 2, 2, 2]  # row 2 has weight 0
    assert td["hpt_demo_off_seqs_total"].tolist() == [1, 1, 1, 1]
    assert td["hpt_demo_tokens_total"].tolist() == [1, 1, 0, 0]
    assert td["hpt_rollout_tokens_total"].tolist() == [0] * 4


def test_annotate_accepts_dataproto_and_a_dp_group(tmp_path):
    import torch.distributed as dist
    from verl import DataProto

    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    proto = DataProto.from_dict(tensors={"response_mask": mask, "hpt_row_kind": torch.tensor([0.0, 1.0, 0.0, 1.0])})
    annotate_arm_token_counts(proto, mini_batch_size=4, dp_size=2)
    assert proto.batch["hpt_rollout_tokens_total"].tolist() == [5] * 4
    assert proto.batch["hpt_demo_seqs_total"].tolist() == [2] * 4

    # inside a worker: one rank's shard of one mini-batch, totals summed over the DP group
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        td = TensorDict({"response_mask": mask}, batch_size=[4])
        annotate_arm_token_counts(td, dp_group=dist.group.WORLD)
        assert td["hpt_rollout_tokens_total"].tolist() == [8] * 4
        assert td["hpt_demo_tokens_total"].tolist() == [0] * 4
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------- policy losses


@pytest.mark.parametrize(
    "ours,theirs,agg,kw",
    [
        ("upge_ppo", "vanilla", "token-mean", {}),
        ("upge", "vanilla", "seq-mean-token-mean", {"clip_ratio_high": 0.28}),
        ("upge_cispo", "cispo", "token-mean", {"clip_ratio_low": 1.0, "clip_ratio_high": 0.3}),
        ("upge_gspo", "gspo", "seq-mean-token-mean", {"clip_ratio_low": 0.1, "clip_ratio_high": 0.1}),
    ],
)
def test_registered_policy_losses_match_verl(ours, theirs, agg, kw):
    batch = Batch(8, seed=21, drift=torch.tensor([0.01, 0.3, 0.01, 0.6, 0.05, 0.3, 0.01, 0.6], dtype=DT))
    rows = list(range(8))
    a = verl_policy_loss(ours, batch, rows, agg, **kw)
    b = verl_policy_loss(theirs, batch, rows, agg, **kw)
    torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    assert_grad_close(grad(b, batch), grad(a, batch))


def test_registered_reinforce_and_noclip():
    batch = Batch(6, seed=23)
    rows = list(range(6))
    logp = batch.response_log_prob()
    m = batch.response_mask.bool()
    A = batch.advantages
    ours = verl_policy_loss("upge_reinforce", batch, rows, "seq-mean-token-sum")
    cfg = actor_config(loss_agg_mode="seq-mean-token-sum")
    want = compute_policy_loss_reinforce(batch.old_log_probs, logp, A, m, "seq-mean-token-sum", cfg)[0]
    assert_grad_close(grad(want, batch), grad(ours, batch))
    ours = verl_policy_loss("upge_noclip", batch, rows, "token-sum")
    want = (-A * torch.exp(logp - batch.old_log_probs) * m).sum()
    assert_grad_close(grad(want, batch), grad(ours, batch))


def test_luffy_shaping_formula_on_the_pure_function():
    from verl_ext.loss import upge_arm_loss

    g = torch.Generator().manual_seed(4)
    logp = (-torch.rand(3, 5, generator=g, dtype=DT) * 4).requires_grad_(True)
    A = torch.randn(3, 5, generator=g, dtype=DT)
    mask = torch.rand(3, 5, generator=g) > 0.3
    arm = UPGEArmConfig(stable="none", ref="one", shaping_gamma=0.1, agg="token-sum")
    loss, _ = upge_arm_loss(logp, torch.zeros_like(logp), A, mask, arm)
    (got,) = torch.autograd.grad(loss, logp)
    p = logp.detach().exp()
    # d/dlogp of −A·p/(p+γ) = −A·γ·p/(p+γ)²
    want = torch.where(mask, -A * 0.1 * p / (p + 0.1) ** 2, 0.0)
    assert_grad_close(want, got)


def test_outcome_advantage_defaults_are_reinforce_plus_minus_one():
    # adv: outcome with a± = ±1 and κ_A = 0 is REINFORCE's ±1 (Table 1), and needs no entropy
    batch = Batch(6, seed=51)
    arm = UPGEArmConfig(stable="none", ref="self", adv="outcome", agg="token-sum")
    loss, metrics = run_loss(batch, upge_loss_fn(UPGELossConfig(rollout=arm)), batch.tensordict(), one_micro(batch))
    sign = torch.where(batch.row_score == 1.0, 1.0, -1.0).to(DT)[:, None]
    assert 0 < int((batch.row_score == 1.0).sum()) < batch.B
    want = (-sign * batch.response_log_prob() * batch.response_mask).sum()
    assert_grad_close(grad(want, batch), grad(loss, batch))
    m = batch.response_mask.bool()
    assert abs(metrics[0]["hpt/rl/adv_mean"].aggregate() - sign.expand_as(m)[m].mean().item()) < 1e-12


def test_entropy_weighted_nll_pure_function():
    from verl_ext.loss.upge import entropy_weighted_nll, row_mean_entropy

    g = torch.Generator().manual_seed(8)
    logp = (-torch.rand(3, 5, generator=g, dtype=DT) * 4).requires_grad_(True)
    ent = torch.rand(3, 5, generator=g, dtype=DT).requires_grad_(True)
    mask = torch.rand(3, 5, generator=g) > 0.3
    mask[:, 0] = True
    h_bar = row_mean_entropy(ent, mask)
    assert not h_bar.requires_grad and h_bar.shape == (3, 1)
    torch.testing.assert_close(h_bar[:, 0], (ent * mask).sum(-1).detach() / mask.sum(-1), rtol=0, atol=1e-15)
    arm = UPGEArmConfig(ref="self", adv="one", agg="token-sum", nll_coef=0.5, nll_entropy_exp=-1.0,
                        nll_agg="micro-token-mean")
    loss = entropy_weighted_nll(logp, mask, h_bar, arm)
    want = (0.5 * torch.exp(-h_bar) * -logp * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, want, rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------------------- config


def _arm(**fields):
    """An arm node with the required fields (ref, adv, agg) set, plus ``fields``."""
    return {"ref": "old", "adv": "batch", "agg": "token-mean", **fields}


@pytest.mark.parametrize(
    "node,message",
    [
        ({"demo": _arm(ref="foo")}, r"hpt\.loss\.demo\.ref='foo' is not one of"),
        ({"rollout": {"stabel": "none"}}, r"hpt\.loss\.rollout\.stabel is not a known key"),
        ({"rollout": _arm(stable="bogus")}, r"hpt\.loss\.rollout\.stable='bogus'"),
        ({"rollout": _arm(agg="mean")}, r"hpt\.loss\.rollout\.agg='mean'"),
        ({"rollout": _arm(adv="gae")}, r"hpt\.loss\.rollout\.adv='gae'"),
        ({"rollout": _arm(stable="ppo_clip", clip_c=1.0)}, r"hpt\.loss\.rollout\.clip_c=1\.0 must be > 1"),
        ({"rollout": _arm(stable="none", clip_c=3.0)}, r"hpt\.loss\.rollout\.clip_c=3\.0 is only used"),
        ({"demo": _arm(stable="ppo_clip", shaping_gamma=0.1)}, r"hpt\.loss\.demo\.shaping_gamma=0\.1 requires"),
        ({"demo": _arm(shaping_gamma=-1.0)}, r"hpt\.loss\.demo\.shaping_gamma=-1\.0 must be > 0"),
        ({"rollout": _arm(agg="const-len", const_len=0)}, r"hpt\.loss\.rollout\.const_len=0"),
        ({"rollout": _arm(clip_low=1.5)}, r"hpt\.loss\.rollout\.clip_low=1\.5"),
        ({"rollout": _arm(coef="x")}, r"hpt\.loss\.rollout\.coef='x' must be a finite number"),
        ({"rollout": None, "demo": None},
         r"at least one of hpt\.loss\.rollout / hpt\.loss\.demo / hpt\.loss\.demo_off"),
        ({"rollout": _arm(), "extra": 1}, r"hpt\.loss\.extra is not a known key"),
        ({"rollout": _arm(), "average_over_dp_ranks": "yes"}, r"hpt\.loss\.average_over_dp_ranks='yes'"),
        ({"rollout": [1, 2]}, r"hpt\.loss\.rollout must be a mapping"),
        ({"demo_off": _arm(ref="bar")}, r"hpt\.loss\.demo_off\.ref='bar' is not one of"),
        ({"demo_off": _arm(shaping_gamma=0.0)}, r"hpt\.loss\.demo_off\.shaping_gamma=0\.0 must be > 0"),
        # partial arms: a leftover `coef` (or any subset without ref/adv/agg) names the missing key
        ({"rollout": _arm(), "demo": {"coef": 0.3}}, r"hpt\.loss\.demo\.ref is not set"),
        ({"rollout": {"ref": "old", "agg": "token-mean"}}, r"hpt\.loss\.rollout\.adv is not set"),
        ({"demo_off": {"ref": "one", "adv": "batch", "shaping_gamma": 0.1}}, r"hpt\.loss\.demo_off\.agg is not set"),
        ({"rollout": {}}, r"hpt\.loss\.rollout\.ref is not set"),
        # the entropy bonus's aggregation and the SRFT parts
        ({"rollout": _arm(), "entropy_agg": "micro"}, r"hpt\.loss\.entropy_agg='micro' is not one of"),
        ({"demo": _arm(nll_coef=0.5, nll_agg="mean")}, r"hpt\.loss\.demo\.nll_agg='mean' is not one of"),
        ({"demo": _arm(nll_entropy_exp="x")}, r"hpt\.loss\.demo\.nll_entropy_exp='x' must be a finite number"),
        ({"rollout": _arm(adv="outcome", adv_correct=float("inf"))}, r"hpt\.loss\.rollout\.adv_correct=inf"),
        ({"rollout": _arm(adv="outcome", correct_score=None)}, r"hpt\.loss\.rollout\.correct_score=None"),
    ],
)
def test_bad_config_names_the_field(node, message):
    with pytest.raises(UPGEConfigError, match=message):
        load_upge_config(OmegaConf.create(node))


def test_presets_are_hydra_group_files_for_hpt_loss():
    from hydra import compose, initialize_config_dir

    for name in PRESETS:
        with open(os.path.join(PRESET_DIR, f"{name}.yaml")) as f:
            assert f.readline().strip() == "# @package hpt.loss", name
    with initialize_config_dir(config_dir=os.path.dirname(PRESET_DIR), version_base=None):
        cfg = compose(config_name=None, overrides=["+upge=hpt_release"])
    assert load_upge_config(cfg.hpt.loss) == preset("hpt_release")
    readme = open(os.path.join(PRESET_DIR, "README.md")).read()
    for name in PRESETS:
        assert f"`{name}`" in readme, name


def test_kl_penalty_import_is_verls():
    # hpt_actor_loss must use verl's KL estimator, not a copy: guard against a silent fork.
    from verl_ext.loss import actor_loss

    assert actor_loss.kl_penalty is kl_penalty and actor_loss.agg_loss is agg_loss


# ------------------------------------------------------------------ entropy bonus (issue 13 gaps)


@pytest.mark.parametrize("name", ["hpt", "hpt_release", "hpt_release_global"])
def test_entropy_bonus_covers_demonstration_tokens(name):
    """The release subtracts c_H · H̄ with H̄ the mean entropy over *every* valid token, demonstration
    tokens included (its ``entropy_loss`` is masked by the response mask only). Both aggregations
    (per micro-batch and global) in one micro-batch: loss(c_H) − loss(0) = −c_H · H̄(all live tokens)."""
    c = 0.05
    batch = Batch(8, seed=21, demo=[1, 5], pad=[7])
    upge = preset(name)
    loss_c, _ = run_loss(batch, upge_loss_fn(upge, entropy_coeff=c), batch.tensordict(), one_micro(batch),
                         with_entropy=True)
    loss_0, _ = run_loss(batch, upge_loss_fn(upge, entropy_coeff=0.0), batch.tensordict(), one_micro(batch),
                         with_entropy=True)
    h = batch.response_entropy().detach()  # (B, R)
    live = batch.response_mask.bool() & (batch.row_weight > 0)[:, None]  # (B, R): rollout + demo rows
    rollout_only = live & (batch.is_demo == 0)[:, None]
    expected = -c * h[live].mean()
    torch.testing.assert_close((loss_c - loss_0).detach(), expected, rtol=1e-10, atol=1e-12)
    assert abs(float(expected + c * h[rollout_only].mean())) > 1e-4  # demo tokens change the value
    # the bonus's gradient reaches the demonstration rows' logits, not the padding row's
    g = grad(loss_c - loss_0, batch)
    assert g[[1, 5]].abs().max() > 0 and g[7].abs().max() == 0


def test_entropy_bonus_sign_and_scale_follow_entropy_coeff():
    """A second pin of the entropy term: linear in c_H with slope −H̄ (maximising entropy), for a
    rollout-only batch under verl's global token mean."""
    batch = Batch(6, seed=22)
    upge = preset("grpo")
    losses = [run_loss(batch, upge_loss_fn(upge, entropy_coeff=c), batch.tensordict(), one_micro(batch),
                       with_entropy=True)[0].detach() for c in (0.0, 0.01, 0.03)]
    h = batch.response_entropy().detach()
    h_bar = h[batch.response_mask.bool()].mean()
    torch.testing.assert_close(losses[1] - losses[0], -0.01 * h_bar, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(losses[2] - losses[0], -0.03 * h_bar, rtol=1e-10, atol=1e-12)
    assert float(h_bar) > 0


# ------------------------------------------------------------------ the default preset (issue 13)


def test_default_preset_is_hpt_and_split_invariant_with_the_entropy_bonus():
    """The trainer's default loss (upge=hpt) gives one gradient for every micro-batch split and DP size,
    entropy bonus included; the release-exact preset does not (the test can fail)."""
    from hydra import compose, initialize_config_dir

    config_dir = os.path.dirname(PRESET_DIR)
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="hpt_trainer")
    assert load_upge_config(cfg.hpt.loss) == preset("hpt")
    c_h = float(cfg.actor_rollout_ref.actor.entropy_coeff)
    assert c_h > 0  # the release's 0.001: the bonus is part of the default loss

    batch = Batch(8, seed=13, demo=[0, 3, 4, 6])
    splits = ([[0, 1, 2, 3], [4, 5, 6, 7]], [[7, 2], [5, 0, 3], [1, 6, 4]], [[0, 3, 4, 6], [1, 2, 5, 7]])

    def grads(name, coef):
        fn = upge_loss_fn(preset(name), entropy_coeff=coef)
        out = [grad(run_loss(batch, fn, batch.tensordict(), one_micro(batch), with_entropy=True)[0], batch)]
        for split in splits:
            out.append(grad(run_loss(batch, fn, batch.tensordict(), [split], with_entropy=True)[0], batch))
        td = batch.tensordict(mini_batch_size=8, dp_size=2)
        loss, _ = run_loss(batch, fn, td, [[[0, 1], [2, 3]], [[4, 5, 6, 7]]], dp_size=2, n_ranks=2,
                           with_entropy=True)
        out.append(grad(loss, batch) * 2)  # average_over_dp_ranks: the 1/D scale of the release
        return out

    coef = 0.05  # larger than the default so that the bonus's share is visible in the comparison
    first, *rest = grads("hpt", coef)
    for g in rest:
        assert_grad_close(first, g)
    first_r, *rest_r = grads("hpt_release", coef)
    assert any(not torch.allclose(first_r, g, atol=1e-6) for g in rest_r)


def test_split_dependence_warning_names_the_terms_and_the_fix():
    from verl_ext.loss.config import split_dependence_warning

    assert split_dependence_warning(preset("hpt"), use_dynamic_bsz=True, entropy_coeff=0.001) is None
    assert split_dependence_warning(preset("hpt_release"), use_dynamic_bsz=False, entropy_coeff=0.001) is None
    msg = split_dependence_warning(preset("hpt_release"), use_dynamic_bsz=True, entropy_coeff=0.001)
    assert "hpt.loss.demo" in msg and "entropy_agg=micro-token-mean" in msg and "upge=hpt" in msg
    msg0 = split_dependence_warning(preset("hpt_release"), use_dynamic_bsz=True, entropy_coeff=0.0)
    assert "hpt.loss.demo" in msg0 and "entropy" not in msg0.split("with actor")[0]
    assert split_dependence_warning(preset("hpt_release_global"), use_dynamic_bsz=True, entropy_coeff=0.0) is None


# ------------------------------------------------------------------ DYPO's group alignment term (issue 16)


def test_gal_coefficients_are_the_pairwise_loss_gradient():
    from verl_ext.loss.gal import gal_group

    s = torch.tensor([-3.0, -7.5, -1.2, -4.4, -9.0], dtype=DT, requires_grad=True)
    correct = torch.tensor([True, False, True, False, False])
    beta = 0.1
    d = beta * (s[correct][:, None] - s[~correct][None, :])
    exact = torch.nn.functional.softplus(-d).mean()  # mean −log σ(d_ij)
    (g,) = torch.autograd.grad(exact, s)
    loss, c = gal_group(s.detach().numpy(), correct.numpy(), beta)
    assert loss == pytest.approx(float(exact))
    np.testing.assert_allclose(-c / len(s), g.numpy(), rtol=1e-12, atol=1e-15)
    assert abs(c.sum()) < 1e-12 and c[correct.numpy()].min() > 0 > c[~correct.numpy()].max()
    assert gal_group(s.detach().numpy(), np.ones(5, bool), beta)[0] == 0.0  # no failure: no pair


def test_gal_term_gradient_equals_the_pairwise_loss_for_any_split():
    """gal_coef · surrogate gives, at θ = θold, the gradient of gal_coef · mean_groups L_g(s(θ)) with
    s = Σ_t log π_θ over each rollout's tokens, whatever the micro-batch split and DP size."""
    from verl_ext.loss.gal import HPT_GAL_WEIGHT, gal_row_weights

    batch = Batch(10, seed=31, demo=[8, 9], drift=torch.zeros(10, dtype=DT))  # old log-probs = current
    uids = np.array(["a"] * 4 + ["b"] * 4 + ["a::demo", "b::demo"], dtype=object)
    correct = np.array([1, 0, 0, 1, 0, 1, 1, 1, 0, 0], dtype=bool)
    lengths = batch.response_mask.sum(-1)
    batch.token_level_scores = torch.zeros_like(batch.token_level_scores)
    batch.token_level_scores[torch.arange(10), lengths - 1] = torch.as_tensor(correct, dtype=DT)
    m = batch.response_mask.to(DT)
    seq_old = (batch.old_log_probs * m).sum(-1).numpy()
    rollout = np.arange(10) < 8
    w, exact_value, groups = gal_row_weights(uids, correct, seq_old, rollout, beta=0.1)
    assert groups == 2 and w[8:].tolist() == [0.0, 0.0]

    coef = 0.5
    base = preset("grpo")
    with_gal = replace(preset("hpt"), gal_coef=coef, gal_beta=0.1)
    no_gal = replace(with_gal, gal_coef=0.0)

    def td_with(batch_, dp_size=1, mini=None):
        td = batch_.tensordict(mini_batch_size=mini, dp_size=dp_size)
        td[HPT_GAL_WEIGHT] = torch.as_tensor(w, dtype=DT)
        return td

    loss_g, metrics = run_loss(batch, upge_loss_fn(with_gal), td_with(batch), one_micro(batch))
    loss_0, _ = run_loss(batch, upge_loss_fn(no_gal), td_with(batch), one_micro(batch))
    # reference: autograd through the exact pairwise loss of the current sequence log-likelihoods
    seq = (batch.response_log_prob() * m).sum(-1)  # (B,) with gradient
    ref = 0.0
    for rows in (slice(0, 4), slice(4, 8)):
        ok = torch.as_tensor(correct[rows])
        s = seq[rows]
        ref = ref + torch.nn.functional.softplus(-0.1 * (s[ok][:, None] - s[~ok][None, :])).mean() / 2
    assert float(ref) == pytest.approx(exact_value)
    g_ref = grad(coef * ref, batch)
    assert_grad_close(g_ref, grad(loss_g - loss_0, batch))
    for split in ([[0, 5, 9], [1, 2, 3, 4], [6, 7, 8]], [[7], [0, 1, 2, 3, 4, 5, 6, 8, 9]]):
        loss_s, _ = run_loss(batch, upge_loss_fn(with_gal), td_with(batch), [split])
        assert_grad_close(grad(loss_g, batch), grad(loss_s, batch))
    # two DP ranks: the preset's average_over_dp_ranks gives 1/D of the one-rank gradient
    td2 = td_with(batch, dp_size=2, mini=10)
    loss_2, _ = run_loss(batch, upge_loss_fn(with_gal), td2, [[[0, 1, 2, 8], [3, 4]], [[5, 6, 7, 9]]],
                         dp_size=2, n_ranks=2)
    assert_grad_close(grad(loss_g, batch) / 2, grad(loss_2, batch))
    # the batch key is required when the term is on
    td = batch.tensordict()
    with pytest.raises(ValueError, match="hpt_gal_weight"):
        run_loss(batch, upge_loss_fn(with_gal), td, one_micro(batch))
    assert base.gal_coef == 0.0


# ------------------------------------------------------------------ TRAPO's parts (issue 16)


def test_self_floor_ref_is_sft_above_the_floor_and_damped_below():
    """ref=self_floor: ∇ℓ_t = −Â · min(1, π_t/α) · ∇log π_t (TRAPO's trust-region SFT, α = 0.1)."""
    from verl_ext.loss.config import UPGEArmConfig

    batch = Batch(6, seed=41, demo=list(range(6)))
    arm = UPGEArmConfig(stable="none", ref="self_floor", ref_floor=0.1, adv="one", agg="token-sum")
    upge = UPGELossConfig(demo=arm)
    loss, _ = run_loss(batch, upge_loss_fn(upge), batch.tensordict(), one_micro(batch))
    logp = batch.response_log_prob()
    m = batch.response_mask.bool()
    w = torch.clamp(logp.detach().exp() / 0.1, max=1.0)  # (B,R)
    assert bool(((w < 1) & m).any()) and bool(((w == 1) & m).any())  # both regimes occur
    assert_grad_close(grad(-(w * logp * m).sum(), batch), grad(loss, batch))


def test_prefix_tokens_of_rollout_rows_train_the_demo_arm_for_any_split():
    """hpt_prefix_mask: a rollout row's demonstration-prefix tokens join the demo arm (its token mean
    over demo rows' tokens and all prefix tokens), its other tokens the rollout arm."""
    batch = Batch(8, seed=43, demo=[6, 7])
    m = batch.response_mask.bool()
    prefix = torch.zeros_like(m)
    prefix[0, :3] = True  # rows 0 and 1 continued a demonstration prefix of 3 and 2 tokens
    prefix[1, :2] = True
    prefix &= m
    assert prefix[0].sum() > 0 and (m[0] & ~prefix[0]).sum() > 0  # row 0 has both kinds of tokens
    batch.prefix_mask = prefix.to(DT)
    # the per-arm totals count row 0 in both arms (tokens in each), the live-row total once
    from verl_ext.loss.batch_keys import ALL_TOTAL_KEYS, LIVE_SEQS_TOTAL_KEY

    td = batch.tensordict()
    arm_seqs = sum(int(td[k][0]) for k in ALL_TOTAL_KEYS if k.endswith("_seqs_total"))
    assert int(td[LIVE_SEQS_TOTAL_KEY][0]) == 8 and arm_seqs == 10
    assert LIVE_SEQS_TOTAL_KEY not in Batch(8, seed=43, demo=[6, 7]).tensordict().keys()
    upge = preset("hpt")
    fn = upge_loss_fn(upge)
    loss, _ = run_loss(batch, fn, batch.tensordict(), one_micro(batch))

    logp = batch.response_log_prob()
    ro = torch.zeros(8, dtype=torch.bool)
    ro[:6] = True
    rl_tokens = m & ro[:, None] & ~prefix
    sft_tokens = (m & ~ro[:, None]) | prefix
    rl = (-batch.advantages * torch.exp(logp - batch.old_log_probs) * rl_tokens).sum() / 8192
    sft = -(logp * sft_tokens).sum() / sft_tokens.sum()
    assert_grad_close(grad(rl + sft, batch), grad(loss, batch))
    # the same without the mask differs (the test can fail)
    batch_plain = Batch(8, seed=43, demo=[6, 7])
    loss_plain, _ = run_loss(batch_plain, fn, batch_plain.tensordict(), one_micro(batch_plain))
    assert not torch.allclose(grad(loss, batch), grad(loss_plain, batch_plain), atol=1e-6)
    # any micro-batch split, and two DP ranks (totals from annotate_arm_token_counts)
    for split in ([[0, 6], [1, 2, 3, 4, 5, 7]], [[5, 0, 7, 3], [1, 2, 4, 6]]):
        loss_s, _ = run_loss(batch, fn, batch.tensordict(), [split])
        assert_grad_close(grad(loss, batch), grad(loss_s, batch))
    loss_2, _ = run_loss(batch, fn, batch.tensordict(mini_batch_size=8, dp_size=2), [[[0, 1], [2, 3]], [[4, 5, 6, 7]]],
                         dp_size=2, n_ranks=2)
    assert_grad_close(grad(loss, batch) / 2, grad(loss_2, batch))
    # a seq-mean entropy bonus divides by the live rows (8), not by the arms' sequences (10)
    kw = dict(entropy_coeff=0.1, loss_agg_mode="seq-mean-token-mean")
    loss_e, _ = run_loss(batch, upge_loss_fn(upge, **kw), batch.tensordict(), one_micro(batch), with_entropy=True)
    loss_0, _ = run_loss(batch, fn, batch.tensordict(), one_micro(batch), with_entropy=True)
    h = batch.response_entropy()
    mf = m.to(DT)
    bonus = -0.1 * ((h * mf).sum(-1) / mf.sum(-1)).sum() / 8
    torch.testing.assert_close((loss_e - loss_0).detach(), bonus.detach(), rtol=1e-10, atol=1e-12)
