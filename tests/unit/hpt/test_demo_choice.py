"""Several demonstrations per question (issue 16, DYPO's several teachers) and ``hpt.demo_choice``.

The demonstration field may hold a list of strings. Pinned here: the contract accepts it and names a
bad entry by its index at start-up (row checks, the length check, the reward check); each choice
policy picks what it says (``uniform`` reproducibly per (data.seed, step, question id), ``shortest``,
``first``, ``all`` with one row per demonstration weighted β/m); the trainer's step and the SFT-only
stand-in follow it; a string field behaves exactly as before under every policy.
"""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import copy
from collections import Counter

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.unit.hpt.test_gate import PAD_ID, make_rollout_batch, sequence_scores
from tests.unit.hpt.test_reliability import _bare_trainer, _data_config, _row
from verl_ext.data.contract import check_demo, check_demo_field
from verl_ext.hpt.config import HPTConfig, HPTConfigError, choice_seed
from verl_ext.recipe_defaults import yaml_defaults
from verl_ext.data.demonstration_field import demonstration_entries, question_key
from verl_ext.hpt.demonstrations import (
    DEMO_CHOICES,
    choose_entries,
    per_question,
    pick_demonstrations,
    uniform_index,
    usable_demonstrations,
)
from verl_ext.checks.data import validate_data
from verl_ext.hpt.gate import GateConfig, gate_by_pass_rate, question_stats
from verl_ext.hpt.merge import DEMO_UID_SUFFIX, merge_demonstrations
from verl_ext.checks.rows import DataValidationError
from verl_ext.loss.batch_keys import HPT_ROW_KIND, HPT_ROW_WEIGHT

REPO = TESTS_REPO
MATH_REWARD = str(REPO / "verl_ext" / "reward" / "verl_entry.py")
TEACHERS = ["1+2=3. \\boxed{3}", "One plus two: \\boxed{3}", "3 \\boxed{3}"]


# ------------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("value,field,reason,detail", [
    ([], "extra_info.target", "demo_missing", "is an empty list"),
    (["a", "b", None], "extra_info.target[2]", "demo_missing", "is missing (null)"),
    (["a", "b", "  \n"], "extra_info.target[2]", "demo_missing", "is empty"),
    (["a", 3], "extra_info.target[1]", "demo_not_string", "is a int, expected a string"),
    ([{"role": "assistant", "content": "a"}], "extra_info.target[0]", "demo_not_string", "LUFFY/OpenR1"),
    (["a", ["b"]], "extra_info.target[1]", "demo_not_string", "is a list, expected a string (LUFFY"),
    (3.5, "extra_info.target", "demo_not_string", "is a float, expected a string or a list of strings"),
])
def test_each_bad_list_form_is_refused_naming_the_entry(value, field, reason, detail):
    fld, why, text = check_demo_field({"extra_info": {"target": value}}, "target")
    assert (fld, why) == (field, reason) and detail in text
    # the unnamed form (the stand-in's message) carries the index in its detail
    plain = check_demo({"extra_info": {"target": value}}, "target")
    assert plain[0] == reason and (plain[1].startswith(field[len("extra_info.target"):] + " ") or "[" not in field)
    assert usable_demonstrations([{"target": value}], [0], "target") == [None]


@pytest.mark.parametrize("value", [["a"], ["a", "b"], ("a", "b"), np.asarray(["a", "b"], dtype=object)])
def test_a_list_of_strings_is_a_usable_demonstration(value):
    assert check_demo_field({"extra_info": {"target": value}}, "target") is None
    assert demonstration_entries(value) == [str(x) for x in value]
    assert usable_demonstrations([{"target": value}], [0], "target") == [[str(x) for x in value]]


