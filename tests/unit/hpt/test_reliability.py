"""Reliability (issue 8), fast parts: start-up config and data checks, the demonstration fallback,
the optimizer-step guard (non-finite loss/gradient), skip accounting, grader crash handling,
reproducible rollout sampling. The end-to-end runs are in tests/e2e/test_resume_and_faults.py; the
grader fuzz test in tests/unit/reward/test_fuzz.py.
"""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import copy
import math
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import default_hpt_node
from verl_ext.data.contract import check_ground_truth, check_prompt
from verl_ext.hpt.config import HPTConfig, HPTConfigError
from verl_ext.checks.data import validate_data
from verl_ext.hpt.gate import GateConfig, GateConfigError
from verl_ext.checks.rows import DataValidationError

REPO = TESTS_REPO
CONFIG_DIR = REPO / "recipe" / "hpt" / "config"


# ------------------------------------------------------------------------------ config checks
@pytest.fixture(scope="module")
def base_config():
    """The real composed trainer config (+exp=cpu_tiny), as main_hpt composes it."""
    from hydra import compose, initialize_config_dir

    cwd = os.getcwd()
    os.chdir(REPO)  # relative data paths in the exp files are the repo's
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose(config_name="hpt_trainer", overrides=["+exp=cpu_tiny"])
    finally:
        os.chdir(cwd)
    return cfg


def _with(cfg, **dotted):
    cfg = copy.deepcopy(cfg)
    for key, value in dotted.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, force_add=True)
    return cfg


def test_default_config_passes(base_config):
    gate = HPTConfig.from_config(base_config).gate
    assert gate.strategy == "switch" and gate.can_choose_sft()


@pytest.mark.parametrize("gamma", [-0.1, 1.5, "nan", "inf"])
def test_gamma_outside_unit_interval_is_refused(base_config, gamma):
    with pytest.raises(GateConfigError, match=r"hpt\.gate\.gamma"):
        HPTConfig.from_config(_with(base_config, hpt__gate__gamma=gamma))


@pytest.mark.parametrize("strategy,extra", [("switch", {}), ("soft", {"hpt__gate__soft_fn": "linear"})])
def test_pass_rate_gate_needs_two_rollouts(base_config, strategy, extra):
    cfg = _with(base_config, hpt__gate__strategy=strategy, actor_rollout_ref__rollout__n=1, **extra)
    with pytest.raises(HPTConfigError, match=r"rollout\.n=1 with hpt\.gate\.strategy=" + strategy):
        HPTConfig.from_config(cfg)


def test_n1_is_fine_without_a_pass_rate_gate(base_config):
    cfg = _with(base_config, hpt__gate__strategy="always", actor_rollout_ref__rollout__n=1)
    OmegaConf.update(cfg, "hpt.loss", {"rollout": None, "demo": {"ref": "self", "adv": "one", "agg": "token-mean"}},
                     merge=False)  # the sft preset
    HPTConfig.from_config(cfg)


def test_soft_table_rows_must_match_n(base_config):
    cfg = _with(base_config, hpt__gate__strategy="soft", hpt__gate__soft_table=[[0, 1], [1, 0]])
    with pytest.raises(HPTConfigError, match=r"soft_table has 2 rows but .*n=4 needs n\+1 = 5"):
        HPTConfig.from_config(cfg)


def test_loss_preset_must_have_the_arms_the_gate_uses(base_config):
    no_demo = _with(base_config)
    OmegaConf.update(no_demo, "hpt.loss.demo", None, merge=False)
    with pytest.raises(HPTConfigError, match="no demo arm"):
        HPTConfig.from_config(no_demo)
    HPTConfig.from_config(_with(no_demo, hpt__gate__strategy="never"))  # pure RL: fine


@pytest.mark.parametrize("key,value,match", [
    ("hpt__data__on_bad_row", "drop", r"hpt\.data\.on_bad_row='drop' is not one of"),
    ("hpt__data__on_long_demo", "cut", r"hpt\.data\.on_long_demo='cut'"),
    ("hpt__data__bogus", 1, r"hpt\.data: unknown key\(s\) \['bogus'\]"),
    ("hpt__max_consecutive_skips", -1, r"hpt\.max_consecutive_skips=-1"),
    ("hpt__skip_grad_norm_above", -3.0, r"hpt\.skip_grad_norm_above"),
    ("hpt__gate__strategy", "sometimes", r"hpt\.gate\.strategy='sometimes' is not one of"),
])
def test_bad_hpt_settings_name_their_key(base_config, key, value, match):
    with pytest.raises(ValueError, match=match):
        HPTConfig.from_config(_with(base_config, **{key: value}))


@pytest.mark.parametrize("override,group", [("upge=nosuch", "upge"), ("+exp=nosuch", "exp")])
def test_unknown_preset_names_are_refused_by_hydra_with_the_options(override, group):
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            with pytest.raises(MissingConfigException) as err:
                compose(config_name="hpt_trainer", overrides=[override])
    finally:
        os.chdir(cwd)
    msg = str(err.value)
    assert f"Could not find '{group}/nosuch'" in msg
    assert "Available options" in msg and ("hpt_release" in msg or "cpu_tiny" in msg), msg


