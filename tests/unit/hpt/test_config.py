"""The typed ``hpt`` node (verl_ext/hpt/config.py, issue 13): built from the composed config, every
error naming its dotted key, and one home (recipe/hpt/config/hpt_trainer.yaml) for its defaults."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from omegaconf import OmegaConf

from verl_ext.hpt.config import DataOptions, HPTConfig, HPTConfigError
from verl_ext.recipe_defaults import yaml_defaults
from verl_ext.hpt.gate import GateConfig
from verl_ext.loss.config import UPGELossConfig, load_upge_config


@pytest.fixture(scope="module")
def default_config():
    """The default trainer config, composed as ``python -m recipe.hpt.main_hpt`` composes it."""
    from tests.helpers import compose_trainer_config

    return compose_trainer_config()


def _with(cfg, **dotted):
    cfg = copy.deepcopy(cfg)
    for key, value in dotted.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, merge=False, force_add=True)
    return cfg


def test_the_default_config_gives_typed_values(default_config):
    hpt = HPTConfig.from_config(default_config)
    assert hpt.demo_field == "target"
    assert hpt.skip_grad_norm_above == 80.0 and isinstance(hpt.skip_grad_norm_above, float)
    assert hpt.max_consecutive_skips == 5
    assert hpt.data == DataOptions(validate=True, on_bad_row="error", on_long_demo="truncate", on_missing_demo=None,
                                   filtered_dir=None, max_errors_shown=10, demo_check_rows=1000,
                                   demo_check_min_rate=0.9)
    assert hpt.data.missing_demo_policy == "error"
    assert hpt.gate == GateConfig(strategy="switch", gamma=0.0) and hpt.gate.can_choose_sft()
    assert isinstance(hpt.loss, UPGELossConfig) and hpt.loss == load_upge_config(default_config.hpt.loss)
    assert hpt.stages is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        hpt.demo_field = "solution"
    # 0 and null both mean "never stop"
    assert HPTConfig.from_config(_with(default_config, hpt__max_consecutive_skips=0)).max_consecutive_skips is None
    assert HPTConfig.from_config(_with(default_config, hpt__skip_grad_norm_above=None)).skip_grad_norm_above is None


@pytest.mark.parametrize("key,value,match", [
    ("hpt__demo_field", "", r"hpt\.demo_field='' must be a non-empty string"),
    ("hpt__max_consecutive_skips", 1.5, r"hpt\.max_consecutive_skips=1\.5 must be an integer"),
    ("hpt__skip_grad_norm_above", "big", r"hpt\.skip_grad_norm_above='big' must be a positive number"),
    ("hpt__fuse_old_log_prob", "yes", r"hpt\.fuse_old_log_prob='yes' must be true or false"),
    ("hpt__data__validate", "yes", r"hpt\.data\.validate='yes' must be true or false"),
    ("hpt__data__max_errors_shown", 0, r"hpt\.data\.max_errors_shown=0 must be an integer >= 1"),
    ("hpt__data__filtered_dir", 3, r"hpt\.data\.filtered_dir=3 must be a path or null"),
    ("hpt__data", [1], r"hpt\.data must be a mapping"),
    ("hpt__gate__gamma", 2, r"hpt\.gate\.gamma=2\.0 must lie in \[0, 1\]"),
    ("hpt__loss", None, r"hpt\.loss is null"),
    ("hpt__stages", [{"rollouts": 3}], r"hpt\.stages"),
    ("hpt__bogus", 1, r"hpt: unknown key\(s\) \['bogus'\]"),
])
def test_a_bad_value_names_its_dotted_key(default_config, key, value, match):
    with pytest.raises(ValueError, match=match):
        HPTConfig.from_config(_with(default_config, **{key: value}))


@pytest.mark.parametrize("key", ["hpt.demo_field", "hpt.max_consecutive_skips", "hpt.data.on_bad_row",
                                 "hpt.data.demo_check_min_rate"])
def test_a_missing_key_is_an_error_naming_it_not_a_python_default(default_config, key):
    cfg = copy.deepcopy(default_config)
    OmegaConf.set_struct(cfg, False)
    parent, leaf = key.rsplit(".", 1)
    del OmegaConf.select(cfg, parent)[leaf]
    with pytest.raises(HPTConfigError, match=rf"{key.replace('.', '[.]')} is not set.*hpt_trainer\.yaml"):
        HPTConfig.from_config(cfg)


def test_hpt_defaults_have_one_home_the_trainer_yaml():
    """HPTConfig and DataOptions state no default (a missing key is an error, above); the YAML's
    keys are exactly their fields. hpt.gate is the documented exception: GateConfig keeps
    verl-style dataclass defaults, and they must equal the YAML's."""
    for cls in (HPTConfig, DataOptions):
        with_default = [f.name for f in dataclasses.fields(cls)
                        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
        assert with_default == [], f"{cls.__name__} repeats the YAML's defaults: {with_default}"
    node = yaml_defaults()
    assert set(node) == {f.name for f in dataclasses.fields(HPTConfig)} - {"loss"}  # loss: the upge group
    assert set(node["data"]) == {f.name for f in dataclasses.fields(DataOptions)}
    DataOptions.from_mapping(node["data"])  # and valid
    assert GateConfig.from_mapping(node["gate"]) == GateConfig()
    assert set(node["gate"]) == {f.name for f in dataclasses.fields(GateConfig)}


def test_the_converter_writes_the_demonstration_where_the_yaml_default_reads_it(monkeypatch):
    from verl_ext import recipe_defaults
    from verl_ext.data.convert import convert_rows

    row = {"question": "1+1?", "answer": "2", "demonstration": "1+1=2. \\boxed{2}"}
    out, _ = convert_rows([row], "jsonl", score_demos=False)
    assert out[0]["extra_info"][yaml_defaults()["demo_field"]] == row["demonstration"]
    monkeypatch.setattr(recipe_defaults, "yaml_defaults", lambda: {"demo_field": "solution"})
    out, _ = convert_rows([row], "jsonl", score_demos=False)
    assert out[0]["extra_info"]["solution"] == row["demonstration"]


@pytest.mark.parametrize("gate,sft,rl", [
    (dict(strategy="switch"), True, True),
    (dict(strategy="soft", soft_fn="linear"), True, True),
    (dict(strategy="always"), True, False),
    (dict(strategy="never"), False, True),
    (dict(strategy="fixed", fixed_alpha=1.0, fixed_beta=0.0), False, True),
    (dict(strategy="fixed", fixed_alpha=0.0, fixed_beta=1.0), True, False),
    (dict(strategy="fixed", fixed_alpha=0.0, fixed_beta=1.0, placement="add", keep_gated_rollouts=True), True, True),
    (dict(strategy="soft", soft_table=((1, 0), (1, 0), (1, 0))), False, True),
    (dict(strategy="soft", soft_table=((0, 1), (0, 1), (0, 1))), True, False),
])
def test_gate_says_which_arms_it_can_choose(gate, sft, rl):
    cfg = GateConfig.from_mapping(gate)
    assert (cfg.can_choose_sft(), cfg.can_choose_rl()) == (sft, rl)


def test_stages_are_refused_with_a_soft_table_and_with_the_sft_only_baseline(default_config):
    from omegaconf import OmegaConf

    from verl_ext.hpt.config import HPTConfigError

    staged = [{"rollouts": 2}, {"rollouts": 2, "max_correct": 0, "action": "stop_to_sft"}]
    cfg = OmegaConf.create(OmegaConf.to_container(default_config))
    cfg.actor_rollout_ref.rollout.n = 4
    cfg.hpt.stages = staged
    assert HPTConfig.from_config(cfg).stages[1].action == "stop_to_sft"
    cfg.hpt.gate.strategy = "soft"
    cfg.hpt.gate.soft_table = [[0, 1], [1, 0], [1, 0], [1, 0], [1, 0]]
    with pytest.raises(HPTConfigError, match=r"hpt\.stages with hpt\.gate\.soft_table"):
        HPTConfig.from_config(cfg)
    cfg.hpt.gate.soft_table = None
    cfg.hpt.gate.strategy = "always"
    with pytest.raises(HPTConfigError, match=r"hpt\.stages is set but hpt\.gate\.strategy=always"):
        HPTConfig.from_config(cfg)


def test_stages_that_train_demonstrations_need_a_demo_arm_and_demonstrations(default_config):
    from omegaconf import OmegaConf

    from verl_ext.hpt.config import HPTConfigError

    cfg = OmegaConf.create(OmegaConf.to_container(default_config))
    cfg.actor_rollout_ref.rollout.n = 4
    cfg.hpt.gate.strategy = "never"
    cfg.hpt.stages = [{"rollouts": 2}, {"rollouts": 2, "max_correct": 0, "action": "stop_to_sft"}]
    hpt = HPTConfig.from_config(cfg)
    assert not hpt.gate.can_choose_sft() and hpt.needs_demonstrations  # stopped questions go to SFT
    cfg.hpt.loss.demo = None
    with pytest.raises(HPTConfigError, match=r"hpt\.loss\.demo is null"):
        HPTConfig.from_config(cfg)
    cfg.hpt.stages = [{"rollouts": 2}, {"rollouts": 2, "max_correct": 0, "action": "continue"}]
    assert not HPTConfig.from_config(cfg).needs_demonstrations