def test_a_string_field_is_unchanged():
    assert check_demo_field({"extra_info": {"target": "x"}}, "target") is None
    assert check_demo_field({"extra_info": {"target": " "}}, "target") == ("extra_info.target", "demo_missing",
                                                                            "is empty")
    assert check_demo_field({"extra_info": {}}, "target") == ("extra_info.target", "demo_missing", "missing")
    assert usable_demonstrations([{"target": "x"}], [0], "target") == ["x"]
    for policy in DEMO_CHOICES:
        assert pick_demonstrations(["x y", "z"], [0, 1], policy, seed=3, step=9) == ([0, 1], ["x y", "z"])


def test_start_up_names_file_row_and_entry(tmp_path, char_tok):
    rows = [_row(i, demo=list(TEACHERS)) for i in range(4)]
    rows[2]["extra_info"]["target"] = [TEACHERS[0], "   ", TEACHERS[1]]
    rows[3]["extra_info"]["target"] = []
    cfg, train = _data_config(tmp_path, rows)
    with pytest.raises(DataValidationError) as err:
        validate_data(cfg, char_tok)
    msg = str(err.value)
    assert f"{train}: row 2: field 'extra_info.target[1]': is empty" in msg
    assert f"{train}: row 3: field 'extra_info.target': is an empty list" in msg
    assert "row 0:" not in msg and "row 1:" not in msg
    # skipping keeps the good rows, whose lists verl's own dataset hands to the trainer as lists
    from verl.utils.dataset.rl_dataset import RLHFDataset

    cfg, _ = _data_config(tmp_path, rows, on_bad_row="skip")
    report = validate_data(cfg, char_tok)
    assert report.metrics()["hpt/data/skipped/demo_missing"] == 2
    ds = RLHFDataset(data_files=report.train_files[0], tokenizer=char_tok, config=OmegaConf.create(
        {"max_prompt_length": 40, "filter_overlong_prompts": False, "cache_dir": str(tmp_path / "cache")}))
    assert [list(ds[i]["extra_info"]["target"]) for i in range(len(ds))] == [TEACHERS, TEACHERS]
    assert usable_demonstrations([ds[0]["extra_info"]], [0], "target") == [TEACHERS]


@pytest.mark.parametrize("mode", ["truncate", "skip", "error"])
def test_every_entry_is_length_checked(tmp_path, char_tok, mode):
    rows = [_row(0, demo=["y" * 5, "y" * 23]), _row(1, demo=["y" * 5, "y" * 24, "y" * 30]), _row(2, demo=["y"])]
    cfg, _ = _data_config(tmp_path, rows, on_long_demo=mode)  # response length 24: 23 + EOS fits
    if mode == "error":
        with pytest.raises(DataValidationError,
                           match=r"row 1: field 'extra_info.target\[1\]': 24 tokens \+ EOS > response"):
            validate_data(cfg, char_tok)
        return
    m = validate_data(cfg, char_tok).metrics()
    if mode == "truncate":
        assert m["hpt/data/long_demos_truncated"] == 2 and m["hpt/data/skipped_rows"] == 0  # per demonstration
    else:
        assert m["hpt/data/skipped/demo_too_long"] == 1 and m["hpt/data/train_rows_kept"] == 2


def test_the_reward_check_scores_every_listed_demonstration(tmp_path, char_tok):
    from verl_ext.checks.reward import RewardCheckError, resolve_reward

    rows = [_row(i, demo=list(TEACHERS)) for i in range(3)]
    rows[1]["extra_info"]["target"] = [TEACHERS[0], "the answer is 4 \\boxed{4}"]
    cfg, train = _data_config(tmp_path, rows)
    cfg.reward = {"custom_reward_function": {"path": MATH_REWARD, "name": "compute_score"},
                  "reward_manager": {"source": "register", "name": "naive"}, "reward_model": {"enable": False}}
    with pytest.raises(RewardCheckError) as err:
        validate_data(cfg, char_tok, reward=resolve_reward(cfg))
    msg = str(err.value)
    assert "only 7/8 demonstrations" in msg  # 3 + 2 + 3 entries scored, the wrong one fails
    assert f"{train}: row 1: field 'extra_info.target[1]': score 0" in msg
    cfg.hpt.data.demo_check_min_rate = 0.8
    report = validate_data(cfg, char_tok, reward=resolve_reward(cfg))
    assert report.demo_check() == {"scored": 8, "passed": 7, "rate": 7 / 8}
    assert report.files[0].demo_check["failed_rows"] == [1]