def test_config_error_stops_the_launch_before_ray():
    """`python -m recipe.hpt.main_hpt` with γ = 1.5 fails in seconds, before ray.init."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "recipe.hpt.main_hpt", "+exp=cpu_tiny", "hpt.gate.gamma=1.5"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "hpt.gate.gamma=1.5 must lie in [0, 1]" in out, out[-3000:]
    assert "ray init kwargs" not in out and "Started a local Ray instance" not in out
    assert time.monotonic() - t0 < 120


# -------------------------------------------------------------------------------- data checks
def _row(i, prompt="Compute 1+2.", gt="3", demo="1+2=3. \\boxed{3}", extra=None):
    info = {"index": i, "split": "train"}
    if demo is not ...:
        info["target"] = demo
    info.update(extra or {})
    return {"data_source": "hpt_arith", "prompt": [{"role": "user", "content": prompt}], "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": gt}, "extra_info": info}


def _data_config(tmp_path, train_rows, val_rows=None, **hpt_data):
    train = tmp_path / "train.parquet"
    pd.DataFrame(train_rows).to_parquet(train)
    val = tmp_path / "val.parquet"
    pd.DataFrame(val_rows or [_row(0)]).to_parquet(val)
    cfg = OmegaConf.create({
        "data": {"train_files": str(train), "val_files": str(val), "prompt_key": "prompt",
                 "max_prompt_length": 40, "filter_overlong_prompts": False},
        "actor_rollout_ref": {"rollout": {"response_length": 24, "n": 4}},
        "trainer": {"default_local_dir": str(tmp_path / "ckpt")},
        "hpt": default_hpt_node(demo_field="target", gate={"strategy": "switch", "gamma": 0.0}),
    })
    cfg.hpt.data.update(hpt_data)
    return cfg, train


BAD_ROWS = {  # row -> (row dict, reason, field)
    1: (_row(1, demo=None), "demo_missing", "extra_info.target"),
    2: (_row(2, demo="   "), "demo_missing", "extra_info.target"),
    3: (_row(3, gt=None), "ground_truth_missing", "reward_model.ground_truth"),
    4: (_row(4, gt=""), "ground_truth_missing", "reward_model.ground_truth"),
    5: (_row(5, prompt="x" * 60), "prompt_too_long", "prompt"),
}


def _mixed_rows(n=8):
    rows = [_row(i) for i in range(n)]
    for i, (r, _, _) in BAD_ROWS.items():
        rows[i] = r
    return rows


def test_bad_rows_raise_naming_file_row_and_field(tmp_path, char_tok):
    cfg, train = _data_config(tmp_path, _mixed_rows())
    with pytest.raises(DataValidationError) as err:
        validate_data(cfg, char_tok)
    msg = str(err.value)
    for i, (_, reason, fld) in BAD_ROWS.items():
        assert f"{train}: row {i}: field '{fld}'" in msg, (i, msg)
        assert reason in msg
    assert "row 0:" not in msg and "row 6:" not in msg
    assert "hpt.data.on_bad_row=skip" in msg  # says how to proceed


def test_skip_removes_and_counts_bad_rows_from_what_verl_reads(tmp_path, char_tok):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    cfg, train = _data_config(tmp_path, _mixed_rows(), on_bad_row="skip")
    report = validate_data(cfg, char_tok)
    assert cfg.data.train_files == str(train)  # the config is left as it is: the caller points verl at the copy
    [new_train] = report.train_files
    assert new_train.startswith(str(tmp_path / "ckpt" / "hpt_data") + os.sep)
    m = report.metrics()
    assert m["hpt/data/train_rows"] == 8 and m["hpt/data/train_rows_kept"] == 3
    assert m["hpt/data/skipped_rows"] == 5
    assert m["hpt/data/skipped/demo_missing"] == 2 and m["hpt/data/skipped/ground_truth_missing"] == 2
    assert m["hpt/data/skipped/prompt_too_long"] == 1
    assert report.val_files == [str(tmp_path / "val.parquet")]  # the input: nothing removed
    # verl's own dataset class reads exactly the kept rows, in order
    ds = RLHFDataset(data_files=new_train, tokenizer=char_tok, config=OmegaConf.create(
        {"max_prompt_length": 40, "filter_overlong_prompts": False, "cache_dir": str(tmp_path / "cache")}))
    assert [ds[i]["extra_info"]["index"] for i in range(len(ds))] == [0, 6, 7]
    # deterministic: the same input gives the same file (a resumed run reads the same data)
    cfg2, _ = _data_config(tmp_path, _mixed_rows(), on_bad_row="skip")
    assert validate_data(cfg2, char_tok).train_files == [new_train]


def test_no_demonstration_field_at_all_is_an_error_even_when_skipping(tmp_path, char_tok):
    rows = [_row(i, demo=...) for i in range(4)]
    cfg, _ = _data_config(tmp_path, rows, on_bad_row="skip")
    with pytest.raises(DataValidationError, match=r"no row has extra_info\['target'\].*hpt\.gate\.strategy=never"):
        validate_data(cfg, char_tok)
    cfg.hpt.gate.strategy = "never"  # pure RL never reads demonstrations
    report = validate_data(cfg, char_tok)
    assert report.metrics()["hpt/data/skipped_rows"] == 0


def test_demo_checks_only_when_the_gate_can_choose_sft(tmp_path, char_tok):
    rows = [_row(0), _row(1, demo=None)]
    cfg, _ = _data_config(tmp_path, rows)
    cfg.hpt.gate = {"strategy": "fixed", "fixed_alpha": 1.0, "fixed_beta": 0.0}
    validate_data(cfg, char_tok)  # beta = 0 everywhere: no error
    cfg.hpt.gate = {"strategy": "fixed", "fixed_alpha": 1.0, "fixed_beta": 0.5}
    with pytest.raises(DataValidationError, match="row 1: field 'extra_info.target': missing"):
        validate_data(cfg, char_tok)


@pytest.mark.parametrize("mode", ["truncate", "skip", "error"])
def test_long_demonstrations(tmp_path, char_tok, mode):
    rows = [_row(0), _row(1, demo="y" * 23), _row(2, demo="y" * 24)]  # 23 + EOS fits 24; 24 + EOS does not
    cfg, _ = _data_config(tmp_path, rows, on_long_demo=mode)
    if mode == "error":
        with pytest.raises(DataValidationError, match=r"row 2: field 'extra_info.target': 24 tokens \+ EOS > response"):
            validate_data(cfg, char_tok)
        return
    m = validate_data(cfg, char_tok).metrics()
    if mode == "truncate":
        assert m["hpt/data/long_demos_truncated"] == 1 and m["hpt/data/skipped_rows"] == 0
    else:
        assert m["hpt/data/skipped/demo_too_long"] == 1 and m["hpt/data/train_rows_kept"] == 2


def test_overlong_prompts_are_skipped_when_verl_filters_them(tmp_path, char_tok):
    cfg, _ = _data_config(tmp_path, [_row(0), _row(1, prompt="x" * 60)])
    cfg.data.filter_overlong_prompts = True  # verl would drop it: a counted skip, not an error
    m = validate_data(cfg, char_tok).metrics()
    assert m["hpt/data/skipped/prompt_too_long"] == 1


def test_prompt_length_is_counted_as_verl_counts_it(tmp_path, char_tok):
    """Our limit check tokenises the chat-templated prompt exactly as RLHFDataset's filter does."""
    from verl.utils.tokenizer.tokenizer import normalize_token_ids

    from verl_ext.checks.rows import _prompt_text, _token_lengths

    msgs = [{"role": "user", "content": "Compute 12+7+25."}]
    verl_len = len(normalize_token_ids(char_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)))
    assert verl_len > 20
    assert _token_lengths(char_tok, [_prompt_text(char_tok, msgs, {})]) == [verl_len]
    limit = verl_len
    cfg, _ = _data_config(tmp_path, [_row(0, prompt="Compute 12+7+25.")])
    cfg.data.max_prompt_length = limit
    validate_data(cfg, char_tok)  # exactly at the limit: fine
    cfg.data.max_prompt_length = limit - 1
    with pytest.raises(DataValidationError, match=f"{limit} tokens > data.max_prompt_length={limit - 1}"):
        validate_data(cfg, char_tok)


