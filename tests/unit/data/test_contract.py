"""The data contract and the start-up checks on a user's own data (issue "Bring your own data").

Each failure the issue lists has a test here that fails on the code before the contract: verl-gsm8k
``#### N`` demonstrations under the ``\\boxed{}`` reward, a custom data_source under verl's
dispatch, ``openai/gsm8k`` with boxed answers, string/invalid ``extra_info.index``, missing
demonstrations under each ``hpt.data.on_missing_demo`` policy, an over-long prompt's message. The
property test feeds rows that validation accepts through the gate and the merge.
"""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import random
import re

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from tests.helpers import default_hpt_node
from verl_ext.data.contract import CONTRACT, contract_markdown
from verl_ext.hpt.config import HPTConfig, HPTConfigError
from verl_ext.recipe_defaults import yaml_defaults
from verl_ext.checks.reward import RewardCheckError, diagnose, DemoFailure, resolve_reward
from verl_ext.checks.data import validate_data
from verl_ext.checks.rows import DataValidationError

REPO = TESTS_REPO
MATH_REWARD = str(REPO / "verl_ext" / "reward" / "verl_entry.py")


def gsm8k_row(i, demo="Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", gt="72",
              data_source="openai/gsm8k", index=...):
    """A row as verl's examples/data_preprocess/gsm8k.py writes it, plus a demonstration."""
    info = {"split": "train", "index": i if index is ... else index, "answer": demo,
            "question": "Natalia sold clips ..."}
    if demo is not None:
        info["target"] = demo
    return {"data_source": data_source,
            "prompt": [{"role": "user", "content": f"Q{i}? Let's think step by step and output the final answer "
                                                   f"after \"####\"."}],
            "ability": "math", "reward_model": {"style": "rule", "ground_truth": gt}, "extra_info": info}


def make_config(tmp_path, train_rows, val_rows=None, reward_path=None, gate=None, **hpt_data):
    train = tmp_path / "train.parquet"
    pd.DataFrame(train_rows).to_parquet(train)
    val = tmp_path / "val.parquet"
    pd.DataFrame(val_rows or train_rows[:1]).to_parquet(val)
    cfg = OmegaConf.create({
        "data": {"train_files": str(train), "val_files": str(val), "prompt_key": "prompt",
                 "max_prompt_length": 200, "filter_overlong_prompts": False},
        "actor_rollout_ref": {"rollout": {"response_length": 200, "n": 4}},
        "trainer": {"default_local_dir": str(tmp_path / "ckpt")},
        "reward": {"custom_reward_function": {"path": reward_path, "name": "compute_score"},
                   "reward_manager": {"source": "register", "name": "naive"},
                   "reward_model": {"enable": False}},
        "hpt": default_hpt_node(demo_field="target", gate=gate or {"strategy": "switch", "gamma": 0.0}),
    })
    cfg.hpt.data.update(hpt_data)
    return cfg, train


def run_validation(cfg, tok):
    return validate_data(cfg, tok, reward=resolve_reward(cfg))


# ---------------------------------------------------------------- which reward, and data_source
def test_the_reward_in_use_is_described_with_its_reason(tmp_path):
    cfg, _ = make_config(tmp_path, [gsm8k_row(0)], reward_path=MATH_REWARD)
    r = resolve_reward(cfg)
    assert r.kind == "custom" and "custom function" in r.describe()
    assert "reward.custom_reward_function.path is set" in r.describe()
    cfg.reward.custom_reward_function.path = None
    r = resolve_reward(cfg)
    assert r.kind == "verl_dispatch" and "chosen per row by data_source" in r.describe()
    cfg.reward.reward_model.enable = True
    assert resolve_reward(cfg).kind == "reward_model" and not resolve_reward(cfg).checkable


def test_custom_data_source_under_verl_dispatch_is_refused_at_start_up(tmp_path, char_tok):
    """Before: validation passed and verl's reward worker raised NotImplementedError at step 1."""
    rows = [gsm8k_row(i, demo="so \\boxed{72}", data_source="my_math") for i in range(3)]
    cfg, train = make_config(tmp_path, rows, reward_path=None)
    with pytest.raises(RewardCheckError) as err:
        run_validation(cfg, char_tok)
    msg = str(err.value)
    assert f"{train}: row 0: field 'data_source': 'my_math' cannot be scored" in msg
    assert "reward.custom_reward_function.path=verl_ext/reward/verl_entry.py" in msg  # the fix
    assert "openai/gsm8k" in msg  # what verl does score
    # the fix from the message works: the math reward scores any data_source
    cfg.reward.custom_reward_function.path = MATH_REWARD
    report = run_validation(cfg, char_tok)
    assert report.demo_check()["rate"] == 1.0


