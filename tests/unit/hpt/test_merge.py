"""Tests of HPT's batch merge (verl_ext.hpt.merge): demonstration rows, row order, padding rows.

The central property (``test_padding_rows_do_not_change_the_gradient``): the zero-weight padding
rows that keep verl's divisibility requirements leave the actor's gradient exactly as it is
without them. It is checked through the path verl's actor takes: ``DataProto.to_tensordict`` →
``left_right_2_no_padding`` → global mini-batch counts (``dp_size``, ``batch_num_tokens``,
``global_batch_size`` as ``RayPPOTrainer._update_actor`` and ``FSDPEngine.forward_backward_batch``
set them) → micro-batches → ``hpt_actor_loss`` per micro-batch on nested log-probs of a small
float64 policy, gradients w.r.t. its parameters summed over micro-batches and averaged over ranks.
"""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import copy
import functools
import os

import numpy as np
import pytest
import torch
import verl
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.model import compute_position_id_with_mask
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

from tests.unit.hpt.test_gate import EOS_ID, PAD_ID, RESPONSE_LEN, make_rollout_batch, sequence_scores
from verl_ext.hpt.gate import GateConfig, gate_by_pass_rate, question_stats
from verl_ext.hpt.demonstrations import build_demo_rows, encode_demonstrations
from verl_ext.hpt.merge import DEMO_UID_SUFFIX, PAD_UID_PREFIX, merge_demonstrations, pad_with_zero_weight_rows
from verl_ext.loss.batch_keys import HPT_ROW_KIND, HPT_ROW_WEIGHT, RowKind
from verl_ext.loss import annotate_arm_token_counts, hpt_actor_loss, load_upge_config

from tests.helpers import PRESET_DIR, PRESETS  # noqa: E402
REPO = str(TESTS_REPO)


def demo_tokens(q: int, length: int) -> list[int]:
    """A recognisable demonstration of question q: ``length - 1`` text tokens, then EOS."""
    return [4 + (7 * q + j) % 30 for j in range(length - 1)] + [EOS_ID]


def run_gate_and_merge(batch, cfg: GateConfig, demo_len=None, demo_scores=None, demo_extra=None):
    """The trainer's _gate_and_merge, with hand-made demonstrations (lengths ``demo_len[q]``)."""
    stats = question_stats(batch.non_tensor_batch["uid"], sequence_scores(batch), cfg.correct_threshold)
    alpha, beta = gate_by_pass_rate(stats.correct, stats.n, cfg)
    q = len(stats.uids)
    demo_len = demo_len or [3 + (i % 4) for i in range(q)]
    demo_ids = [demo_tokens(i, demo_len[i]) if beta[i] > 0 else None for i in range(q)]
    merged, mstats = merge_demonstrations(batch, stats, alpha, beta, demo_ids, PAD_ID, placement=cfg.placement,
                                          demo_scores=demo_scores, demo_extra=demo_extra, demo_arms=cfg.demo_arms)
    return merged, mstats, stats, alpha, beta, demo_ids


# ----------------------------------------------------------------------------------------- merge

SPEC = [(4, 0), (4, 2), (4, 4), (4, 1)]  # linear soft gate: α = 0, .5, 1, .25; β = 1, .5, 0, .75
LINEAR = GateConfig(strategy="soft", soft_fn="linear")


def _merged_linear():
    batch = make_rollout_batch(SPEC, seed=21)
    demo_scores = [0.75, 0.25, 0.0, 1.0]
    demo_extra = {"acc": [0.5, 0.125, None, 1.0]}
    out = run_gate_and_merge(batch, LINEAR, demo_len=[4, RESPONSE_LEN, 3, 2], demo_scores=demo_scores,
                             demo_extra=demo_extra)
    return batch, out


def test_rows_in_question_order_rollouts_then_demo():
    batch, (merged, mstats, stats, alpha, beta, _) = _merged_linear()
    uids = merged.non_tensor_batch["uid"].tolist()
    assert uids == (["uid-0::demo"] + ["uid-1"] * 4 + ["uid-1::demo"] + ["uid-2"] * 4 + ["uid-3"] * 4
                    + ["uid-3::demo"])  # fmt: skip
    assert merged.batch[HPT_ROW_KIND].tolist() == [1] + [0] * 4 + [1] + [0] * 8 + [1]
    assert merged.batch[HPT_ROW_WEIGHT].tolist() == [1.0] + [0.5] * 4 + [0.5] + [1.0] * 4 + [0.25] * 4 + [0.75]
    assert merged.batch[HPT_ROW_WEIGHT].dtype == torch.float32 and merged.batch[HPT_ROW_KIND].dtype == torch.int64
    assert set(merged.batch[HPT_ROW_KIND].tolist()) == {RowKind.ROLLOUT, RowKind.SFT_DEMO}

    assert (mstats.num_questions, mstats.num_gated, mstats.num_rl) == (4, 3, 3)
    assert (mstats.rollout_rows, mstats.demo_rows) == (12, 3)
    assert len(merged) == 15


def test_row_kind_names_the_loss_arm():
    from verl_ext.loss.batch_keys import ARM_KINDS
    from verl_ext.loss.config import ARM_NAMES

    assert [(int(k), k.arm) for k in RowKind] == [(0, "rollout"), (1, "demo"), (2, "demo_off")]
    assert list(ARM_KINDS) == list(ARM_NAMES) and all(RowKind.of_arm(k.arm) is k for k in RowKind)