def test_non_string_fields(tmp_path, char_tok):
    assert check_prompt([{"role": "user", "content": 5}])[0] == "prompt_not_string"
    assert check_prompt("plain text")[0] == "prompt_not_string"
    assert check_prompt([])[0] == "prompt_missing"
    assert check_prompt(None)[0] == "prompt_missing"
    assert check_ground_truth({"reward_model": {"ground_truth": 7}})[0] == "ground_truth_not_string"
    assert check_ground_truth({"reward_model": {"ground_truth": ["1", 2]}})[0] == "ground_truth_not_string"
    assert check_ground_truth({"reward_model": {"ground_truth": ["1", "2"]}}) is None
    assert check_ground_truth({"reward_model": {"ground_truth": np.array(["1"])}}) is None
    assert check_ground_truth({})[0] == "ground_truth_missing"
    # a whole column of the wrong type in a file: every row reported with its field
    rows = [_row(i) for i in range(3)]
    for r in rows:
        r["extra_info"]["target"] = [{"role": "assistant", "content": "raw OpenR1 format"}]
    cfg, train = _data_config(tmp_path, rows)
    with pytest.raises(DataValidationError,  # a list is allowed (several demonstrations), messages are not
                       match=rf"{train}: row 0: field 'extra_info.target\[0\]': is a dict, expected a string "
                             r"\(LUFFY/OpenR1 keep a list of messages"):
        validate_data(cfg, char_tok)
    rows = [_row(i, gt=str(i)) for i in range(3)]
    cfg, train = _data_config(tmp_path, [dict(r, reward_model={"style": "rule", "ground_truth": i})
                                         for i, r in enumerate(rows)])
    with pytest.raises(DataValidationError, match=r"row 0: field 'reward_model.ground_truth': is a int"):
        validate_data(cfg, char_tok)