def test_unknown_data_source_in_the_validation_file_is_refused_too(tmp_path, char_tok):
    rows = [gsm8k_row(i) for i in range(3)]
    val = [gsm8k_row(0, data_source="heldout_math")]
    cfg, _ = make_config(tmp_path, rows, val_rows=val, reward_path=None)
    with pytest.raises(RewardCheckError, match=r"val.parquet: row 0: field 'data_source': 'heldout_math'"):
        run_validation(cfg, char_tok)


# ------------------------------------------------------------ demonstrations against the reward
def test_gsm8k_hash_demonstrations_under_the_boxed_reward_stop_the_start(tmp_path, char_tok):
    """Before: every demonstration scored 0 and HPT silently became SFT on an unrewarded format."""
    rows = [gsm8k_row(i, data_source="gsm8k") for i in range(6)]
    cfg, train = make_config(tmp_path, rows, reward_path=MATH_REWARD)
    with pytest.raises(RewardCheckError) as err:
        run_validation(cfg, char_tok)
    msg = str(err.value)
    assert "only 0/6 demonstrations (extra_info.target)" in msg
    assert f"{train}: row 0: field 'extra_info.target': score 0" in msg
    assert "'#### N'" in msg and "scripts/data/convert.py --format verl_gsm8k" in msg
    assert "hpt.data.demo_check_min_rate" in msg and "custom function" in msg


def test_gsm8k_hash_demonstrations_train_under_verl_gsm8k_scorer(tmp_path, char_tok):
    """The other fix the message offers: data_source openai/gsm8k graded by verl's dispatch."""
    rows = [gsm8k_row(i) for i in range(6)]
    cfg, _ = make_config(tmp_path, rows, reward_path=None)
    report = run_validation(cfg, char_tok)
    assert report.demo_check() == {"scored": 6, "passed": 6, "rate": 1.0}
    assert report.metrics()["hpt/data/demo_reward_pass_rate"] == 1.0
    assert "verl's default_compute_score" in report.as_dict()["reward"]


def test_openai_gsm8k_with_boxed_answers_is_named_a_wrong_data_source(tmp_path, char_tok):
    """Before: renaming data_source to openai/gsm8k turned the crash into silent zero rewards."""
    rows = [gsm8k_row(i, demo="48/2=24 and 24+48=72. \\boxed{72}") for i in range(5)]
    cfg, _ = make_config(tmp_path, rows, reward_path=None)
    with pytest.raises(RewardCheckError) as err:
        run_validation(cfg, char_tok)
    msg = str(err.value)
    assert "only 0/5" in msg and "wrong data_source" in msg and "verl_ext/reward/verl_entry.py" in msg


def test_demo_check_threshold_sample_and_off_switch(tmp_path, char_tok):
    rows = [gsm8k_row(i, demo="\\boxed{72}" if i < 8 else "\\boxed{71}", data_source="m") for i in range(10)]
    cfg, _ = make_config(tmp_path, rows, reward_path=MATH_REWARD)
    with pytest.raises(RewardCheckError, match=r"8/10 .*80\.0% < hpt\.data\.demo_check_min_rate=0\.9"):
        run_validation(cfg, char_tok)
    cfg.hpt.data.demo_check_min_rate = 0.8
    assert run_validation(cfg, char_tok).demo_check()["passed"] == 8
    cfg.hpt.data.demo_check_rows = 4  # a seeded sample of 4 rows: the same rows on every start
    a = run_validation(cfg, char_tok).files[0].demo_check
    b = run_validation(cfg, char_tok).files[0].demo_check
    assert a["scored"] == 4 and a == b
    cfg.hpt.data.demo_check_rows = 0
    cfg.hpt.data.demo_check_min_rate = 0.9
    assert run_validation(cfg, char_tok).demo_check() is None