def test_rollout_rows_are_kept_bit_for_bit():
    batch, (merged, *_rest) = _merged_linear()
    source = {4: 1, 5: 2, 6: 3, 7: 4, 8: 6, 9: 7, 10: 8, 11: 9, 12: 10, 13: 11, 14: 12, 15: 13}  # orig → merged
    for orig, new in source.items():
        for key in batch.batch.keys():
            a, b = batch.batch[key][orig], merged.batch[key][new]
            assert a.dtype == b.dtype and torch.equal(a, b), (key, orig)
        for key, col in batch.non_tensor_batch.items():
            assert merged.non_tensor_batch[key][new] == col[orig], (key, orig)
    # the rows of q0 (α = 0) are gone: no row of merged is one of them
    gone = [batch.batch["responses"][i] for i in range(4)]
    assert not any(torch.equal(r, m) for r in gone for m in merged.batch["responses"])


@pytest.mark.parametrize("placement", ["replace", "add"])
def test_demo_rows_prompt_response_masks_positions_scores(placement):
    batch = make_rollout_batch(SPEC, seed=21)
    cfg = GateConfig(strategy="soft", soft_fn="linear", placement=placement)
    demo_scores = [0.75, 0.25, 0.0, 1.0]
    merged, _, stats, _, beta, demo_ids = run_gate_and_merge(batch, cfg, demo_len=[4, RESPONSE_LEN, 3, 2],
                                                             demo_scores=demo_scores)
    P, R = batch.batch["prompts"].shape[1], RESPONSE_LEN
    demo_rows = {0: 0, 1: 5, 3: 14}  # question → merged row
    for q, row in demo_rows.items():
        t = {k: merged.batch[k][row] for k in merged.batch.keys()}
        src = int(stats.first_row[q])
        ids = demo_ids[q]
        L = len(ids)
        # the question's prompt, left padding included
        assert torch.equal(t["prompts"], batch.batch["prompts"][src])
        # the demonstration (ending in EOS) right-padded with the pad id
        assert t["responses"][:L].tolist() == ids and ids[-1] == EOS_ID
        assert (t["responses"][L:] == PAD_ID).all()
        assert t["response_mask"].tolist() == [1] * L + [0] * (R - L)
        assert t["response_mask"].dtype == batch.batch["response_mask"].dtype
        assert torch.equal(t["input_ids"], torch.cat([batch.batch["prompts"][src], t["responses"]]))
        prompt_attn = batch.batch["attention_mask"][src][:P]
        assert torch.equal(prompt_attn, (batch.batch["prompts"][src] != PAD_ID).long())
        assert t["attention_mask"].tolist() == prompt_attn.tolist() + [1] * L + [0] * (R - L)
        # positions: number of attended tokens before, 0 on the left padding; verl's own function
        att = t["attention_mask"]
        for j in range(P + L):
            want = int(att[:j].sum()) if att[j] else 0
            assert int(t["position_ids"][j]) == want, (q, j)
        assert torch.equal(t["position_ids"], compute_position_id_with_mask(att.unsqueeze(0))[0])
        # the score on the last valid token only
        want_rm = torch.zeros(R)
        want_rm[L - 1] = demo_scores[q]
        assert torch.equal(t["rm_scores"], want_rm)
        # response-aligned data of the template rollout is not carried over
        assert (t["rollout_log_probs"] == 0).all()
        assert t[HPT_ROW_KIND] == 1.0 and t[HPT_ROW_WEIGHT] == float(beta[q])
        uid = merged.non_tensor_batch["uid"][row]
        assert uid == (f"uid-{q}{DEMO_UID_SUFFIX}" if placement == "replace" else f"uid-{q}")
        # the question's other non-tensor columns come with the prompt
        assert merged.non_tensor_batch["extra_info"][row] == batch.non_tensor_batch["extra_info"][src]
        assert merged.non_tensor_batch["reward_model"][row] == batch.non_tensor_batch["reward_model"][src]
    # a full-width demonstration fills the response exactly; the sequence score sums to the demo score
    assert merged.batch["response_mask"][5].sum() == R
    np.testing.assert_allclose(merged.batch["rm_scores"][[0, 5, 14]].sum(-1).numpy(), [0.75, 0.25, 1.0])


def test_demo_position_ids_follow_a_left_padded_prompt():
    # a prompt of 2 tokens in a width-6 slot: positions 0,0,0,0,0,1 | 2,3,4 then right pads
    batch = make_rollout_batch([(2, 0)], seed=0)
    batch.batch["prompts"][:] = torch.tensor([PAD_ID] * 4 + [9, 10])
    batch.batch["attention_mask"][:, :6] = torch.tensor([0, 0, 0, 0, 1, 1])
    merged, *_ = run_gate_and_merge(batch, GateConfig(), demo_len=[3])
    assert merged.batch["position_ids"][0, :9].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4]
    assert merged.batch["input_ids"][0, :9].tolist() == [PAD_ID] * 4 + [9, 10] + demo_tokens(0, 3)


def test_demo_extra_lands_in_the_non_tensor_columns():
    batch, (merged, *_rest) = _merged_linear()
    acc = merged.non_tensor_batch["acc"]
    assert acc.dtype == batch.non_tensor_batch["acc"].dtype
    assert [acc[0], acc[5], acc[14]] == [0.5, 0.125, 1.0]
    # rollout rows keep their own verified accuracy
    assert acc[1:5].tolist() == batch.non_tensor_batch["acc"][4:8].tolist()