def test_every_row_bad_is_an_error(tmp_path, char_tok):
    cfg, _ = _data_config(tmp_path, [_row(0, gt=None), _row(1, gt=None)], on_bad_row="skip")
    with pytest.raises(DataValidationError, match="every row is bad"):
        validate_data(cfg, char_tok)


def test_validation_can_be_turned_off(tmp_path, char_tok):
    cfg, train = _data_config(tmp_path, _mixed_rows(), validate=False)
    report = validate_data(cfg, char_tok)
    assert not report.validated and cfg.data.train_files == str(train) and report.train_files == [str(train)]


# --------------------------------------------------------- trainer: demo fallback, reward flags
class _Scorer:
    def score(self, batch, rows, texts):
        return [{"score": 1.0, "acc": 1.0} for _ in texts]


def _bare_trainer(char_tok, gate=None, max_skips=5, demo_choice="uniform", demo_seed=0):
    """A RayHPTTrainer with only what the hooks under test read (no Ray, no workers)."""
    from recipe.hpt.hpt_ray_trainer import RayHPTTrainer
    from verl_ext.hpt.config import DataOptions, HPTConfig
    from verl_ext.recipe_defaults import yaml_defaults
    from verl_ext.hpt.state import HPTState
    from verl_ext.hpt.step import HPTStep
    from verl_ext.loss.config import UPGELossConfig

    t = object.__new__(RayHPTTrainer)
    t.config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"response_length": 8}},
                                 "trainer": {"default_local_dir": "/nonexistent"}})
    t.hpt = HPTConfig(demo_field="target", demo_choice=demo_choice, skip_grad_norm_above=None,
                      max_consecutive_skips=max_skips, fuse_old_log_prob=False,
                      data=DataOptions.from_mapping(yaml_defaults()["data"]),
                      gate=gate or GateConfig(strategy="switch", gamma=0.5),
                      loss=UPGELossConfig(),  # no group-alignment term
                      stages=None)
    t.tokenizer = char_tok
    t.state = HPTState()
    t.step = HPTStep(t.hpt, char_tok, 8, _Scorer(), demo_seed=demo_seed, pad_token_id=t._pad_token_id())
    t.global_steps = 7
    t.data_report = None
    t._data_metrics_logged = False
    t._stop_reason = None
    return t


def _step(t, batch, metrics):
    """The trainer's step on ``batch`` (hook 1 without padding and balancing): the merged batch."""
    record = t.step(batch, t.state, t.global_steps)
    metrics.update(record.metrics)
    return record.merged


def test_gated_question_without_demonstration_falls_back_to_rl(char_tok):
    from tests.unit.hpt.test_gate import make_rollout_batch
    from verl_ext.loss.batch_keys import HPT_ROW_KIND, HPT_ROW_WEIGHT

    # 4 questions x 4 rollouts with 0, 1, 3, 4 correct: γ = 0.5 gates questions 0 and 1
    batch = make_rollout_batch([(4, 0), (4, 1), (4, 3), (4, 4)], seed=1)
    infos = batch.non_tensor_batch["extra_info"]
    for r in range(4):  # question 0 has no demonstration
        infos[r] = {"index": 100}
    for r in range(4, 8):  # question 1 has an empty one
        infos[r] = dict(infos[r], target="  ")
    t = _bare_trainer(char_tok)
    metrics = {}
    before = {k: v.clone() for k, v in batch.batch.items()}, {k: v.copy() for k, v in batch.non_tensor_batch.items()}
    merged = _step(t, batch, metrics)
    # the caller's batch is only read: the merged batch is a new one
    assert set(batch.batch.keys()) == set(before[0])
    assert all(torch.equal(batch.batch[k], v) for k, v in before[0].items())
    assert all((batch.non_tensor_batch[k] == v).all() for k, v in before[1].items())
    batch = merged
    assert metrics["hpt/demo_missing"] == 2 and t.state.demo_missing == 2
    assert metrics["hpt/rows/demo"] == 0  # nothing left for SFT
    assert metrics["hpt/rows/rollout"] == 16  # every question trained with RL (α = 1)
    assert (batch.batch[HPT_ROW_KIND] == 0).all() and (batch.batch[HPT_ROW_WEIGHT] == 1).all()
    dec = t.state.gate_decisions["7"]
    assert dec["correct"] == [0, 1, 3, 4] and dec["sft"] == [0, 0, 0, 0] and dec["demo_missing"] == [100, 101]