def test_diagnose_names_the_likely_cause():
    hash_fail = [DemoFailure(i, "x", "72", "... #### 72", 0.0) for i in range(3)]
    assert "'#### N'" in diagnose(hash_fail, "custom")[0]
    boxed_gsm8k = [DemoFailure(i, "openai/gsm8k", "72", "\\boxed{72}", 0.0) for i in range(3)]
    assert "wrong data_source" in diagnose(boxed_gsm8k, "verl_dispatch")[0]
    gt_hash = [DemoFailure(0, "x", "#### 72", "\\boxed{72}", 0.0)]
    assert "ground truths still carry '####'" in diagnose(gt_hash, "custom")[0]
    plain = [DemoFailure(0, "x", "72", "the answer is 72", 0.0)]
    assert "no final answer in a format the reward reads" in diagnose(plain, "custom")[0]


# ----------------------------------------------------------------------- fields read after generation
def test_string_index_is_accepted_and_bad_index_types_are_refused(tmp_path, char_tok):
    rows = [gsm8k_row(i, index=f"q-{i}") for i in range(3)]
    cfg, _ = make_config(tmp_path, rows, reward_path=None)
    assert run_validation(cfg, char_tok).files[0].kept == 3
    rows = [gsm8k_row(0), gsm8k_row(1, index=1.5), gsm8k_row(2)]
    cfg, train = make_config(tmp_path, rows, reward_path=None)
    with pytest.raises(DataValidationError,
                       match=rf"{re.escape(str(train))}: row 1: field 'extra_info.index': is a float .*int or a"):
        run_validation(cfg, char_tok)
    rows = [gsm8k_row(0, index=None), gsm8k_row(1)]
    cfg, train = make_config(tmp_path, rows, reward_path=None)
    with pytest.raises(DataValidationError, match=r"row 0: field 'extra_info.index': is null"):
        run_validation(cfg, char_tok)


def test_data_source_must_be_a_string(tmp_path, char_tok):
    rows = [gsm8k_row(0), gsm8k_row(1, data_source="  ")]
    cfg, train = make_config(tmp_path, rows, reward_path=MATH_REWARD)
    with pytest.raises(DataValidationError, match=r"row 1: field 'data_source': is blank"):
        run_validation(cfg, char_tok)
    rows = [{k: v for k, v in gsm8k_row(i).items() if k != "data_source"} for i in range(2)]
    cfg, train = make_config(tmp_path, rows, reward_path=MATH_REWARD)
    with pytest.raises(DataValidationError, match=r"row 0: field 'data_source': missing"):
        run_validation(cfg, char_tok)


def test_too_long_prompt_names_the_key_to_raise(tmp_path, char_tok):
    rows = [gsm8k_row(0)]
    cfg, train = make_config(tmp_path, rows, reward_path=None)
    cfg.data.max_prompt_length = 20
    with pytest.raises(DataValidationError) as err:
        run_validation(cfg, char_tok)
    assert re.search(r"row 0: field 'prompt': \d+ tokens > data.max_prompt_length=20: raise "
                     r"data.max_prompt_length to at least \d+", str(err.value))


# ----------------------------------------------------------------------------- on_missing_demo
def _partial_demo_rows():
    return [gsm8k_row(0), gsm8k_row(1, demo=None), gsm8k_row(2), gsm8k_row(3, demo="   ")]


def test_missing_demo_error_names_file_row_field_and_policy(tmp_path, char_tok):
    cfg, train = make_config(tmp_path, _partial_demo_rows(), reward_path=None, on_missing_demo="error")
    with pytest.raises(DataValidationError) as err:
        run_validation(cfg, char_tok)
    msg = str(err.value)
    assert f"{train}: row 1: field 'extra_info.target': missing" in msg and "row 3:" in msg
    assert "hpt.data.on_missing_demo=error|skip|rl" in msg


def test_missing_demo_skip_removes_and_counts(tmp_path, char_tok):
    cfg, train = make_config(tmp_path, _partial_demo_rows(), reward_path=None, on_missing_demo="skip")
    report = run_validation(cfg, char_tok)
    m = report.metrics()
    assert m["hpt/data/skipped/demo_missing"] == 2 and m["hpt/data/train_rows_kept"] == 2
    assert cfg.data.train_files == str(train)  # left as it is: the report names the filtered copy
    [filtered] = report.train_files
    kept = pd.read_parquet(filtered)
    assert [int(i["index"]) for i in kept["extra_info"]] == [0, 2]