def test_no_demo_scores_gives_zero_rm_scores():
    batch = make_rollout_batch([(4, 0), (4, 3)], seed=2)
    merged, *_ = run_gate_and_merge(batch, GateConfig())
    assert merged.batch[HPT_ROW_KIND][0] == 1 and (merged.batch["rm_scores"][0] == 0).all()


def test_switch_replace_keeps_only_rollouts_or_the_demo():
    batch = make_rollout_batch([(8, 0), (8, 1), (8, 2), (8, 3), (8, 8)], seed=3)
    merged, mstats, *_ = run_gate_and_merge(batch, GateConfig(gamma=2 / 8))
    assert merged.non_tensor_batch["uid"].tolist() == (["uid-0::demo", "uid-1::demo", "uid-2::demo"]
                                                       + ["uid-3"] * 8 + ["uid-4"] * 8)  # fmt: skip
    assert merged.batch[HPT_ROW_WEIGHT].tolist() == [1.0] * 19
    assert (mstats.rollout_rows, mstats.demo_rows) == (16, 3)


def test_add_placement_with_kept_rollouts_joins_the_group():
    batch = make_rollout_batch([(4, 0), (4, 3)], seed=4)
    cfg = GateConfig(gamma=0.0, placement="add", keep_gated_rollouts=True)
    merged, mstats, *_ = run_gate_and_merge(batch, cfg, demo_scores=[1.0, 0.0])
    assert merged.non_tensor_batch["uid"].tolist() == ["uid-0"] * 5 + ["uid-1"] * 4
    assert merged.batch[HPT_ROW_KIND].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert merged.batch[HPT_ROW_WEIGHT].tolist() == [1.0] * 9
    assert (mstats.rollout_rows, mstats.demo_rows, mstats.num_gated, mstats.num_rl) == (8, 1, 1, 2)
    # GRPO's group statistics of uid-0 include the demonstration (scores 0,0,0,0 | 1): mean 0.2
    adv, _ = compute_grpo_outcome_advantage(merged.batch["rm_scores"], merged.batch["response_mask"],
                                            merged.non_tensor_batch["uid"], norm_adv_by_std_in_grpo=False)
    seq_adv = adv.sum(-1) / merged.batch["response_mask"].sum(-1)
    np.testing.assert_allclose(seq_adv[:5].numpy(), [-0.2, -0.2, -0.2, -0.2, 0.8], atol=1e-6)


def _mix_on(spec, seed, **gate):
    cfg = GateConfig(gamma=0.0, demo_arms=("demo", "demo_off"), **gate)
    batch = make_rollout_batch(spec, seed=seed)
    return batch, run_gate_and_merge(batch, cfg, demo_scores=[1.0] * len(spec),
                                     demo_extra={"acc": [0.5 + q for q in range(len(spec))]})


def test_demo_arms_both_give_two_demo_rows_per_gated_question():
    # q0 and q2 have no correct rollout (gated at γ = 0), q1 has 2 of 4 correct
    batch, (merged, mstats, stats, alpha, beta, demo_ids) = _mix_on([(4, 0), (4, 2), (3, 0)], seed=6,
                                                                      keep_gated_rollouts=True)
    assert merged.non_tensor_batch["uid"].tolist() == (["uid-0"] * 4 + ["uid-0::demo", "uid-0"] + ["uid-1"] * 4
                                                       + ["uid-2"] * 3 + ["uid-2::demo", "uid-2"])  # fmt: skip
    assert merged.batch[HPT_ROW_KIND].tolist() == [0] * 4 + [1, 2] + [0] * 4 + [0] * 3 + [1, 2]
    assert merged.batch[HPT_ROW_WEIGHT].tolist() == [1.0] * 15  # kept rollouts at α = 1, demos at β = 1
    assert (mstats.num_questions, mstats.num_gated, mstats.num_rl) == (3, 2, 3)
    assert (mstats.rollout_rows, mstats.demo_rows, mstats.demo_off_rows) == (11, 4, 2)
    # the two rows of a demonstration are the same sequence (tokens, masks, positions, score, extras)
    for sft_row, off_row, q in ((4, 5, 0), (13, 14, 2)):
        for key in merged.batch.keys():
            if key != HPT_ROW_KIND:
                assert torch.equal(merged.batch[key][sft_row], merged.batch[key][off_row]), key
        assert merged.batch["responses"][sft_row][: len(demo_ids[q])].tolist() == demo_ids[q]
        assert merged.non_tensor_batch["acc"][sft_row] == merged.non_tensor_batch["acc"][off_row] == 0.5 + q
        first = stats.first_row[q]
        assert merged.non_tensor_batch["extra_info"][off_row] == batch.non_tensor_batch["extra_info"][first]
    # GRPO (no std): the demo_off row is in its question's group (4 failed rollouts + demo: mean 0.2),
    # the SFT row is a group of its own (verl: mean 0 for a single row, so Â = its score)
    adv, _ = compute_grpo_outcome_advantage(merged.batch["rm_scores"], merged.batch["response_mask"],
                                            merged.non_tensor_batch["uid"], norm_adv_by_std_in_grpo=False)
    seq_adv = adv.sum(-1) / merged.batch["response_mask"].sum(-1)
    np.testing.assert_allclose(seq_adv[:6].numpy(), [-0.2] * 4 + [1.0, 0.8], atol=1e-6)
    np.testing.assert_allclose(seq_adv[10:].numpy(), [-0.25] * 3 + [1.0, 0.75], atol=1e-6)