# ------------------------------------------------------------------------------- the config key
@pytest.fixture(scope="module")
def default_cfg():
    """The default trainer config, composed as ``python -m recipe.hpt.main_hpt`` composes it."""
    from tests.helpers import compose_trainer_config

    return compose_trainer_config()


def test_demo_choice_is_typed_with_its_one_default_in_the_yaml(default_cfg):
    assert yaml_defaults()["demo_choice"] == "uniform"
    assert HPTConfig.from_config(default_cfg).demo_choice == "uniform"
    for policy in DEMO_CHOICES:
        cfg = copy.deepcopy(default_cfg)
        cfg.hpt.demo_choice = policy
        assert HPTConfig.from_config(cfg).demo_choice == policy
    cfg = copy.deepcopy(default_cfg)
    cfg.hpt.demo_choice = "random"
    with pytest.raises(HPTConfigError, match=r"hpt\.demo_choice='random' is not one of \['uniform', 'shortest', "
                                             r"'first', 'all'\]"):
        HPTConfig.from_config(cfg)
    OmegaConf.set_struct(cfg, False)
    del cfg.hpt["demo_choice"]
    with pytest.raises(HPTConfigError, match=r"hpt\.demo_choice is not set.*hpt_trainer\.yaml"):
        HPTConfig.from_config(cfg)


def test_the_uniform_seed_is_data_seed():
    assert choice_seed(OmegaConf.create({"data": {"seed": None}})) == 0
    assert choice_seed(OmegaConf.create({"data": {"seed": 47}})) == 47
    with pytest.raises(HPTConfigError, match=r"data\.seed='x' must be an integer or null"):
        choice_seed(OmegaConf.create({"data": {"seed": "x"}}))


# ------------------------------------------------------------------------------- the policies
def test_first_shortest_all():
    kw = dict(seed=0, step=1, question_id=5)
    assert choose_entries(["a", "b", "c"], "first", **kw) == [0]
    assert choose_entries(["a", "b", "c"], "all", **kw) == [0, 1, 2]
    assert choose_entries(["a", "b", "c"], "shortest", token_counts=[5, 2, 9], **kw) == [1]
    assert choose_entries(["a", "b", "c"], "shortest", token_counts=[5, 2, 2], **kw) == [1]  # ties: the first
    for policy in DEMO_CHOICES:
        assert choose_entries(["only"], policy, **kw) == [0]
    with pytest.raises(ValueError, match="token count"):
        choose_entries(["a", "b"], "shortest", **kw)
    with pytest.raises(ValueError, match=r"hpt\.demo_choice='best'"):
        choose_entries(["a", "b"], "best", **kw)


def test_shortest_counts_tokens_not_characters(char_tok):
    # the byte-level tokenizer: "é" is 2 tokens, so the 3-character "ééé" (6 tokens) is longer than "abcd"
    owners, texts = pick_demonstrations([["ééé", "abcd", "wxyz"]], [0], "shortest", seed=0, step=1, tokenizer=char_tok)
    assert (owners, texts) == ([0], ["abcd"])