def test_missing_demo_rl_keeps_rows_counts_them_and_overrides_on_bad_row(tmp_path, char_tok):
    cfg, train = make_config(tmp_path, _partial_demo_rows(), reward_path=None, on_missing_demo="rl",
                             on_bad_row="error")
    report = run_validation(cfg, char_tok)
    m = report.metrics()
    assert m["hpt/data/demos_missing_rl"] == 2 and m["hpt/data/skipped_rows"] == 0
    assert report.train_files == [str(train)]  # nothing removed: verl reads the user's file
    assert report.demo_check()["scored"] == 2  # only rows with a demonstration are scored
    assert "2 without a demonstration kept for RL" in report.summary_line()


def test_missing_demo_default_follows_on_bad_row(tmp_path, char_tok):
    cfg, _ = make_config(tmp_path, _partial_demo_rows(), reward_path=None)
    with pytest.raises(DataValidationError, match="demo_missing"):
        run_validation(cfg, char_tok)
    cfg, _ = make_config(tmp_path, _partial_demo_rows(), reward_path=None, on_bad_row="skip")
    assert run_validation(cfg, char_tok).metrics()["hpt/data/skipped/demo_missing"] == 2


def test_on_missing_demo_rl_needs_a_gate_that_trains_rollouts():
    from hydra import compose, initialize_config_dir
    import os

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with initialize_config_dir(config_dir=str(REPO / "recipe/hpt/config"), version_base=None):
            cfg = compose(config_name="hpt_trainer", overrides=["+exp=cpu_tiny", "hpt.data.on_missing_demo=rl"])
    finally:
        os.chdir(cwd)
    HPTConfig.from_config(cfg)  # switch gate: fine
    cfg.hpt.gate.strategy = "always"
    with pytest.raises(HPTConfigError, match="hpt.data.on_missing_demo=rl .*hpt.gate.strategy=always"):
        HPTConfig.from_config(cfg)
    cfg.hpt.gate.strategy = "switch"
    cfg.hpt.data.on_missing_demo = "sometimes"
    with pytest.raises(HPTConfigError, match=r"hpt.data.on_missing_demo='sometimes' is not one of"):
        HPTConfig.from_config(cfg)
    cfg.hpt.data.on_missing_demo = None
    cfg.hpt.data.demo_check_min_rate = 1.5
    with pytest.raises(HPTConfigError, match=r"hpt.data.demo_check_min_rate=1.5 must be a number in \[0, 1\]"):
        HPTConfig.from_config(cfg)


# ------------------------------------------------------------------ one place for defaults and docs
def test_readme_states_the_contract_table():
    readme = (REPO / "README.md").read_text()
    assert "## Your own data" in readme
    assert contract_markdown(yaml_defaults()["demo_field"]) in readme, \
        "README's contract table differs from verl_ext.data.contract"
    assert {f.path.split(".")[0] for f in CONTRACT} >= {"data_source", "reward_model", "extra_info"}


# ------------------------------------------------------------- property: accepted rows never crash
def _random_valid_rows(rng: random.Random, n: int) -> list[dict]:
    """Rows validation accepts (on_missing_demo=rl), drawn from the contract's corners. Parquet keeps
    one type per column, so the id and ground-truth kinds are drawn per file, as real files have them."""
    index_kind = rng.choice(["int", "str", "absent", "big"])
    gt_kind = rng.choice(["str", "list"])
    rows = []
    for i in range(n):
        info: dict = {"split": "train"}
        if index_kind == "int":
            info["index"] = rng.randint(0, 10 ** 6)
        elif index_kind == "str":
            info["index"] = rng.choice([f"q-{i}", f"{i}", f"id with spaces {i}", f"é-{i}", "0x1f"])
        elif index_kind == "big":
            info["index"] = 2 ** 40 + i
        demo = rng.choice([None, "", "  ", "x" * rng.randint(1, 30) + " \\boxed{3}", "\\boxed{3}", "a\nb"])
        if demo is not None or rng.random() < 0.5:
            info["target"] = demo
        gt = rng.choice(["3", "\\frac{1}{2}"]) if gt_kind == "str" else ["3", "3.0"]
        rows.append({"data_source": rng.choice(["openai/gsm8k", "my data", "x"]),
                     "prompt": [{"role": "user", "content": f"question {i}"}],
                     "ability": "math", "reward_model": {"style": "rule", "ground_truth": gt}, "extra_info": info})
    if not any(isinstance(r["extra_info"].get("target"), str) and r["extra_info"]["target"].strip() for r in rows):
        rows[0]["extra_info"]["target"] = "\\boxed{3}"
    return rows