def test_demo_arms_off_only_and_without_kept_rollouts():
    spec = [(4, 0), (4, 3)]
    batch = make_rollout_batch(spec, seed=9)
    cfg = GateConfig(demo_arms=("demo_off",), keep_gated_rollouts=True)
    merged, mstats, *_ = run_gate_and_merge(batch, cfg, demo_scores=[1.0, 1.0])
    assert merged.non_tensor_batch["uid"].tolist() == ["uid-0"] * 5 + ["uid-1"] * 4
    assert merged.batch[HPT_ROW_KIND].tolist() == [0] * 4 + [2] + [0] * 4
    assert (mstats.demo_rows, mstats.demo_off_rows) == (1, 1)
    # without kept rollouts the demo_off row is alone in its group (the release's off_sft reading)
    merged, mstats, *_ = run_gate_and_merge(batch, GateConfig(demo_arms=("demo_off",)), demo_scores=[1.0, 1.0])
    assert merged.non_tensor_batch["uid"].tolist() == ["uid-0"] + ["uid-1"] * 4
    assert merged.batch[HPT_ROW_KIND].tolist() == [2] + [0] * 4
    # Mix/ON without kept rollouts: both demonstration rows, no rollouts of the gated question
    _, (merged, mstats, *_r) = _mix_on(spec, seed=9)
    assert merged.non_tensor_batch["uid"].tolist() == ["uid-0::demo", "uid-0"] + ["uid-1"] * 4
    assert merged.batch[HPT_ROW_KIND].tolist() == [1, 2] + [0] * 4
    # placement=add only changes the demo row's uid; the demo_off row always joins the group
    _, (merged, *_r) = _mix_on(spec, seed=9, placement="add")
    assert merged.non_tensor_batch["uid"].tolist() == ["uid-0", "uid-0"] + ["uid-1"] * 4


def test_demo_arms_default_is_one_demo_row():
    batch = make_rollout_batch([(4, 0), (4, 3)], seed=9)
    stats = question_stats(batch.non_tensor_batch["uid"], sequence_scores(batch))
    alpha, beta = gate_by_pass_rate(stats.correct, stats.n, GateConfig())
    merged, mstats = merge_demonstrations(batch, stats, alpha, beta, [demo_tokens(0, 3), None], PAD_ID)
    assert merged.batch[HPT_ROW_KIND].tolist() == [1] + [0] * 4 and mstats.demo_off_rows == 0
    for bad in ((), ("sft",), ("demo", "demo"), "demo"):
        with pytest.raises(ValueError, match="demo_arms"):
            merge_demonstrations(batch, stats, alpha, beta, [demo_tokens(0, 3), None], PAD_ID, demo_arms=bad)
    with pytest.raises(ValueError, match="placement='mix'"):
        merge_demonstrations(batch, stats, alpha, beta, [demo_tokens(0, 3), None], PAD_ID, placement="mix")


def test_mix_on_batch_through_the_actor_loss_is_the_sum_of_its_arms():
    """Merge → GRPO → hpt_actor_loss with hpt_release_off: the gradient equals each arm's loss
    written by hand on the rows the merge flagged for it (SFT rows token mean × coef, off rows
    −Â·p/(p+0.1) Σ/8192, rollouts −Â·ratio Σ/8192)."""
    policy = TinyPolicy(seed=2)
    upge = preset("hpt_release_off")
    loss_fn = functools.partial(hpt_actor_loss, config=actor_config(entropy_coeff=0.0), upge=upge)
    batch = training_batch("hpt_release_off", policy)
    assert sorted(set(batch.batch[HPT_ROW_KIND].tolist())) == [0.0, 1.0, 2.0]
    got = actor_gradient(policy, copy.deepcopy(batch), loss_fn, len(batch), 1, False)

    td = left_right_2_no_padding(batch.to_tensordict())
    logp = no_padding_2_padding(policy.model_output(td, False)["log_probs"], td)
    m = batch.batch["response_mask"].bool()
    kind = batch.batch[HPT_ROW_KIND]
    A, old = batch.batch["advantages"], batch.batch["old_log_probs"]
    # micro-token-mean: one SFT mean per micro-batch of MICRO rows that holds demo rows
    sft = 0.0
    for start in range(0, len(batch), MICRO):
        rows = torch.arange(start, min(start + MICRO, len(batch)))
        mm = m[rows] & (kind[rows] == 1).unsqueeze(-1)
        if mm.any():
            sft = sft + (-logp[rows] * mm).sum() / mm.sum()
    rl = (-A * torch.exp(logp - old) * (m & (kind == 0).unsqueeze(-1))).sum() / 8192
    p = logp.exp()
    off = (-A * p / (p + 0.1) * (m & (kind == 2).unsqueeze(-1))).sum() / 8192
    g_off = torch.autograd.grad(off, policy.params, retain_graph=True)
    assert max(g.abs().max().item() for g in g_off) > 1e-6  # the off arm is part of the check
    want = torch.autograd.grad(rl + upge.demo.coef * sft + off, policy.params)
    _assert_same_grads(want, got)


