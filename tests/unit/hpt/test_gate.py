"""Tests of HPT's verification-accuracy gate (verl_ext.hpt.gate; paper Eq. 8-10).

The batches are crafted as verl's ``RayPPOTrainer.fit`` holds them after rollout and reward:
rows of one question contiguous (``repeat(n, interleave=True)``), prompts left-padded, responses
right-padded, ``rm_scores`` (B,R) holding the verifier's score on the last valid response token.
``make_rollout_batch`` is also used by tests/unit/hpt/test_merge.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from verl import DataProto

from verl_ext.hpt.gate import GateConfig, GateConfigError, gate_by_pass_rate, question_stats, route_stopped

PAD_ID = 3
EOS_ID = 2
VOCAB = 40  # token ids 4..39 are "text"; 2 and 3 never occur inside a prompt or response
PROMPT_LEN = 6
RESPONSE_LEN = 8


def make_rollout_batch(spec, seed=0, prompt_len=PROMPT_LEN, response_len=RESPONSE_LEN):
    """A post-rollout verl batch: question q has ``spec[q] = (n, k)``: n rollouts, k of them correct.

    The correct rollouts are scattered among the question's rows (not the first k). Returns the
    DataProto; its rows of question q are contiguous, uid ``f"uid-{q}"``.
    """
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    P, R = prompt_len, response_len
    prompts, responses, rmask, scores, uids, infos, accs = [], [], [], [], [], [], []
    for q, (n, k) in enumerate(spec):
        p_len = int(torch.randint(1, P + 1, (1,), generator=g))
        prompt = torch.full((P,), PAD_ID, dtype=torch.long)
        prompt[P - p_len :] = torch.randint(4, VOCAB, (p_len,), generator=g)
        correct = np.zeros(n, dtype=bool)
        correct[rng.permutation(n)[:k]] = True
        for i in range(n):
            r_len = int(torch.randint(1, R + 1, (1,), generator=g))
            resp = torch.full((R,), PAD_ID, dtype=torch.long)
            resp[:r_len] = torch.randint(4, VOCAB, (r_len,), generator=g)
            m = torch.zeros(R, dtype=torch.long)
            m[:r_len] = 1
            s = torch.zeros(R, dtype=torch.float32)
            s[r_len - 1] = 1.0 if correct[i] else 0.0  # the score sits on the last valid token
            prompts.append(prompt.clone())
            responses.append(resp)
            rmask.append(m)
            scores.append(s)
            uids.append(f"uid-{q}")
            infos.append({"index": 100 + q, "target": f"demonstration of question {q}"})
            accs.append(float(correct[i]))
    prompts, responses = torch.stack(prompts), torch.stack(responses)
    response_mask = torch.stack(rmask)
    attention_mask = torch.cat([(prompts != PAD_ID).long(), response_mask], dim=-1)
    position_ids = torch.clamp(attention_mask.cumsum(-1) - 1, min=0)  # verl's compute_position_id_with_mask
    b = len(uids)
    rollout_log_probs = -torch.rand(b, R, generator=g) * response_mask
    tensors = {
        "prompts": prompts,
        "responses": responses,
        "response_mask": response_mask,
        "input_ids": torch.cat([prompts, responses], dim=-1),
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "rm_scores": torch.stack(scores),
        "rollout_log_probs": rollout_log_probs,
    }
    non_tensors = {
        "uid": np.asarray(uids, dtype=object),
        "extra_info": np.asarray(infos, dtype=object),
        "data_source": np.asarray(["arith"] * b, dtype=object),
        "reward_model": np.asarray([{"ground_truth": u, "style": "rule"} for u in uids], dtype=object),
        "acc": np.asarray(accs, dtype=np.float64),
    }
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors, meta_info={"temperature": 1.0})


def sequence_scores(batch: DataProto) -> np.ndarray:
    """What the trainer feeds the gate: the sequence-level reward, rm_scores summed over tokens."""
    return batch.batch["rm_scores"].sum(-1).float().numpy()


def gate(batch, **cfg):
    config = GateConfig.from_mapping(cfg)
    stats = question_stats(batch.non_tensor_batch["uid"], sequence_scores(batch), config.correct_threshold)
    alpha, beta = gate_by_pass_rate(stats.correct, stats.n, config)
    return stats, alpha, beta


# k correct of n = 8, then of n = 4
SPEC8 = [(8, 0), (8, 1), (8, 2), (8, 3), (8, 5), (8, 8)]
SPEC4 = [(4, 0), (4, 1), (4, 2), (4, 4)]


# ------------------------------------------------------------------------------------ statistics


def test_question_stats_counts_scores_on_the_last_token():
    batch = make_rollout_batch(SPEC8 + SPEC4, seed=1)
    stats = question_stats(batch.non_tensor_batch["uid"], sequence_scores(batch))
    assert stats.uids.tolist() == [f"uid-{q}" for q in range(10)]
    assert stats.n.tolist() == [8] * 6 + [4] * 4
    assert stats.correct.tolist() == [0, 1, 2, 3, 5, 8, 0, 1, 2, 4]
    assert stats.first_row.tolist() == [0, 8, 16, 24, 32, 40, 48, 52, 56, 60]
    assert [r.tolist() for r in stats.rows[5:7]] == [list(range(40, 48)), list(range(48, 52))]
    np.testing.assert_allclose(stats.pass_rate, [0, 1 / 8, 2 / 8, 3 / 8, 5 / 8, 1, 0, 1 / 4, 2 / 4, 1])
    # and the counts agree with the per-row acc column the batch was built with
    acc = batch.non_tensor_batch["acc"]
    assert [int(acc[r].sum()) for r in stats.rows] == stats.correct.tolist()


def test_question_stats_groups_interleaved_rows_in_order_of_first_appearance():
    uids = ["b", "a", "b", "c", "a", "b"]
    scores = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    stats = question_stats(uids, scores)
    assert stats.uids.tolist() == ["b", "a", "c"]
    assert stats.n.tolist() == [3, 2, 1]
    assert stats.correct.tolist() == [2, 1, 1]
    assert stats.first_row.tolist() == [0, 1, 3]
    assert [r.tolist() for r in stats.rows] == [[0, 2, 5], [1, 4], [3]]


def test_correct_threshold():
    scores = np.array([1.0, 0.999, 0.5, 0.49, -1.0])
    assert question_stats(["q"] * 5, scores).correct.tolist() == [1]  # default: reward == 1 (>= 1)
    assert question_stats(["q"] * 5, scores, correct_threshold=0.5).correct.tolist() == [3]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_score_raises_naming_the_row(bad):
    batch = make_rollout_batch(SPEC4, seed=2)
    scores = sequence_scores(batch)
    scores[9] = bad
    with pytest.raises(ValueError, match=r"non-finite reward at row\(s\) \[9\] \(uid 'uid-2'\)"):
        question_stats(batch.non_tensor_batch["uid"], scores)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="differ in length"):
        question_stats(["a", "b"], np.zeros(3))


# ------------------------------------------------------------------------------------ strategies


def test_switch_gamma_zero_gates_only_all_failed_questions():
    stats, alpha, beta = gate(make_rollout_batch(SPEC8 + SPEC4, seed=3), strategy="switch", gamma=0.0)
    # k:            0  1  2  3  5  8 | 0  1  2  4
    assert beta.tolist() == [1, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    assert alpha.tolist() == [0, 1, 1, 1, 1, 1, 0, 1, 1, 1]
    assert alpha.dtype == beta.dtype == np.float64


def test_switch_gamma_two_eighths_is_inclusive_at_k_equal_2():
    stats, alpha, beta = gate(make_rollout_batch(SPEC8, seed=4), strategy="switch", gamma=2 / 8)
    # P ≤ γ: 0/8, 1/8 and 2/8 (exactly γ) go to SFT, 3/8 and up to RL
    assert stats.correct.tolist() == [0, 1, 2, 3, 5, 8]
    assert beta.tolist() == [1, 1, 1, 0, 0, 0]
    assert alpha.tolist() == [0, 0, 0, 1, 1, 1]


def test_switch_compares_pass_rates_not_counts_for_other_n():
    # γ = 2/8 on n = 4: P ≤ 0.25 means k ≤ 1; 2/4 = 0.5 is RL.
    _, alpha, beta = gate(make_rollout_batch(SPEC4, seed=5), strategy="switch", gamma=0.25)
    assert beta.tolist() == [1, 1, 0, 0]
    assert alpha.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("n,k,gamma,gated", [(10, 7, 0.7, True), (10, 3, 0.3, True), (3, 1, 1 / 3, True),
                                             (10, 8, 0.7, False), (6, 1, 1 / 6 - 1e-6, False)])
def test_switch_boundary_is_exact_in_floating_point(n, k, gamma, gated):
    # 0.7 * 10 = 7.000000000000001 and 0.3 * 10 = 3.0000000000000004 in float64: P = γ still gates.
    alpha, beta = gate_by_pass_rate(np.array([k]), np.array([n]), GateConfig(strategy="switch", gamma=gamma))
    assert beta.tolist() == [float(gated)] and alpha.tolist() == [float(not gated)]


def test_switch_gamma_one_gates_everything():
    _, alpha, beta = gate(make_rollout_batch(SPEC8, seed=6), strategy="switch", gamma=1.0)
    assert beta.tolist() == [1] * 6 and alpha.tolist() == [0] * 6


SOFT_TABLE_8 = [[0.0, 1.0], [0.0, 1.0], [0.125, 0.5], [0.25, 0.25], [0.5, 0.125], [1.0, 0.0], [1.0, 0.0],
                [1.0, 0.0], [1.0, 0.0]]  # fmt: skip


def test_soft_table_is_indexed_by_the_number_correct():
    _, alpha, beta = gate(make_rollout_batch(SPEC8, seed=7), strategy="soft", soft_table=SOFT_TABLE_8)
    # k = 0, 1, 2, 3, 5, 8
    assert alpha.tolist() == [0.0, 0.0, 0.125, 0.25, 1.0, 1.0]
    assert beta.tolist() == [1.0, 1.0, 0.5, 0.25, 0.0, 0.0]
    table4 = [[0.0, 1.0], [0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]]
    _, alpha, beta = gate(make_rollout_batch(SPEC4, seed=7), strategy="soft", soft_table=table4)
    assert alpha.tolist() == [0.0, 0.1, 0.2, 0.4]  # k = 0, 1, 2, 4
    assert beta.tolist() == [1.0, 0.9, 0.8, 0.6]


def test_soft_table_of_the_wrong_length_for_n_raises():
    batch = make_rollout_batch(SPEC8 + SPEC4, seed=8)  # the table has 9 rows; questions 6.. have n = 4
    with pytest.raises(GateConfigError, match=r"hpt\.gate\.soft_table has 9 rows but question 6 has n=4"):
        gate(batch, strategy="soft", soft_table=SOFT_TABLE_8)


def test_soft_linear():
    _, alpha, beta = gate(make_rollout_batch(SPEC8 + SPEC4, seed=9), strategy="soft", soft_fn="linear")
    p = np.array([0, 1 / 8, 2 / 8, 3 / 8, 5 / 8, 1, 0, 1 / 4, 2 / 4, 1])
    np.testing.assert_allclose(alpha, p, rtol=0, atol=1e-15)
    np.testing.assert_allclose(beta, 1 - p, rtol=0, atol=1e-15)


def test_fixed_always_never():
    batch = make_rollout_batch(SPEC8 + SPEC4, seed=10)
    _, alpha, beta = gate(batch, strategy="fixed", fixed_alpha=0.7, fixed_beta=0.3)
    assert alpha.tolist() == [0.7] * 10 and beta.tolist() == [0.3] * 10
    _, alpha, beta = gate(batch, strategy="always")
    assert alpha.tolist() == [0.0] * 10 and beta.tolist() == [1.0] * 10
    _, alpha, beta = gate(batch, strategy="never")
    assert alpha.tolist() == [1.0] * 10 and beta.tolist() == [0.0] * 10
    assert not GateConfig(strategy="always").needs_rollouts
    assert all(GateConfig(strategy=s, soft_fn="linear" if s == "soft" else None).needs_rollouts
               for s in ("switch", "soft", "fixed", "never"))


def test_keep_gated_rollouts_forces_alpha_one_on_gated_questions():
    batch = make_rollout_batch(SPEC8, seed=11)
    _, alpha, beta = gate(batch, strategy="switch", gamma=2 / 8, placement="add", keep_gated_rollouts=True)
    assert beta.tolist() == [1, 1, 1, 0, 0, 0]
    assert alpha.tolist() == [1, 1, 1, 1, 1, 1]
    # with a soft gate every question with β > 0 keeps its rollouts at weight 1
    _, alpha, beta = gate(batch, strategy="soft", soft_fn="linear", placement="add", keep_gated_rollouts=True)
    assert alpha.tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(beta, [1, 7 / 8, 6 / 8, 5 / 8, 3 / 8, 0])
    # without it, placement=add alone does not change the switch
    _, alpha, _ = gate(batch, strategy="switch", gamma=2 / 8, placement="add")
    assert alpha.tolist() == [0, 0, 0, 1, 1, 1]


def test_defaults_are_the_papers_qwen_setting():
    cfg = GateConfig.from_mapping(None)
    assert (cfg.strategy, cfg.gamma, cfg.placement, cfg.keep_gated_rollouts) == ("switch", 0.0, "replace", False)
    assert cfg.demo_arms == ("demo",)


@pytest.mark.parametrize(
    "value,want",
    [
        (["demo"], ("demo",)),
        (["demo_off"], ("demo_off",)),
        (["demo", "demo_off"], ("demo", "demo_off")),
        (["demo_off", "demo"], ("demo", "demo_off")),  # stored in a fixed order
        ("demo_off", ("demo_off",)),  # a bare string (command line `hpt.gate.demo_arms=demo_off`)
    ],
)
def test_demo_arms_values(value, want):
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(OmegaConf.create({"demo_arms": value}))
    assert GateConfig.from_mapping(node).demo_arms == want


def test_keep_gated_rollouts_with_demo_off_needs_no_add_placement():
    batch = make_rollout_batch(SPEC8, seed=11)
    cfg = GateConfig.from_mapping({"keep_gated_rollouts": True, "demo_arms": ["demo", "demo_off"], "gamma": 0.25})
    assert cfg.placement == "replace"
    _, alpha, beta = gate(batch, strategy="switch", gamma=2 / 8, keep_gated_rollouts=True, demo_arms=("demo_off",))
    assert beta.tolist() == [1, 1, 1, 0, 0, 0] and alpha.tolist() == [1] * 6


def test_from_mapping_accepts_an_omegaconf_container():
    from omegaconf import OmegaConf

    node = OmegaConf.create({"strategy": "soft", "soft_table": [[0, 1], [0.5, 0.5], [1, 0]]})
    cfg = GateConfig.from_mapping(OmegaConf.to_container(node, resolve=True))
    assert cfg.soft_table == ((0.0, 1.0), (0.5, 0.5), (1.0, 0.0))
    alpha, beta = gate_by_pass_rate(np.array([0, 1, 2]), np.array([2, 2, 2]), cfg)
    assert alpha.tolist() == [0.0, 0.5, 1.0] and beta.tolist() == [1.0, 0.5, 0.0]


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "node,message",
    [
        ({"strategy": "hard"}, r"hpt\.gate\.strategy='hard' is not one of"),
        ({"strategy": "soft"}, r"hpt\.gate: strategy=soft needs exactly one of soft_table / soft_fn"),
        ({"strategy": "soft", "soft_fn": "linear", "soft_table": [[0, 1], [1, 0]]},
         r"strategy=soft needs exactly one of soft_table / soft_fn"),
        ({"strategy": "soft", "soft_fn": "cosine"}, r"hpt\.gate\.soft_fn='cosine' is not one of"),
        ({"strategy": "soft", "soft_table": [[0, 1], [1]]}, r"hpt\.gate\.soft_table\[1\]=\[1\.0\] must be"),
        ({"strategy": "soft", "soft_table": [[0, 1], [1, -0.5]]}, r"hpt\.gate\.soft_table\[1\]"),
        ({"gamma": 1.5}, r"hpt\.gate\.gamma=1\.5 must lie in \[0, 1\]"),
        ({"gamma": -0.125}, r"hpt\.gate\.gamma=-0\.125 must lie in \[0, 1\]"),
        ({"gama": 0.25}, r"hpt\.gate: unknown key\(s\) \['gama'\]"),
        ({"placement": "mix"}, r"hpt\.gate\.placement='mix' is not one of"),
        ({"keep_gated_rollouts": True}, r"hpt\.gate\.keep_gated_rollouts=true needs placement=add"),
        ({"keep_gated_rollouts": True, "demo_arms": ["demo"]},
         r"keep_gated_rollouts=true needs placement=add or 'demo_off' in hpt\.gate\.demo_arms"),
        ({"demo_arms": []}, r"hpt\.gate\.demo_arms=\[\] must be a non-empty list"),
        ({"demo_arms": ["sft"]}, r"hpt\.gate\.demo_arms=\['sft'\] must be a non-empty list of distinct values"),
        ({"demo_arms": ["demo", "demo"]}, r"hpt\.gate\.demo_arms=\['demo', 'demo'\]"),
        ({"demo_arms": 1}, r"hpt\.gate\.demo_arms=1 must be a list"),
        ({"strategy": "fixed", "fixed_alpha": -1.0}, r"hpt\.gate: fixed_alpha/fixed_beta must be >= 0"),
    ],
)
def test_bad_config_names_the_key(node, message):
    with pytest.raises(GateConfigError, match=message):
        GateConfig.from_mapping(node)


def test_error_path_is_the_callers():
    with pytest.raises(GateConfigError, match=r"trainer\.hpt\.gate\.gamma=2\.0"):
        GateConfig.from_mapping({"gamma": 2.0}, path="trainer.hpt.gate")


def test_gate_config_error_is_a_value_error():
    assert issubclass(GateConfigError, ValueError)


# ------------------------------------------------------------------ RASFT and DYPO (issue 16)


def test_rasft_weights_match_the_source_worked_example():
    """K = 3 rollouts, k = 1 correct, 2 negatives kept: R_E = 1 + (2/3)·2, group [R_E, 1, 0, 0],
    A = tanh(0.4·z) with the population std: demonstration ≈ 0.278, the correct rollout ≈ 0.0087."""
    cfg = GateConfig.from_mapping({"strategy": "soft", "soft_fn": "rasft"})
    alpha, beta = gate_by_pass_rate(np.array([0, 1, 2, 3]), np.array([3, 3, 3, 3]), cfg)
    g = np.array([1 + 2 / 3 * 2, 1.0, 0.0, 0.0])
    a = np.tanh(0.4 * (g - g.mean()) / (g.std() + 1e-6))
    assert beta[1] == pytest.approx(a[0] / 2) and beta[1] == pytest.approx(0.2779, abs=1e-4)
    assert alpha[1] == pytest.approx(0.25 * np.clip(a[1] / 2, 0.02, 0.15))
    assert alpha[1] == pytest.approx(0.0087, abs=1e-4)
    # none correct: the demonstration at full weight, no rollout; all correct: zero variance, the same
    assert (alpha[0], beta[0]) == (0.0, 1.0) and (alpha[3], beta[3]) == (0.0, 1.0)
    # k = 2: one negative left; the demonstration's weight falls as more rollouts succeed
    assert 0 < beta[2] < beta[1] and alpha[2] == pytest.approx(0.25 * 0.02)  # clipped at the floor
    # parameters from YAML change the values (r_max = 5: a larger expert reward)
    cfg5 = GateConfig.from_mapping({"strategy": "soft", "soft_fn": "rasft", "soft_params": {"r_max": 5.0}})
    assert gate_by_pass_rate(np.array([1]), np.array([3]), cfg5)[1][0] > beta[1]


def test_soft_params_are_checked():
    with pytest.raises(GateConfigError, match=r"hpt\.gate\.soft_params: unknown key\(s\) \['rmax'\]"):
        GateConfig.from_mapping({"strategy": "soft", "soft_fn": "rasft", "soft_params": {"rmax": 5}})
    with pytest.raises(GateConfigError, match=r"soft_params is set but hpt\.gate\.soft_fn is not"):
        GateConfig.from_mapping({"strategy": "switch", "soft_params": {"r_max": 5}})
    with pytest.raises(GateConfigError, match=r"rollout_floor 0\.2 > rollout_cap 0\.15"):
        GateConfig.from_mapping({"strategy": "soft", "soft_fn": "rasft", "soft_params": {"rollout_floor": 0.2}})


def test_drop_all_correct_removes_only_all_correct_questions():
    cfg = GateConfig.from_mapping({"strategy": "switch", "gamma": 0.0, "drop_all_correct": True})
    alpha, beta = gate_by_pass_rate(np.array([0, 3, 8, 5]), np.array([8, 8, 8, 8]), cfg)
    assert alpha.tolist() == [0.0, 1.0, 0.0, 1.0] and beta.tolist() == [1.0, 0.0, 0.0, 0.0]
    plain = GateConfig.from_mapping({"strategy": "switch", "gamma": 0.0})
    assert gate_by_pass_rate(np.array([8]), np.array([8]), plain)[0].tolist() == [1.0]


def test_stopped_questions_go_to_sft_and_keep_rollouts_only_when_asked():
    """stop_to_sft questions: β = 1; α = 0, or 1 under keep_gated_rollouts (as the gate treats a
    gated question); the other questions keep the gate's weights."""
    alpha, beta = np.array([1.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    stopped = np.array([True, False, True])
    a, b = route_stopped(alpha, beta, stopped, GateConfig(strategy="switch", gamma=0.0))
    assert a.tolist() == [0.0, 1.0, 0.0] and b.tolist() == [1.0, 0.0, 1.0]
    keep = GateConfig(strategy="switch", gamma=0.0, keep_gated_rollouts=True, placement="add")
    a, b = route_stopped(alpha, beta, stopped, keep)
    assert a.tolist() == [1.0, 1.0, 1.0] and b.tolist() == [1.0, 0.0, 1.0]
    assert alpha.tolist() == [1.0, 1.0, 0.0]  # inputs untouched