def _accepted_rows(tmp_path, char_tok, rng, n):
    rows = _random_valid_rows(rng, n)
    cfg, train = make_config(tmp_path, rows, reward_path=MATH_REWARD, on_missing_demo="rl",
                             demo_check_min_rate=0.0)
    validate_data(cfg, char_tok, reward=resolve_reward(cfg))  # accepted, or this raises
    return pd.read_parquet(train).to_dict(orient="records")


def _batch_for(rows, spec, seed):
    from tests.unit.hpt.test_gate import make_rollout_batch

    batch = make_rollout_batch(spec, seed=seed)
    n_rows = [n for n, _ in spec]
    infos, sources, rms = [], [], []
    for q, n in enumerate(n_rows):
        r = rows[q]
        infos += [dict(r["extra_info"])] * n
        sources += [r["data_source"]] * n
        rms += [r["reward_model"]] * n
    batch.non_tensor_batch["extra_info"] = np.asarray(infos, dtype=object)
    batch.non_tensor_batch["data_source"] = np.asarray(sources, dtype=object)
    batch.non_tensor_batch["reward_model"] = np.asarray(rms, dtype=object)
    return batch


@pytest.mark.parametrize("seed", range(6))
def test_rows_validation_accepts_never_crash_gate_and_merge(tmp_path, char_tok, seed):
    """Rows drawn from the contract's corners (int/str/absent ids, missing/blank demonstrations kept for
    RL, list ground truths, any data_source): validation accepts them; gate + merge (the library
    functions, and the trainer's _gate_and_merge) never crash on batches built from them."""
    from verl_ext.hpt.gate import GateConfig, gate_by_pass_rate, question_stats
    from verl_ext.hpt.demonstrations import encode_demonstrations
    from verl_ext.hpt.merge import merge_demonstrations, pad_with_zero_weight_rows

    from tests.unit.hpt.test_gate import PAD_ID, sequence_scores
    from tests.unit.hpt.test_reliability import _bare_trainer, _step

    rng = random.Random(seed)
    rows = _accepted_rows(tmp_path, char_tok, rng, n=12)
    for trial in range(4):
        picked = rng.sample(rows, k=rng.randint(1, 6))
        spec = [(4, rng.randint(0, 4)) for _ in picked]
        cfg = GateConfig(strategy=rng.choice(["switch", "fixed", "soft"]), gamma=rng.choice([0.0, 0.5]),
                         soft_fn="linear", fixed_alpha=1.0, fixed_beta=0.5,
                         placement=rng.choice(["replace", "add"]))
        # the library path: stats -> gate -> demonstrations of gated questions that have one -> merge
        batch = _batch_for(picked, spec, seed=seed * 10 + trial)
        stats = question_stats(batch.non_tensor_batch["uid"], sequence_scores(batch), cfg.correct_threshold)
        alpha, beta = gate_by_pass_rate(stats.correct, stats.n, cfg)
        infos = batch.non_tensor_batch["extra_info"]
        usable = [isinstance((infos[int(r)] or {}).get("target"), str) and infos[int(r)]["target"].strip() != ""
                  for r in stats.first_row]
        beta = np.where(usable, beta, 0.0)
        alpha = np.where(usable, alpha, 1.0)
        texts = [infos[int(stats.first_row[q])]["target"] for q in np.flatnonzero(beta > 0)]
        ids, _ = encode_demonstrations(char_tok, texts, 8)
        demo_ids = [None] * len(stats.uids)
        for q, i in zip(np.flatnonzero(beta > 0), ids):
            demo_ids[q] = i
        merged, _ = merge_demonstrations(batch, stats, alpha, beta, demo_ids, PAD_ID, placement=cfg.placement)
        padded, _ = pad_with_zero_weight_rows(merged, 4)
        assert len(padded) % 4 == 0
        # the trainer's own hook on the same rows (reads extra_info.index and the demonstration)
        t = _bare_trainer(char_tok, gate=cfg)
        metrics: dict = {}
        _step(t, _batch_for(picked, spec, seed=seed * 10 + trial), metrics)  # returns the merged batch
        assert metrics["hpt/demo_missing"] >= 0
        ids_logged = t.state.batch_indices["7"]
        expected = [r["extra_info"].get("index", -1) for r in picked]
        assert [str(x) for x in ids_logged] == [str(e) for e in expected]