def test_gated_question_without_demonstration_raises():
    batch = make_rollout_batch([(4, 1), (4, 0)], seed=5)
    stats = question_stats(batch.non_tensor_batch["uid"], sequence_scores(batch))
    alpha, beta = gate_by_pass_rate(stats.correct, stats.n, GateConfig())
    with pytest.raises(ValueError, match=r"question\(s\) \[1\] gated to SFT but have no demonstration"):
        merge_demonstrations(batch, stats, alpha, beta, [demo_tokens(0, 3), None], PAD_ID)


def test_merge_argument_errors():
    batch = make_rollout_batch([(4, 1), (4, 0)], seed=5)
    stats = question_stats(batch.non_tensor_batch["uid"], sequence_scores(batch))
    with pytest.raises(ValueError, match="alpha/beta must have shape"):
        merge_demonstrations(batch, stats, np.ones(3), np.zeros(3), [None] * 2, PAD_ID)
    with pytest.raises(ValueError, match="kept no rows"):
        merge_demonstrations(batch, stats, np.zeros(2), np.zeros(2), [None] * 2, PAD_ID)
    with pytest.raises(ValueError, match=rf"has {RESPONSE_LEN + 1} tokens > response_length {RESPONSE_LEN}"):
        merge_demonstrations(batch, stats, np.zeros(2), np.ones(2), [demo_tokens(0, RESPONSE_LEN + 1)] * 2, PAD_ID)
    template = batch.select_idxs(np.array([0]))
    with pytest.raises(ValueError, match="2 demonstrations for 1 template rows"):
        build_demo_rows(template, [[5], [6]], PAD_ID)


# --------------------------------------------------------------------------- encode_demonstrations


@pytest.fixture(scope="module")
def char_tokenizer():
    from verl_ext.tiny import build_char_tokenizer

    return build_char_tokenizer()


def test_encode_appends_eos_and_counts_truncations(char_tokenizer):
    tok = char_tokenizer
    eos = tok.eos_token_id
    full = tok("héllo", add_special_tokens=False)["input_ids"]
    assert len(full) == 6  # byte-level: é is two tokens
    ids, truncated = encode_demonstrations(tok, ["ab", "héllo", "abcd"], response_length=5)
    assert truncated == 1
    assert ids[0] == tok("ab", add_special_tokens=False)["input_ids"] + [eos] and len(ids[0]) == 3
    assert ids[1] == full[:5] and eos not in ids[1]  # the first response_length tokens, no EOS
    assert ids[2] == tok("abcd", add_special_tokens=False)["input_ids"] + [eos] and len(ids[2]) == 5  # fits
    assert tok.decode(ids[0]) == "ab" + tok.eos_token
    ids, truncated = encode_demonstrations(tok, ["abcd"], response_length=4)
    assert truncated == 1 and ids[0] == tok("abcd", add_special_tokens=False)["input_ids"]


def test_encode_errors(char_tokenizer):
    with pytest.raises(ValueError, match="demonstration of question 1 is empty"):
        encode_demonstrations(char_tokenizer, ["a", ""], 8)
    with pytest.raises(ValueError, match="not a string"):
        encode_demonstrations(char_tokenizer, [None], 8)

    class NoEos:
        eos_token_id = None

    with pytest.raises(ValueError, match="no eos_token_id"):
        encode_demonstrations(NoEos(), ["a"], 8)


def test_encoded_demonstration_round_trips_through_the_merge(char_tokenizer):
    tok = char_tokenizer
    batch = make_rollout_batch([(4, 0), (4, 4)], seed=6)
    stats = question_stats(batch.non_tensor_batch["uid"], sequence_scores(batch))
    alpha, beta = gate_by_pass_rate(stats.correct, stats.n, GateConfig())
    ids, truncated = encode_demonstrations(tok, ["x=7"], RESPONSE_LEN)
    merged, _ = merge_demonstrations(batch, stats, alpha, beta, [ids[0], None], tok.pad_token_id)
    row = merged.batch["responses"][0]
    n = int(merged.batch["response_mask"][0].sum())
    assert truncated == 0 and n == 4
    assert tok.decode(row[:n].tolist()) == "x=7" + tok.eos_token
    assert (row[n:] == tok.pad_token_id).all()


# ------------------------------------------------------------------------------------------ padding


def test_pad_rows_are_inert_copies_with_their_own_uids():
    batch, (merged, *_rest) = _merged_linear()
    before = {k: merged.batch[k].clone() for k in merged.batch.keys()}
    uids_before = merged.non_tensor_batch["uid"].copy()
    padded, n_pad = pad_with_zero_weight_rows(merged, 8)
    assert n_pad == 1 and len(padded) == 16 and len(padded) % 8 == 0
    for key, val in before.items():  # the real rows are untouched
        assert torch.equal(padded.batch[key][:15], val), key
    assert padded.non_tensor_batch["uid"][:15].tolist() == uids_before.tolist()
    pad = {k: padded.batch[k][15] for k in padded.batch.keys()}
    assert (pad["response_mask"] == 0).all() and pad[HPT_ROW_WEIGHT] == 0.0
    assert (pad["rm_scores"] == 0).all()
    assert torch.equal(pad["input_ids"], before["input_ids"][14])  # the last row's shapes and ids
    # one token through the forward passes: the last prompt position, where a left-padded prompt ends
    prompt_len = before["prompts"].shape[1]
    assert pad["attention_mask"].sum() == 1 and pad["attention_mask"][prompt_len - 1] == 1
    assert before["attention_mask"][14].sum() > 1
    assert padded.non_tensor_batch["uid"][15] == f"{PAD_UID_PREFIX}15"  # position-based: passes never collide

    padded, n_pad = pad_with_zero_weight_rows(merged, 6)
    assert n_pad == 3 and len(padded) == 18
    pad_uids = padded.non_tensor_batch["uid"][15:].tolist()
    assert len(set(pad_uids)) == 3 and not set(pad_uids) & set(uids_before.tolist())
    assert padded.batch["response_mask"][15:].sum() == 0 and padded.batch[HPT_ROW_WEIGHT][15:].tolist() == [0.0] * 3