def test_uniform_is_reproducible_per_seed_step_and_id_and_varies():
    entries = ["a", "b", "c"]
    draws = [uniform_index(entries, 0, step, 7) for step in range(300)]
    assert draws == [uniform_index(entries, 0, step, 7) for step in range(300)]  # same (seed, step, id): same
    counts = Counter(draws)
    assert set(counts) == {0, 1, 2} and min(counts.values()) > 70  # uniform-ish over 300 steps
    assert sum(a != b for a, b in zip(draws, draws[1:])) > 150  # varies from step to step
    assert draws != [uniform_index(entries, 1, step, 7) for step in range(300)]  # another seed, other draws
    assert draws != [uniform_index(entries, 0, step, 8) for step in range(300)]  # another question too
    assert choose_entries(entries, "uniform", seed=0, step=11, question_id=7) == [draws[11]]
    # the raw extra_info.index (stand-in) and the trainer's logged id key alike
    assert question_key(np.int64(7)) == question_key(7.0) == 7
    assert question_key("q-1") == "q-1" and question_key(None) == question_key(True) == -1
    # without an id, a question is keyed by its first entry: such questions do not all draw alike
    no_id = {uniform_index([t, "b", "c"], 0, 3, -1) for t in (f"teacher {i}" for i in range(30))}
    assert len(no_id) == 3


def test_pick_and_regroup_per_question():
    values = ["s", ["a", "bb"], ["c"]]
    owners, texts = pick_demonstrations(values, [0, 1, 2], "all", seed=0, step=1)
    assert (owners, texts) == ([0, 1, 1, 2], ["s", "a", "bb", "c"])
    assert per_question([4, 6, 6, 7], texts, 8, fill=0.0) == [0.0] * 4 + ["s", 0.0, ["a", "bb"], "c"]
    owners, texts = pick_demonstrations(values, [0, 1, 2], "first", seed=0, step=1)
    assert (owners, texts) == ([0, 1, 2], ["s", "a", "c"])


# ------------------------------------------------------------------------------- the merge
def _ids(q, k, length=3):
    return [4 + 10 * q + k] * (length - 1) + [2]


def test_merge_builds_one_row_per_demonstration_weighted_beta_over_m():
    batch = make_rollout_batch([(4, 0), (4, 2), (4, 0)], seed=5)
    cfg = GateConfig(strategy="soft", soft_fn="linear")  # β = 1, .5, 1
    stats = question_stats(batch.non_tensor_batch["uid"], sequence_scores(batch), cfg.correct_threshold)
    alpha, beta = gate_by_pass_rate(stats.correct, stats.n, cfg)
    demo_ids = [[_ids(0, 0), _ids(0, 1), _ids(0, 2)], [_ids(1, 0), _ids(1, 1)], _ids(2, 0)]
    scores = [[1.0, 0.0, 1.0], [0.5, 0.25], 1.0]
    extra = {"acc": [["a0", "a1", "a2"], ["b0", "b1"], "c0"]}
    batch.non_tensor_batch["acc"] = np.asarray([None] * len(batch), dtype=object)
    merged, ms = merge_demonstrations(batch, stats, alpha, beta, demo_ids, PAD_ID, demo_scores=scores,
                                      demo_extra=extra, demo_arms=("demo", "demo_off"))
    kinds = merged.batch[HPT_ROW_KIND].tolist()
    assert kinds == [1, 2] * 3 + [0] * 4 + [1, 2] * 2 + [1, 2]
    w = merged.batch[HPT_ROW_WEIGHT].tolist()
    np.testing.assert_allclose(w, [1 / 3] * 6 + [0.5] * 4 + [0.25] * 4 + [1.0] * 2)
    # each question's demonstration rows of one arm sum to its β, whatever the number of teachers
    demo_rows = merged.batch[HPT_ROW_KIND] == 1
    for q, b in enumerate(beta):
        mine = np.asarray([u.startswith(f"uid-{q}") for u in merged.non_tensor_batch["uid"]])
        assert float(merged.batch[HPT_ROW_WEIGHT][torch.as_tensor(mine) & demo_rows].sum()) == pytest.approx(b)
    assert merged.non_tensor_batch["uid"].tolist() == (
        ["uid-0::demo", "uid-0", "uid-0::demo1", "uid-0", "uid-0::demo2", "uid-0"] + ["uid-1"] * 4
        + ["uid-1::demo", "uid-1", "uid-1::demo1", "uid-1", "uid-2::demo", "uid-2"])
    resp = merged.batch["responses"]
    for row, ids in ((0, _ids(0, 0)), (2, _ids(0, 1)), (4, _ids(0, 2)), (12, _ids(1, 1)), (14, _ids(2, 0))):
        assert resp[row][:3].tolist() == ids and resp[row + 1][:3].tolist() == ids
    rm = merged.batch["rm_scores"].sum(-1).tolist()
    assert [rm[i] for i in (0, 2, 4, 10, 12, 14)] == [1.0, 0.0, 1.0, 0.5, 0.25, 1.0]
    assert [merged.non_tensor_batch["acc"][i] for i in (0, 3, 4, 10, 13, 15)] == ["a0", "a1", "a2", "b0", "b1", "c0"]
    assert (ms.num_gated, ms.demo_rows, ms.demo_off_rows) == (3, 12, 6)
    assert DEMO_UID_SUFFIX == "::demo"