def test_gate_decisions_are_recorded_per_step(char_tok):
    from tests.unit.hpt.test_gate import make_rollout_batch

    batch = make_rollout_batch([(4, 0), (4, 2), (4, 3)], seed=2)  # demonstrations truncated to 8 tokens
    t = _bare_trainer(char_tok)
    _step(t, batch, {})
    assert t.state.batch_indices["7"] == [100, 101, 102]
    assert t.state.gate_decisions["7"] == {"correct": [0, 2, 3], "sft": [1, 1, 0], "demo_missing": []}


def test_reward_timeout_and_crash_flags_become_metrics(char_tok):
    from tests.unit.hpt.test_gate import make_rollout_batch

    batch = make_rollout_batch([(4, 1), (4, 2)], seed=3)
    batch.non_tensor_batch["timeout"] = np.array([0, 1, 0, 0, 1, 1, 0, 0], dtype=np.float64)
    batch.non_tensor_batch["grader_error"] = np.array([0, 0, 0, 1, 0, 0, 0, 0], dtype=np.float64)
    t = _bare_trainer(char_tok)
    metrics = {}
    from verl_ext.hpt.metrics import reward_flag_metrics

    metrics.update(reward_flag_metrics(batch, t.state))
    metrics.update(reward_flag_metrics(batch, t.state))
    assert metrics["hpt/reward/timeouts"] == 3 and metrics["hpt/reward/grader_errors"] == 1
    assert metrics["hpt/cumulative/reward_timeouts"] == 6 and t.state.reward_grader_errors == 2


# ------------------------------------------------------------------ trainer: skip accounting
def _account(t, nonfinite, grad_norm=None, dp=1):
    metrics = {"actor/hpt/skip_nonfinite": [[float(x)] * dp for x in nonfinite],
               "actor/hpt/skip_grad_norm": [[float(x)] * dp for x in (grad_norm or [0] * len(nonfinite))]}
    t._account_skips(metrics, dp)
    return metrics


def test_skipped_steps_are_counted_and_n_in_a_row_stop_the_run(char_tok):
    from recipe.hpt.hpt_ray_trainer import HPTStopError

    t = _bare_trainer(char_tok, max_skips=3)
    m = _account(t, [1, 0])  # one skip, then a good update resets the run of skips
    assert m["hpt/skipped_steps"] == [1] and m["hpt/consecutive_skips"] == [0]
    assert "actor/hpt/skip_nonfinite" not in m  # replaced by the counted metrics
    m = _account(t, [1, 1], dp=2)  # DP ranks report the same decision: counted once per step
    assert m["hpt/skipped_steps"] == [2] and m["hpt/consecutive_skips"] == [2] and t._stop_reason is None
    m = _account(t, [0], grad_norm=[1])  # a grad-norm skip is no update either: it counts too
    assert m["hpt/consecutive_skips"] == [3] and m["hpt/skipped_steps_grad_norm"] == [1]
    assert m["hpt/cumulative/skipped_steps"] == [3]
    assert "3 consecutive optimizer steps were skipped" in t._stop_reason
    assert "1 because the pre-clip grad norm exceeded" in t._stop_reason
    assert "hpt.max_consecutive_skips=3" in t._stop_reason
    with pytest.raises(HPTStopError, match="non-finite"):
        t._start_profiling(False)  # the next training step refuses to start (tests/unit/hpt/test_step_guards.py)


def test_no_stop_when_disabled(char_tok):
    t = _bare_trainer(char_tok, max_skips=None)
    _account(t, [1] * 20)
    assert t.state.consecutive_skips == 20 and t._stop_reason is None


# ------------------------------------------------------------------------ worker: step guard
class _StubEngine:
    """The parts of verl's FSDPEngine that optimizer_step / train_batch use, on a plain module
    (verl's own ``FSDPEngine.optimizer_step`` is called unbound on it)."""

    def __init__(self, seed=0):
        torch.manual_seed(seed)
        self.module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=1e-2, weight_decay=0.01)
        self.optimizer_config = type("C", (), {"clip_grad": 1.0})()
        self._qat_enabled = False
        self.steps_called = 0

    def optimizer_step(self):
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

        return FSDPEngine.optimizer_step(self)

    def forward_backward_batch(self, data, loss_function, forward_only=False):
        loss = loss_function(self.module, data)
        loss.backward()
        return {"loss": [loss.item()], "metrics": {}}

    def train_batch(self, data, loss_function):  # verl's Engine.train_batch, minus TensorDict handling
        self.optimizer.zero_grad()
        out = self.forward_backward_batch(data, loss_function)
        out["metrics"]["grad_norm"] = self.optimizer_step()
        return out


def _mse(module, data):
    x, y = data
    return ((module(x) - y) ** 2).mean()


def _data(seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 4, generator=g), scale * torch.randn(16, 1, generator=g)


def _snapshot(engine):
    params = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    opt = copy.deepcopy(engine.optimizer.state_dict())
    return params, opt