def test_pad_rows_cost_one_token_each_and_verls_balancing_keeps_equal_shares():
    """The tokens a padded batch sends through old log-probs and the update (its attention-mask
    sum, what remove-padding and dynamic batch sizes process) grow by one per padding row, and
    verl's balancer still gives every DP rank the same number of rows."""
    from verl.utils.seqlen_balancing import get_seqlen_balanced_partitions

    _, (merged, *_rest) = _merged_linear()
    real_tokens = int(merged.batch["attention_mask"].sum())
    padded, n_pad = pad_with_zero_weight_rows(merged, 8)
    assert int(padded.batch["attention_mask"].sum()) == real_tokens + n_pad
    padded, n_pad = pad_with_zero_weight_rows(merged, 12)
    assert n_pad == 9 and int(padded.batch["attention_mask"].sum()) == real_tokens + 9
    seqlens = padded.batch["attention_mask"].sum(-1).tolist()
    parts = get_seqlen_balanced_partitions(seqlens, k_partitions=4, equal_size=True)
    assert sorted(len(p) for p in parts) == [6, 6, 6, 6]


def test_pad_noop_cases_and_a_batch_without_hpt_keys():
    batch = make_rollout_batch([(4, 1), (4, 2)], seed=7)
    same, n_pad = pad_with_zero_weight_rows(batch, 8)
    assert same is batch and n_pad == 0
    assert pad_with_zero_weight_rows(batch, 1)[1] == 0
    batch.batch["advantages"] = torch.ones(8, RESPONSE_LEN)
    keys_before = set(batch.batch.keys())
    padded, n_pad = pad_with_zero_weight_rows(batch, 5)
    assert n_pad == 2
    assert set(batch.batch.keys()) == keys_before and len(batch) == 8  # the input is not mutated
    assert HPT_ROW_WEIGHT not in batch.batch.keys() and HPT_ROW_KIND not in batch.batch.keys()
    assert padded.batch[HPT_ROW_WEIGHT].tolist() == [1.0] * 8 + [0.0] * 2
    assert padded.batch[HPT_ROW_KIND].tolist() == [0.0] * 10
    assert (padded.batch["advantages"][8:] == 0).all() and (padded.batch["advantages"][:8] == 1).all()


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_grpo_advantage_of_pad_rows_is_zero_and_real_rows_unchanged(norm_by_std):
    # the last real row is a rollout of a mixed group (3 of 4 correct): a pad sharing its uid would shift it
    batch = make_rollout_batch([(4, 0), (4, 2), (4, 0), (4, 3)], seed=8)
    merged, *_ = run_gate_and_merge(batch, GateConfig(), demo_scores=[0.0, 0.0, 1.0, 0.0])
    assert len(merged) == 10 and merged.batch[HPT_ROW_KIND][-1] == 0
    padded, n_pad = pad_with_zero_weight_rows(copy.deepcopy(merged), 8)
    assert n_pad == 6

    def grpo(b, index=None):
        index = b.non_tensor_batch["uid"] if index is None else index
        adv, _ = compute_grpo_outcome_advantage(b.batch["rm_scores"], b.batch["response_mask"], index,
                                                norm_adv_by_std_in_grpo=norm_by_std)
        return adv

    real, padv = grpo(merged), grpo(padded)
    assert torch.equal(padv[:10], real)
    assert (padv[10:] == 0).all()
    assert real[6:].abs().sum() > 0  # the mixed group has non-zero advantages
    # the check can fail: pads grouped with the last row change its group's advantages
    shared = padded.non_tensor_batch["uid"].copy()
    shared[10:] = shared[9]
    assert not torch.allclose(grpo(padded, shared)[6:10], real[6:10])


# ---------------------------------------------------------------- padding and the actor's gradient

DT = torch.float64
MICRO = 4  # ppo_micro_batch_size_per_gpu


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # The tensors are tiny; on a shared 2-core machine intra-op threads only add contention.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def preset(name):
    return load_upge_config(OmegaConf.load(os.path.join(PRESET_DIR, f"{name}.yaml")))


@functools.lru_cache(maxsize=1)
def _actor_node():
    path = os.path.join(os.path.dirname(verl.__file__), "trainer", "config", "_generated_ppo_trainer.yaml")
    node = OmegaConf.load(path).actor_rollout_ref.actor
    node.ppo_micro_batch_size_per_gpu = MICRO
    return node


def actor_config(**overrides):
    """verl's ActorConfig from its packaged defaults (as tests/unit/loss/test_upge.py builds it)."""
    node = copy.deepcopy(_actor_node())
    for key, value in overrides.items():
        OmegaConf.update(node, key, value, merge=False)
    return omega_conf_to_dataclass(node)