def test_merge_with_several_demonstrations_checks_its_inputs():
    batch = make_rollout_batch([(4, 0)], seed=5)
    stats = question_stats(batch.non_tensor_batch["uid"], sequence_scores(batch))
    alpha, beta = np.zeros(1), np.ones(1)
    with pytest.raises(ValueError, match="question 0 gated to SFT has an empty demonstration"):
        merge_demonstrations(batch, stats, alpha, beta, [[]], PAD_ID)
    with pytest.raises(ValueError, match="question 0 has 2 demonstrations: its demo_scores must be a list of 2"):
        merge_demonstrations(batch, stats, alpha, beta, [[_ids(0, 0), _ids(0, 1)]], PAD_ID, demo_scores=[1.0])
    # a list of one is the single demonstration
    one, _ = merge_demonstrations(batch, stats, alpha, beta, [[_ids(0, 0)]], PAD_ID, demo_scores=[[1.0]])
    single, _ = merge_demonstrations(batch, stats, alpha, beta, [_ids(0, 0)], PAD_ID, demo_scores=[1.0])
    assert all(torch.equal(one.batch[k], single.batch[k]) for k in single.batch.keys())
    assert one.non_tensor_batch["uid"].tolist() == single.non_tensor_batch["uid"].tolist() == ["uid-0::demo"]


# ------------------------------------------------------------------------------- the trainer's step
def _listed_batch(teachers, spec=((4, 0), (4, 3), (4, 0))):
    """Rollouts (question 1 passes the γ = 0.5 gate), the questions' demonstration fields set to ``teachers[q]``."""
    batch = make_rollout_batch(list(spec), seed=3)
    infos = batch.non_tensor_batch["extra_info"]
    for r in range(len(batch)):
        q = int(batch.non_tensor_batch["uid"][r].split("-")[1])
        infos[r] = dict(infos[r], target=teachers[q])
    return batch


def _step(char_tok, batch, policy, step=7, seed=0):
    from tests.unit.hpt.test_reliability import _step as trainer_step

    t = _bare_trainer(char_tok, demo_choice=policy, demo_seed=seed)  # response length 8, as the crafted batch's
    t.global_steps = step
    metrics = {}
    return trainer_step(t, batch, metrics), metrics, t


def _demo_texts(char_tok, merged):
    """The demonstration rows' response texts (EOS dropped), in row order."""
    out = []
    for r in np.flatnonzero(merged.batch[HPT_ROW_KIND].numpy() > 0):
        m = merged.batch["response_mask"][r].bool()
        ids = merged.batch["responses"][r][m].tolist()
        out.append(char_tok.decode(ids[:-1]))
    return out


LISTS = [["aaaaaa", "bb", "cccc"], ["dd", "ee"], ["ff", "gggggg", "h"]]  # up to 7 tokens + EOS: response length 8