def _assert_same_state(a, b):
    pa, oa = a
    pb, ob = b
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for k, v in oa["state"][i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob["state"][i][k])), (i, k)
    assert oa["param_groups"] == ob["param_groups"]


def test_verl_engine_skips_nonfinite_gradients_without_touching_adamw_state():
    """verl's FSDPEngine.optimizer_step on a NaN gradient: zero_grad, no optimizer.step()."""
    eng = _StubEngine()
    eng.train_batch(_data(), _mse)  # one real step: AdamW state exists (step = 1)
    before = _snapshot(eng)
    assert int(before[1]["state"][0]["step"]) == 1
    eng.optimizer.zero_grad()
    _mse(eng.module, _data(2)).backward()
    next(eng.module.parameters()).grad[0, 0] = float("nan")
    norm = eng.optimizer_step()
    assert not math.isfinite(norm)
    _assert_same_state(before, _snapshot(eng))  # params, exp_avg, exp_avg_sq, step: untouched
    assert all(p.grad is None or not p.grad.any() for p in eng.module.parameters())


def _guarded(threshold=None, inject=None):
    from tests.fault_injection import inject_nonfinite_gradients
    from verl_ext.verl_patches import SKIP_GRAD_NORM, SKIP_NONFINITE, install_step_guard

    eng = _StubEngine()
    install_step_guard(eng, threshold)
    inject_nonfinite_gradients(eng, inject)  # test-only, outside the production guard
    return eng, SKIP_NONFINITE, SKIP_GRAD_NORM


def test_guard_skips_a_nonfinite_loss_and_reports_it():
    eng, NF, GN = _guarded()
    out = eng.train_batch(_data(), _mse)
    assert out["metrics"][NF] == [0.0] and out["metrics"][GN] == [0.0]
    before = _snapshot(eng)

    def nan_loss(module, data):  # a loss that is NaN (e.g. log(0) * 0) with NaN gradients
        return _mse(module, data) * float("nan")

    out = eng.train_batch(_data(2), nan_loss)
    assert out["metrics"][NF] == [1.0] and out["metrics"][GN] == [0.0]
    _assert_same_state(before, _snapshot(eng))
    out = eng.train_batch(_data(3), _mse)  # and training goes on normally afterwards
    assert out["metrics"][NF] == [0.0] and int(eng.optimizer.state_dict()["state"][0]["step"]) == 2


def test_guard_skips_an_infinite_loss_even_with_finite_gradients():
    eng, NF, _ = _guarded()
    eng.train_batch(_data(), _mse)
    before = _snapshot(eng)

    def inf_loss(module, data):  # forward value inf, gradient of the finite part only
        base = _mse(module, data)
        return base + (torch.tensor(float("inf")) - base.detach() * 0).detach()

    out = eng.train_batch(_data(2), inf_loss)
    assert out["metrics"][NF] == [1.0]
    _assert_same_state(before, _snapshot(eng))


@pytest.mark.parametrize("threshold", [None, 1e6])
def test_guard_skips_nonfinite_gradients_with_or_without_threshold(threshold):
    eng, NF, GN = _guarded(threshold=threshold, inject={2})  # NaN gradients at optimizer step 2
    assert eng.train_batch(_data(), _mse)["metrics"][NF] == [0.0]
    before = _snapshot(eng)
    out = eng.train_batch(_data(2), _mse)
    assert out["metrics"][NF] == [1.0] and out["metrics"][GN] == [0.0]
    assert not math.isfinite(float(out["metrics"]["grad_norm"]))
    _assert_same_state(before, _snapshot(eng))


def test_guard_grad_norm_threshold_skip_is_reported_separately():
    eng, NF, GN = _guarded(threshold=1e-3)
    before = _snapshot(eng)
    out = eng.train_batch(_data(scale=100.0), _mse)
    assert out["metrics"][GN] == [1.0] and out["metrics"][NF] == [0.0]
    assert float(out["metrics"]["grad_norm"]) > 1e-3
    _assert_same_state(before, _snapshot(eng))  # no state was ever created


def test_fault_spec_parsing():
    from tests.fault_injection import parse_fault_spec

    assert parse_fault_spec(None) is None and parse_fault_spec("") is None
    assert parse_fault_spec("all") == "all" and parse_fault_spec("1, 3") == {1, 3}


# ------------------------------------------------------------------------- grader crashes
def test_grader_crash_in_process_scores_zero_and_is_flagged(monkeypatch):
    from verl_ext.reward import score

    r = score.compute_score("gpqa_diamond", "\\boxed{A}", "not a letter")  # bad ground truth
    assert r["score"] == 0.0 and r["grader_error"] == 1.0

    def boom(*a, **k):
        raise RecursionError("pathological input")

    monkeypatch.setattr(score, "last_boxed_content", boom)
    r = score.compute_score("math", "\\boxed{1}", "1")
    assert r == {"score": 0.0, "acc": 0.0, "pred": "", "timeout": 0.0, "grader_error": 1.0}