class TinyPolicy:
    """logits(token, position) = tanh(E[token] + Π[position]) · W, float64; real parameters to differentiate."""

    def __init__(self, seed=0, vocab=40, hidden=6, max_pos=32):
        g = torch.Generator().manual_seed(seed)
        self.params = [
            (torch.randn(vocab, hidden, generator=g, dtype=DT) * 0.8).requires_grad_(True),
            (torch.randn(max_pos, hidden, generator=g, dtype=DT) * 0.5).requires_grad_(True),
            (torch.randn(hidden, vocab, generator=g, dtype=DT) * 0.8).requires_grad_(True),
        ]

    def model_output(self, micro, with_entropy):
        """What verl's engine hands the loss: nested per-sequence log-probs over the unpadded
        tokens, position j holding log π(token j+1) (flat roll, as the engine does)."""
        ids, pos = micro["input_ids"], micro["position_ids"]
        emb, pemb, out = self.params
        logits = torch.tanh(emb[ids.values()] + pemb[pos.values()]) @ out
        logp = torch.log_softmax(logits, dim=-1)
        nxt = torch.roll(ids.values(), shifts=-1)
        result = {"log_probs": logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)}
        if with_entropy:
            result["entropy"] = -(logp.exp() * logp).sum(-1)
        return {k: torch.nested.nested_tensor_from_jagged(v, ids.offsets()) for k, v in result.items()}


def _gate_for(name):
    upge = preset(name)
    if upge.rollout is None:
        return GateConfig(strategy="always")
    if upge.demo is None:
        return GateConfig(strategy="never")
    if name in ("luffy", "srft", "srft_release"):  # off-policy demonstrations join the rollout group
        return GateConfig(gamma=0.25, placement="add", keep_gated_rollouts=True)
    if upge.demo_off is not None:  # Mix/ON: an SFT row of its own and an off-policy row in the group
        return GateConfig(gamma=0.25, keep_gated_rollouts=True, demo_arms=("demo", "demo_off"))
    return GateConfig(gamma=0.25)


def training_batch(name, policy, seed=31):
    """Rollout → gate → merge → GRPO advantages → old log-probs: the batch _update_actor receives.

    Rows: 10 (demo, 4 rollouts, demo, 4 rollouts) for the two-arm methods with replace placement,
    18 with add placement and kept rollouts, 20 (two demonstration rows per gated question) for the
    three-arm hpt_release_off, 4 demo rows for SFT, 12 rollouts for the RL-only methods; padded to a
    multiple of 8, each leaves a last micro-batch of padding rows only.
    """
    spec = [(4, 0), (4, 2), (4, 1), (4, 3)]  # γ = 1/4 gates q0 and q2
    if preset(name).demo is None:
        spec = spec[:3]
    batch = make_rollout_batch(spec, seed=seed)
    merged, *_ = run_gate_and_merge(batch, _gate_for(name), demo_len=[5, 3, 8, 4],
                                    demo_scores=[1.0, 1.0, 1.0, 1.0])
    if "rollout_log_probs" in merged.batch.keys() and merged.batch[HPT_ROW_KIND].any():
        merged.batch.pop("rollout_log_probs")  # as RayHPTTrainer does
    adv, _ = compute_grpo_outcome_advantage(merged.batch["rm_scores"], merged.batch["response_mask"],
                                            merged.non_tensor_batch["uid"], norm_adv_by_std_in_grpo=True)
    merged.batch["advantages"] = adv.to(DT)
    # old log-probs: the policy's own, moved by noise so that PPO ratios leave [0.8, 1.2]
    td = left_right_2_no_padding(merged.to_tensordict())
    with torch.no_grad():
        lp = no_padding_2_padding(policy.model_output(td, False)["log_probs"], td)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(lp.shape, generator=g, dtype=DT) * 0.7
    merged.batch["old_log_probs"] = (lp + noise) * merged.batch["response_mask"]
    return merged


def actor_gradient(policy, batch, loss_fn, mini_batch_size, dp_size, with_entropy):
    """One mini-batch of verl's actor update, gradients w.r.t. the policy's parameters.

    Driver: annotate the per-arm totals, to_tensordict, left_right_2_no_padding, global_batch_size =
    mini-batch size; DP dispatch in contiguous chunks; each rank: batch_num_tokens all-reduced,
    dp_size, micro-batches of MICRO rows, each micro-batch loss back-propagated undivided (so it must
    require grad); FSDP averages the ranks' gradients.
    """
    annotate_arm_token_counts(batch, mini_batch_size=mini_batch_size, dp_size=dp_size)
    td = left_right_2_no_padding(batch.to_tensordict())
    assert len(batch) == mini_batch_size  # one mini-batch
    tu.assign_non_tensor(td, global_batch_size=mini_batch_size, dp_size=dp_size,
                         batch_num_tokens=int(td["loss_mask"].sum().item()))
    per_rank = len(batch) // dp_size
    grads = [torch.zeros_like(p) for p in policy.params]
    for rank in range(dp_size):
        rows = list(range(rank * per_rank, (rank + 1) * per_rank))
        for start in range(0, per_rank, MICRO):
            micro = tu.index_select_tensor_dict(td, torch.as_tensor(rows[start : start + MICRO]))
            loss, _ = loss_fn(model_output=policy.model_output(micro, with_entropy), data=micro, dp_group=None)
            assert loss.requires_grad, "verl calls loss.backward() on every micro-batch"
            for acc, g in zip(grads, torch.autograd.grad(loss, policy.params, allow_unused=True)):
                if g is not None:
                    acc += g / dp_size
    return grads