def test_the_step_trains_what_each_policy_picks(char_tok):
    merged, m, _ = _step(char_tok, _listed_batch(LISTS), "first")
    assert _demo_texts(char_tok, merged) == ["aaaaaa", "ff"]
    merged, m, _ = _step(char_tok, _listed_batch(LISTS), "shortest")
    assert _demo_texts(char_tok, merged) == ["bb", "h"]
    merged, m, _ = _step(char_tok, _listed_batch(LISTS), "all")
    assert _demo_texts(char_tok, merged) == LISTS[0] + LISTS[2]
    demo = merged.batch[HPT_ROW_KIND] > 0
    np.testing.assert_allclose(merged.batch[HPT_ROW_WEIGHT][demo].numpy(), [1 / 3] * 6)
    assert m["hpt/rows/demo"] == 6 and m["hpt/sft_question_share"] == pytest.approx(2 / 3)
    merged, m, t = _step(char_tok, _listed_batch(LISTS), "uniform", step=7)
    want = [LISTS[q][uniform_index(LISTS[q], 0, 7, 100 + q)] for q in (0, 2)]
    assert _demo_texts(char_tok, merged) == want
    assert t.state.gate_decisions["7"]["sft"] == [1, 0, 1]


def test_uniform_in_the_step_is_reproducible_and_varies_across_steps(char_tok):
    def drawn(step, seed=0):
        return _demo_texts(char_tok, _step(char_tok, _listed_batch(LISTS), "uniform", step=step, seed=seed)[0])

    runs = [drawn(s) for s in range(1, 13)]
    assert runs == [drawn(s) for s in range(1, 13)]  # a resumed run at the same steps draws the same
    assert len({tuple(r) for r in runs}) > 3  # the teachers take turns
    assert {r[0] for r in runs} == set(LISTS[0])


@pytest.mark.parametrize("policy", DEMO_CHOICES)
def test_a_string_field_trains_exactly_as_before(char_tok, policy):
    strings = ["demo q0", "demo q1", "demo q2"]
    base, base_m, _ = _step(char_tok, _listed_batch(strings), "uniform")
    merged, m, _ = _step(char_tok, _listed_batch(strings), policy, step=3, seed=99)
    assert set(base.batch.keys()) == set(merged.batch.keys())
    assert all(torch.equal(base.batch[k], merged.batch[k]) for k in base.batch.keys())
    assert base.non_tensor_batch["uid"].tolist() == merged.non_tensor_batch["uid"].tolist()
    assert _demo_texts(char_tok, merged) == ["demo q0", "demo q2"]
    assert (merged.batch[HPT_ROW_WEIGHT] == 1).all()


# ------------------------------------------------------------------------------- the SFT-only stand-in
def test_the_stand_in_answers_with_the_trainers_pick(char_tok):
    from verl import DataProto

    from verl_ext.hpt.demo_rollout import DemonstrationRolloutManager

    config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"prompt_length": 64, "response_length": 40}},
                               "data": {"apply_chat_template_kwargs": {}}})
    infos = [{"index": 100 + q, "target": LISTS[q]} for q in range(3)] + [{"index": "q-x", "target": "plain"}]
    raw = np.empty(len(infos), dtype=object)
    for i in range(len(infos)):
        raw[i] = [{"role": "user", "content": f"question {i}"}]

    def answers(policy, step):
        prompts = DataProto(non_tensor_batch={"raw_prompt": raw, "extra_info": np.asarray(infos, dtype=object)},
                            meta_info={"global_steps": step})
        out = DemonstrationRolloutManager(None, char_tok, config, demo_field="target", demo_choice=policy,
                                          seed=5).generate_sequences(prompts)
        return [char_tok.decode(out.batch["responses"][i][out.batch["response_mask"][i].bool()].tolist()[:-1])
                for i in range(len(infos))]

    for step in (1, 2, 3):
        assert answers("uniform", step) == [LISTS[q][uniform_index(LISTS[q], 5, step, 100 + q)]
                                            for q in range(3)] + ["plain"]
    assert answers("first", 1) == answers("all", 1) == [x[0] for x in LISTS] + ["plain"]  # all: entry 0
    assert answers("shortest", 1) == ["bb", "dd", "h", "plain"]  # q1: a tie, the first