def test_grader_worker_crash_scores_zero_and_is_flagged(tmp_path):
    from verl_ext.reward.pool import GraderPool
    from verl_ext.reward.score import score_math

    crash = tmp_path / "crash_worker.py"
    crash.write_text("import json, os, sys\nprint(json.dumps({'ready': True}), flush=True)\n"
                     "sys.stdin.readline()\nos._exit(3)\n")
    with GraderPool(num_workers=1, worker_cmd=[sys.executable, str(crash)]) as pool:
        t0 = time.monotonic()
        r = score_math("\\boxed{x^2}", "x**2 + 0", timeout=5.0, pool=pool)
        assert time.monotonic() - t0 < 5.0  # a dead worker is noticed at once, not at the timeout
        assert r["score"] == 0.0 and r["grader_error"] == 1.0 and r["timeout"] == 0.0
        assert pool.stats["errors"] == 1
        r = score_math("\\boxed{y^2}", "y**2 + 0", timeout=5.0, pool=pool)  # a fresh worker takes over
        assert r["grader_error"] == 1.0 and pool.stats["restarts"] == 2


# ------------------------------------------------------------ reproducible rollout sampling
def test_row_seed_is_stable_and_distinguishes_its_parts():
    from verl_ext.rollout.sampling import row_seed

    a = row_seed("hf-rollout", 42, 3, [1, 2, 3], "row", 5)
    assert a == row_seed("hf-rollout", 42, 3, [1, 2, 3], "row", 5)
    assert 0 <= a < 2**63
    others = {row_seed("hf-rollout", 42, 4, [1, 2, 3], "row", 5), row_seed("hf-rollout", 43, 3, [1, 2, 3], "row", 5),
              row_seed("hf-rollout", 42, 3, [1, 2, 4], "row", 5), row_seed("hf-rollout", 42, 3, [1, 2, 3], "row", 6),
              row_seed("hf-rollout", 42, 3, [1, 2], 3, "row", 5)}
    assert a not in others and len(others) == 5
    # fixed value: the seed must not change between processes or versions silently
    assert row_seed("x", 1) == row_seed("x", 1)
    code = "from verl_ext.rollout.sampling import row_seed; print(row_seed('hf-rollout', 42, 3, [1, 2, 3], 'row', 5))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONHASHSEED="123"))
    assert int(out.stdout.strip().splitlines()[-1]) == a


class _ToyLM(torch.nn.Module):
    """A causal LM with HF's call signature (logits + a growing KV "cache" of token ids)."""

    def __init__(self, vocab=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(vocab, 8)
        self.out = torch.nn.Linear(8, vocab)

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True):
        ids = input_ids if past_key_values is None else torch.cat([past_key_values, input_ids], dim=-1)
        m = attention_mask.unsqueeze(-1)
        h = (self.emb(ids) * m).cumsum(1) / m.cumsum(1).clamp(min=1)
        return type("O", (), {"logits": self.out(torch.tanh(h)), "past_key_values": ids})()


def test_per_row_generators_make_samples_independent_of_batch_composition():
    from verl_ext.rollout.sampling import SamplingSpec, generator_for, row_seed, sample_batch

    model = _ToyLM().eval()
    prompts = [[5, 6, 7], [8, 9], [5, 6, 7], [10, 11, 12, 13], [4]]
    spec = SamplingSpec(temperature=1.0, max_new_tokens=12)

    def run(idx):
        gens = [generator_for(row_seed(0, 1, prompts[i], i)) for i in idx]
        return sample_batch(model, [prompts[i] for i in idx], spec, {1}, 0, generators=gens)

    full = run(range(5))
    assert full[0].token_ids != full[2].token_ids  # same prompt, other row: another stream
    for idx in ([4, 2, 0], [3], [1, 3], [2, 1, 4, 0, 3]):
        for j, res in zip(idx, run(idx)):
            assert res.token_ids == full[j].token_ids, (idx, j)
            np.testing.assert_allclose(res.log_probs, full[j].log_probs, rtol=0, atol=1e-5)


def test_server_seeds_requests_by_step_prompt_and_row():
    """HFRolloutServer.request_seed without a model: order-independent, step-dependent."""
    from verl_ext.rollout.hf_server import HFRolloutServer

    srv = object.__new__(HFRolloutServer)
    srv.seed, srv.global_steps, srv._occurrences = 42, None, {}
    s0 = srv.request_seed([1, 2], priority=3)
    srv._set_step(0)
    a, b = srv.request_seed([1, 2], priority=3), srv.request_seed([1, 2], priority=4)
    assert s0 != a != b and srv.request_seed([1, 2], priority=3) == a
    srv._set_step(1)
    assert srv.request_seed([1, 2], priority=3) not in (a, b)
    # without a priority: k-th identical prompt of the step, counted again after a step change
    k0, k1 = srv.request_seed([9], None), srv.request_seed([9], None)
    assert k0 != k1
    srv._set_step(2)
    srv._set_step(1)
    assert srv.request_seed([9], None) == k0