def _assert_same_grads(want, got):
    assert max(g.abs().max().item() for g in want) > 1e-4, "the reference gradient is ~0: nothing is tested"
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("entropy_coeff", [0.0, 0.001])
@pytest.mark.parametrize("name", PRESETS)
def test_padding_rows_do_not_change_the_gradient(name, entropy_coeff):
    policy = TinyPolicy(seed=1)
    upge = preset(name)
    loss_fn = functools.partial(hpt_actor_loss, config=actor_config(entropy_coeff=entropy_coeff), upge=upge)
    # verl computes the entropy when entropy_coeff != 0 or actor.calculate_entropy=true, which a run of
    # a preset with H̄-weighted parts (SRFT) sets
    with_entropy = entropy_coeff != 0.0 or upge.needs_row_entropy
    real = training_batch(name, policy)
    padded, n_pad = pad_with_zero_weight_rows(copy.deepcopy(real), 8)
    assert len(padded) % 8 == 0 and n_pad > 0
    if preset(name).demo is not None and preset(name).rollout is not None:
        assert 0 < int(real.batch[HPT_ROW_KIND].sum()) < len(real)  # both arms present
    # 16 rows in micro-batches of 4: the last micro-batch holds padding rows only
    assert (padded.batch[HPT_ROW_WEIGHT][-MICRO:] == 0).all()

    if upge.gal_coef:
        # DYPO's group-alignment weights, as the trainer fills them after padding: 0 on padding rows
        from verl_ext.loss.gal import HPT_GAL_WEIGHT, annotate_gal_weights

        for b in (real, padded):
            annotate_gal_weights(b, correct_threshold=1.0, beta=upge.gal_beta)
        assert padded.batch[HPT_GAL_WEIGHT][-n_pad:].abs().max() == 0
        assert real.batch[HPT_GAL_WEIGHT].abs().max() > 0  # a mixed group: the term is on

    want = actor_gradient(policy, copy.deepcopy(real), loss_fn, len(real), 1, with_entropy)
    got = actor_gradient(policy, padded, loss_fn, len(padded), 1, with_entropy)
    _assert_same_grads(want, got)

    if upge.split_invariant(with_entropy_bonus=entropy_coeff != 0.0):
        # (per-micro-batch means depend on the rank split on purpose: the release's SFT arm, SRFT's
        # NLL term, the release presets' entropy bonus)
        got_dp2 = actor_gradient(policy, copy.deepcopy(padded), loss_fn, len(padded), 2, with_entropy)
        want_dp2 = actor_gradient(policy, copy.deepcopy(real), loss_fn, len(real), 2, with_entropy)
        _assert_same_grads(want_dp2, got_dp2)
        scale = 0.5 if preset(name).average_over_dp_ranks else 1.0
        _assert_same_grads([scale * g for g in want], got_dp2)


def test_naive_padding_would_change_the_gradient():
    # Repeating the last row as a live row (what a padding without zero weight would do) is not inert,
    # so the equality above is a real check.
    policy = TinyPolicy(seed=1)
    loss_fn = functools.partial(hpt_actor_loss, config=actor_config(entropy_coeff=0.001), upge=preset("hpt_paper"))
    real = training_batch("hpt_paper", policy)
    naive = DataProto.concat([real, real.select_idxs(np.full(6, len(real) - 1))])
    want = actor_gradient(policy, copy.deepcopy(real), loss_fn, len(real), 1, True)
    got = actor_gradient(policy, naive, loss_fn, len(naive), 1, True)
    assert max((a - b).abs().max().item() for a, b in zip(want, got)) > 1e-4


@pytest.mark.parametrize("rows", [16, 32])
def test_the_release_sft_weight_is_the_number_of_demo_micro_batches_over_all_ranks(rows):
    """The release averages the SFT arm per micro-batch and sums the micro-batches (FSDP averaging the
    ranks): its SFT gradient is k·D times the split-invariant preset's, k demonstration-holding
    micro-batches per rank and D ranks (here: two micro-batches with one demonstration each, over
    however many ranks), not k."""
    policy = TinyPolicy(seed=1)
    base = training_batch("hpt", policy)
    base.batch["advantages"] = torch.zeros_like(base.batch["advantages"])  # the RL arm off: SFT only
    padded, _ = pad_with_zero_weight_rows(base, rows)
    kinds = padded.batch[HPT_ROW_KIND]

    def norm(name, dp):
        fn = functools.partial(hpt_actor_loss, config=actor_config(entropy_coeff=0.0), upge=preset(name))
        grads = actor_gradient(policy, copy.deepcopy(padded), fn, len(padded), dp, False)
        return torch.sqrt(sum((g ** 2).sum() for g in grads)).item()

    for dp in (1, 2, 4):
        demo_micro = sum(bool((kinds[s:s + MICRO] > 0).any()) for s in range(0, len(padded), MICRO))
        assert demo_micro == 2
        assert norm("hpt_release", dp) / norm("hpt", dp) == pytest.approx(demo_micro, rel=1e-3)