def test_grad_norm_skip_at_the_release_threshold_is_strict_and_exact():
    """A second pin of the grad-norm skip: the release's 80 (the default hpt.skip_grad_norm_above)
    skips a step whose pre-clip norm N is above it; the same gradients step when the threshold sits
    just above N, and the norm the guard compares is verl's own pre-clip norm."""
    from verl_ext.verl_patches import _total_grad_norm

    assert OmegaConf.load(REPO / "recipe/hpt/config/hpt_trainer.yaml").hpt.skip_grad_norm_above == 80.0
    probe = _StubEngine()
    _mse(probe.module, _data(scale=400.0)).backward()
    n = float(_total_grad_norm(probe))
    assert n > 80.0

    eng, NF, GN = _guarded(threshold=80.0)
    before = _snapshot(eng)
    out = eng.train_batch(_data(scale=400.0), _mse)
    assert out["metrics"][GN] == [1.0] and out["metrics"][NF] == [0.0]
    assert float(out["metrics"]["grad_norm"]) == pytest.approx(n, rel=1e-6)
    _assert_same_state(before, _snapshot(eng))

    eng, NF, GN = _guarded(threshold=n * (1 + 1e-4))  # just above N: verl's own step runs
    out = eng.train_batch(_data(scale=400.0), _mse)
    assert out["metrics"][GN] == [0.0] and int(eng.optimizer.state_dict()["state"][0]["step"]) == 1


def _record_generation(t, metrics, batch, stats, alpha):
    from verl_ext.hpt.metrics import generation_metrics
    from verl_ext.hpt.step import GateDecision

    decision = GateDecision(stats=stats, question_ids=[], alpha=alpha, beta=1.0 - alpha)
    metrics.update(generation_metrics(batch, decision, t.state, generated=t.hpt.gate.needs_rollouts,
                                      staged_padding_rows=None))


def test_generation_accounting_counts_sampled_tokens_and_nothing_for_the_sft_only_baseline(char_tok):
    """hpt/gen/tokens: the rollouts' response tokens; the SFT-only baseline's "rollouts" are its
    demonstrations (verl_ext/hpt/demo_rollout.py), so it generates nothing."""
    from tests.unit.hpt.test_gate import make_rollout_batch
    from verl_ext.hpt.gate import question_stats

    batch = make_rollout_batch([(4, 0), (4, 2)], seed=3)
    stats = question_stats(batch.non_tensor_batch["uid"], batch.batch["rm_scores"].sum(-1).numpy())
    tokens = float(batch.batch["response_mask"].sum())
    q0_tokens = float(batch.batch["response_mask"][stats.rows[0]].sum())
    t = _bare_trainer(char_tok)
    metrics = {}
    _record_generation(t, metrics, batch, stats, alpha=np.array([0.0, 1.0]))
    assert metrics["hpt/gen/tokens"] == tokens and metrics["hpt/gen/tokens_wasted"] == q0_tokens
    assert t.state.gen_tokens == tokens
    # prefix rows (staged continue_with_prefix): their demonstration tokens were copied, not generated
    from verl_ext.loss.batch_keys import HPT_PREFIX_MASK

    prefix = torch.zeros_like(batch.batch["response_mask"], dtype=torch.float32)
    row = int(stats.rows[1][0])
    prefix[row, :2] = batch.batch["response_mask"][row, :2].float()
    batch.batch[HPT_PREFIX_MASK] = prefix
    metrics = {}
    _record_generation(t, metrics, batch, stats, alpha=np.array([0.0, 1.0]))
    assert metrics["hpt/gen/tokens"] == tokens - float(prefix.sum()) and float(prefix.sum()) == 2.0
    assert metrics["hpt/stages/prefix_rows"] == 1 and metrics["hpt/stages/prefix_tokens"] == 2.0
    batch.batch.pop(HPT_PREFIX_MASK)
    sft_only = _bare_trainer(char_tok, gate=GateConfig(strategy="always"))
    metrics = {}
    _record_generation(sft_only, metrics, batch, stats, alpha=np.array([0.0, 0.0]))
    assert metrics["hpt/gen/tokens"] == 0 and metrics["hpt/gen/tokens_wasted"] == 0


def test_hf_server_returns_log_probs_only_when_asked():
    """Like vLLM's server: logprobs=false (rollout.calculate_log_probs=false) -> None for every row,
    so plain rows and demonstration-prefix rows of one agent-loop chunk agree."""
    from verl_ext.rollout.hf_server import requested_log_probs

    assert requested_log_probs({"logprobs": False}, [-0.5, -1.0]) is None
    assert requested_log_probs({"logprobs": True}, [-0.5, -1.0]) == [-0.5, -1.0]
    assert requested_log_probs({"temperature": 1.0}, [-0.5]) == [-0.5]  # not sent: verl 0.9 always sends it

