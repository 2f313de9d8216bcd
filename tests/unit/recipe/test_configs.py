"""Paper-run configs (recipe/hpt/config/exp/*.yaml) and launch scripts (scripts/train, scripts/eval).

Every experiment file is composed exactly as ``recipe/hpt/main_hpt.py`` composes it (config dir
``recipe/hpt/config``, config ``hpt_trainer``, override ``+exp=<name>``), then checked by the
project's own validators
(gate, UPGE loss) and by verl's config validation. Compose only: no model, no Ray, no training.
"""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from verl_ext.hpt.config import HPTConfig
from verl_ext.hpt.gate import GateConfig
from verl_ext.loss.config import UPGEConfigError, load_upge_config

REPO = TESTS_REPO
CONFIG_DIR = REPO / "recipe" / "hpt" / "config"
EXP_DIR = REPO / "recipe" / "hpt" / "config" / "exp"
ALL_EXPS = sorted(p.stem for p in EXP_DIR.glob("*.yaml"))

# Files meant to be appended to another exp file (a mode / a model template), composed as lists.
COMPOSE_AS = {
    "hpt_paper_eq": ["hpt_qwen7b", "hpt_paper_eq"],
    "llama_zero_template": ["baseline_grpo", "llama_zero_template"],
    "hpt_staged": ["hpt_qwen7b", "hpt_staged"],
}
# hpt.gate.demo_arms of the files that do not use the default [demo] (only these have a demo_off arm).
DEMO_ARMS = {"table5_mix_on": ("demo", "demo_off"), "table5_off_on": ("demo_off",)}

# The paper-run files (all include release_gpu.yaml) and the values that would differ if the file
# were wrong. Keys are dotted config paths.
HPT_RELEASE_RL = {"hpt.loss.rollout.stable": "none", "hpt.loss.rollout.ref": "old",
                  "hpt.loss.rollout.agg": "const-len", "hpt.loss.rollout.const_len": 8192,
                  "hpt.loss.entropy_agg": "micro-token-mean"}
HPT_RELEASE = {**HPT_RELEASE_RL, "hpt.loss.demo.ref": "self", "hpt.loss.demo.adv": "one",
               "hpt.loss.demo.agg": "micro-token-mean", "algorithm.norm_adv_by_std_in_grpo": False}
LUFFY_LOSS = {**HPT_RELEASE_RL, "hpt.loss.demo.ref": "one", "hpt.loss.demo.adv": "batch",
              "hpt.loss.demo.shaping_gamma": 0.1, "hpt.loss.demo.agg": "const-len",
              "hpt.loss.demo.coef": 1.0, "algorithm.norm_adv_by_std_in_grpo": False}
SWITCH = {"hpt.gate.strategy": "switch", "hpt.gate.placement": "replace", "hpt.gate.keep_gated_rollouts": False}
QWEN7B = {**HPT_RELEASE, **SWITCH, "hpt.gate.gamma": 0.0, "hpt.loss.demo.coef": 1.0,
          "actor_rollout_ref.actor.optim.lr": 5e-6, "hpt.skip_grad_norm_above": 80.0,
          "actor_rollout_ref.rollout.n": 8, "actor_rollout_ref.model.custom_chat_template": None}
QWEN1_5B = {**QWEN7B, "hpt.loss.demo.coef": 0.3}
LUFFY_GROUPING = {"hpt.gate.strategy": "fixed", "hpt.gate.fixed_alpha": 1.0, "hpt.gate.fixed_beta": 1.0,
                  "hpt.gate.placement": "add", "actor_rollout_ref.rollout.n": 7,
                  "actor_rollout_ref.actor.optim.lr": 1e-6, "hpt.skip_grad_norm_above": None}
# Table 5's off-policy demonstration arm (upge/hpt_release_off.yaml: LUFFY's demo term) and gate.
OFF_ARM = {"hpt.loss.demo_off.stable": "none", "hpt.loss.demo_off.ref": "one", "hpt.loss.demo_off.adv": "batch",
           "hpt.loss.demo_off.shaping_gamma": 0.1, "hpt.loss.demo_off.agg": "const-len",
           "hpt.loss.demo_off.const_len": 8192, "hpt.loss.demo_off.coef": 1.0,
           "hpt.loss.average_over_dp_ranks": True}
TABLE5_GATE = {"hpt.gate.strategy": "switch", "hpt.gate.gamma": 0.0, "hpt.gate.placement": "replace",
               "hpt.gate.keep_gated_rollouts": True}
GRPO = {**HPT_RELEASE_RL, "hpt.gate.strategy": "never", "algorithm.norm_adv_by_std_in_grpo": False,
        "actor_rollout_ref.actor.optim.lr": 1e-6, "actor_rollout_ref.rollout.n": 8,
        "hpt.skip_grad_norm_above": None}

EXPECTED = {
    "hpt_qwen7b": {**QWEN7B, "trainer.experiment_name": "hpt_qwen2.5-math-7b"},
    "hpt_qwen1_5b": {**QWEN1_5B, "trainer.experiment_name": "hpt_qwen2.5-math-1.5b"},
    "hpt_llama8b": {**QWEN7B, "hpt.gate.gamma": 0.25, "hpt.skip_grad_norm_above": None,
                    "actor_rollout_ref.model.custom_chat_template": "ZERO"},
    "hpt_paper_eq": {**SWITCH, "hpt.gate.gamma": 0.0, "hpt.loss.rollout.stable": "ppo_clip",
                     "hpt.loss.rollout.clip_low": 0.2, "hpt.loss.rollout.clip_c": None,
                     "hpt.loss.rollout.agg": "seq-mean-token-sum", "hpt.loss.demo.agg": "seq-mean-token-mean",
                     "algorithm.norm_adv_by_std_in_grpo": True, "actor_rollout_ref.actor.optim.lr": 5e-6},
    "llama_zero_template": {**GRPO, "actor_rollout_ref.model.custom_chat_template": "ZERO"},
    "baseline_grpo": GRPO,
    "baseline_sft_grpo_stage2": {**GRPO, "trainer.experiment_name": "sft_grpo_stage2"},
    "baseline_sft": {"hpt.gate.strategy": "always", "hpt.loss.rollout": None, "hpt.loss.demo.ref": "self",
                     "hpt.loss.demo.adv": "one", "hpt.loss.demo.agg": "token-mean",
                     "actor_rollout_ref.rollout.n": 1, "actor_rollout_ref.actor.entropy_coeff": 0.0,
                     "actor_rollout_ref.actor.optim.lr": 5e-5,
                     "actor_rollout_ref.actor.optim.lr_scheduler_type": "cosine",
                     "data.train_batch_size": 64, "trainer.total_epochs": 3,
                     "trainer.total_training_steps": None, "hpt.skip_grad_norm_above": None},
    "baseline_luffy": {**LUFFY_LOSS, **LUFFY_GROUPING},
    "baseline_srft": {**LUFFY_GROUPING, "hpt.loss.rollout.ref": "self", "hpt.loss.rollout.adv": "outcome",
                      "hpt.loss.rollout.adv_correct": 0.1, "hpt.loss.rollout.adv_incorrect": -1.0,
                      "hpt.loss.rollout.adv_entropy_exp": 1.0, "hpt.loss.rollout.agg": "const-len",
                      "hpt.loss.demo.ref": "one", "hpt.loss.demo.shaping_gamma": 0.1,
                      "hpt.loss.demo.agg": "const-len", "hpt.loss.demo.nll_coef": 0.5,
                      "hpt.loss.demo.nll_entropy_exp": -1.0, "hpt.loss.demo.nll_agg": "micro-token-mean",
                      "hpt.loss.average_over_dp_ranks": True, "hpt.loss.entropy_agg": "micro-token-mean",
                      "actor_rollout_ref.actor.calculate_entropy": True,
                      "algorithm.norm_adv_by_std_in_grpo": False},
    "hpt_staged": {**QWEN7B, "hpt.stages": [{"rollouts": 4}, {"rollouts": 4, "max_correct": 0,
                                                               "action": "stop_to_sft"}]},
    "rasft": {"hpt.gate.strategy": "soft", "hpt.gate.soft_fn": "rasft", "hpt.gate.placement": "replace",
              "hpt.gate.soft_params.r_max": 3.0, "hpt.gate.soft_params.adv_alpha": 0.4,
              "hpt.gate.soft_params.rollout_cap": 0.15, "hpt.loss.rollout.ref": "self",
              "hpt.loss.rollout.adv": "outcome", "hpt.loss.rollout.adv_incorrect": 0.0,
              "hpt.loss.rollout.agg": "token-mean", "hpt.loss.demo.agg": "token-mean",
              "actor_rollout_ref.rollout.n": 3, "actor_rollout_ref.rollout.temperature": 0.9,
              "actor_rollout_ref.actor.entropy_coeff": 0.0, "actor_rollout_ref.actor.optim.lr": 4e-5,
              "actor_rollout_ref.actor.optim.weight_decay": 0.0},
    "dypo": {"hpt.gate.strategy": "switch", "hpt.gate.gamma": 0.0, "hpt.gate.drop_all_correct": True,
             "hpt.loss.rollout.stable": "gspo_seq_clip", "hpt.loss.rollout.ref": "gspo_seq",
             "hpt.loss.gal_coef": 0.001, "hpt.loss.gal_beta": 0.1, "hpt.loss.demo.agg": "token-mean",
             "algorithm.norm_adv_by_std_in_grpo": True, "data.train_batch_size": 16,
             "actor_rollout_ref.actor.ppo_mini_batch_size": 16, "actor_rollout_ref.actor.optim.lr": 5e-7,
             "actor_rollout_ref.actor.entropy_coeff": 0.01},
    "trapo": {"hpt.gate.strategy": "never", "hpt.loss.demo.ref": "self_floor", "hpt.loss.demo.ref_floor": 0.1,
              "hpt.loss.rollout.agg": "const-len", "hpt.stages": [
                  {"rollouts": 4},
                  {"rollouts": 2, "max_correct": 1, "action": "continue_with_prefix", "prefix": 0.25},
                  {"rollouts": 1, "max_correct": 3, "action": "continue_with_prefix", "prefix": 0.5},
                  {"rollouts": 1, "max_correct": 6, "action": "continue_with_prefix", "prefix": 1.0}],
              "algorithm.norm_adv_by_std_in_grpo": False, "data.train_batch_size": 8,
              "actor_rollout_ref.actor.ppo_mini_batch_size": 8, "actor_rollout_ref.actor.optim.lr": 1e-6},
    "table5_sft_on": QWEN1_5B,
    # Table 5: one loss (SFT demo arm at 0.3 + off-policy demo_off arm), rows chosen by hpt.gate.demo_arms
    "table5_off_on": {**QWEN1_5B, **OFF_ARM, **TABLE5_GATE, "hpt.gate.demo_arms": ["demo_off"],
                      "trainer.experiment_name": "table5_off_on_qwen2.5-math-1.5b"},
    "table5_mix_on": {**QWEN1_5B, **OFF_ARM, **TABLE5_GATE, "hpt.gate.demo_arms": ["demo", "demo_off"],
                      "trainer.experiment_name": "table5_mix_on_qwen2.5-math-1.5b"},
    "table6_gamma0": {**QWEN1_5B, "hpt.gate.gamma": 0.0},
    "table6_gamma1_8": {**QWEN1_5B, "hpt.gate.gamma": 0.125},
    "table6_gamma2_8": {**QWEN1_5B, "hpt.gate.gamma": 0.25},
}
# The release's GPU settings (release_gpu.yaml), in every paper-run file.
RELEASE_GPU = {
    "trainer.n_gpus_per_node": 8, "trainer.device": "cuda",
    "actor_rollout_ref.rollout.name": "vllm", "actor_rollout_ref.rollout.tensor_model_parallel_size": 2,
    "actor_rollout_ref.rollout.gpu_memory_utilization": 0.75,
    "actor_rollout_ref.actor.use_dynamic_bsz": True, "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": 32768,
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz": True,
    "actor_rollout_ref.actor.ppo_mini_batch_size": 64, "actor_rollout_ref.actor.ppo_epochs": 1,
    "data.max_prompt_length": 1024, "data.max_response_length": 8192, "data.filter_overlong_prompts": True,
    "actor_rollout_ref.rollout.max_model_len": 1024 + 8192,
    "actor_rollout_ref.rollout.val_kwargs.n": 8, "actor_rollout_ref.rollout.val_kwargs.temperature": 0.6,
    "actor_rollout_ref.rollout.val_kwargs.do_sample": True,
    "actor_rollout_ref.actor.entropy_coeff": 0.001, "actor_rollout_ref.actor.use_kl_loss": False,
    "actor_rollout_ref.actor.grad_clip": 1.0, "actor_rollout_ref.actor.optim.weight_decay": 0.01,
    "algorithm.adv_estimator": "grpo", "algorithm.use_kl_in_reward": False,
    "reward.custom_reward_function.path": "pkg://verl_ext.reward.score",
    "data.train_batch_size": 128, "trainer.total_training_steps": 500,
    "trainer.test_freq": 10, "trainer.save_freq": 50, "trainer.val_before_train": True,
}
RELEASE_GPU_EXCEPT = {  # keys a run file changes on purpose (checked in EXPECTED instead)
    "baseline_sft": {"data.train_batch_size", "trainer.total_training_steps", "trainer.test_freq",
                     "trainer.save_freq", "actor_rollout_ref.actor.entropy_coeff"},
    "rasft": {"actor_rollout_ref.actor.entropy_coeff", "actor_rollout_ref.actor.optim.weight_decay"},
    "dypo": {"actor_rollout_ref.actor.entropy_coeff", "data.train_batch_size",
             "actor_rollout_ref.actor.ppo_mini_batch_size"},
    "trapo": {"data.train_batch_size", "actor_rollout_ref.actor.ppo_mini_batch_size"},
}


def _selection(name: str) -> str:
    parts = COMPOSE_AS.get(name, [name])
    return parts[0] if len(parts) == 1 else "[" + ",".join(parts) + "]"


def compose_exp(selection: str, extra: list[str] | tuple = ()):
    """Compose as main_hpt does (hydra.main(config_path="config", config_name="hpt_trainer"))."""
    GlobalHydra.instance().clear()
    old = os.getcwd()
    os.chdir(REPO)  # relative data paths in the exp files are the repo's
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return compose(config_name="hpt_trainer", overrides=[f"+exp={selection}", *extra])
    finally:
        os.chdir(old)
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def composed():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = compose_exp(_selection(name))
        return cache[name]

    return get


def _select(cfg, key):
    sentinel = object()
    value = OmegaConf.select(cfg, key, default=sentinel)
    assert value is not sentinel, f"{key} missing from the composed config"
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _zero_template():
    from verl_ext.data.prompts import ZERO_CHAT_TEMPLATE

    return ZERO_CHAT_TEMPLATE


# ------------------------------------------------------------------ every exp file


def test_every_paper_file_has_expectations():
    mine = set(EXPECTED) | {"release_gpu"}
    # CPU smoke configs (tests/e2e/test_hpt_cpu.py) and the GPU smoke run (test_gpu_smoke_settings)
    others = {n for n in ALL_EXPS if n.startswith("cpu_")} | {"gpu_smoke"}
    missing = sorted(set(ALL_EXPS) - mine - others)
    assert not missing, f"recipe/hpt/config/exp files without expectations in {Path(__file__).name}: {missing}"


@pytest.mark.parametrize("name", ALL_EXPS)
def test_exp_file_is_global_package_with_header(name):
    text = (EXP_DIR / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n"), f"{name}.yaml must start with '# @package _global_'"
    assert text.splitlines()[1].startswith("# "), f"{name}.yaml needs a header comment"


@pytest.mark.parametrize("name", ALL_EXPS)
def test_exp_composes_and_validates(name, composed):
    cfg = composed(name)
    hpt = cfg.hpt
    # Every config check main_hpt runs before Ray; the trainer reads its gate from the same object.
    gate = HPTConfig.from_config(cfg).gate
    loss = load_upge_config(hpt.loss)  # rejects a partial arm (e.g. a leftover `coef`), naming the key
    # Every arm states all four UPGE parts (load_upge_config requires ref/adv/agg; stable too here).
    for arm in ("rollout", "demo", "demo_off"):
        node = hpt.loss.get(arm)
        if node is not None:
            missing = {"stable", "ref", "adv", "agg"} - set(node.keys())
            assert not missing, f"{name}: hpt.loss.{arm} lacks {sorted(missing)} (a partial arm)"
    assert gate.demo_arms == DEMO_ARMS.get(name, ("demo",)), f"{name}: hpt.gate.demo_arms = {gate.demo_arms}"
    if "demo_off" not in gate.demo_arms:
        assert loss.demo_off is None, f"{name}: hpt.loss.demo_off is set but the gate builds no demo_off rows"
    # The arms the gate can produce rows for must exist in the loss.
    if gate.strategy != "always":
        assert loss.rollout is not None, f"{name}: gate {gate.strategy} keeps rollouts but hpt.loss.rollout is null"
    if gate.strategy not in ("never",):
        for arm in gate.demo_arms:
            assert loss.arm(arm) is not None, (
                f"{name}: gate {gate.strategy} builds {arm} rows (hpt.gate.demo_arms) but hpt.loss.{arm} is null")
    # Trainer preconditions (RayHPTTrainer).
    assert cfg.trainer.balance_batch is True
    assert cfg.actor_rollout_ref.actor.shuffle is False
    from verl_ext.checks.settings import unsupported_settings

    assert unsupported_settings(cfg) == [], f"{name}: {unsupported_settings(cfg)}"
    _verl_validate(cfg)


def _verl_validate(cfg):
    """What main_hpt runs before building workers: verl's config validation and dataclasses."""
    from verl.experimental.reward_loop import migrate_legacy_reward_impl
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    cfg = migrate_legacy_reward_impl(OmegaConf.create(OmegaConf.to_container(cfg)))
    OmegaConf.resolve(cfg)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    algo = omega_conf_to_dataclass(cfg.algorithm)
    assert actor.rollout_n == rollout.n
    assert algo.adv_estimator == cfg.algorithm.adv_estimator
    use_ref, use_critic = need_reference_policy(cfg), need_critic(cfg)
    assert not use_ref and not use_critic, "HPT runs have no reference model and no critic"
    validate_config(config=cfg, use_reference_policy=use_ref, use_critic=use_critic)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exp_key_values(name, composed):
    cfg = composed(name)
    for key, want in EXPECTED[name].items():
        # None: null or absent (e.g. a preset field left unset must not survive from another preset)
        got = OmegaConf.select(cfg, key, default=None) if want is None else _select(cfg, key)
        if want == "ZERO":
            want = _zero_template()
        if isinstance(want, float) and isinstance(got, (int, float)):
            assert got == pytest.approx(want), f"{name}: {key} = {got!r}, expected {want!r}"
        else:
            assert got == want, f"{name}: {key} = {got!r}, expected {want!r}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_release_gpu_settings(name, composed):
    cfg = composed(name)
    skip = RELEASE_GPU_EXCEPT.get(name, set())
    for key, want in RELEASE_GPU.items():
        if key in skip:
            continue
        got = _select(cfg, key)
        assert got == want, f"{name}: {key} = {got!r}, expected the release's {want!r}"
    assert cfg.data.max_prompt_length + cfg.data.max_response_length == cfg.actor_rollout_ref.rollout.max_model_len


def test_gate_fractions_are_exact_for_n8(composed):
    """γ = 1/8 and 2/8 route exactly the questions with k ≤ 1 / k ≤ 2 correct of 8 to SFT."""
    import numpy as np

    from verl_ext.hpt.gate import gate_by_pass_rate

    k = np.arange(9)
    for name, last_sft in (("table6_gamma0", 0), ("table6_gamma1_8", 1), ("table6_gamma2_8", 2), ("hpt_llama8b", 2)):
        gate = GateConfig.from_mapping(OmegaConf.to_container(composed(name).hpt.gate, resolve=True))
        alpha, beta = gate_by_pass_rate(k, np.full(9, 8), gate)
        assert beta.tolist() == [1.0 if i <= last_sft else 0.0 for i in k], name
        assert alpha.tolist() == [0.0 if i <= last_sft else 1.0 for i in k], name


def test_command_line_overrides_win_over_exp_files():
    cfg = compose_exp("hpt_qwen7b", ["upge=grpo", "hpt.gate.gamma=0.5", "actor_rollout_ref.actor.optim.lr=1e-6"])
    assert cfg.hpt.loss.rollout.stable == "ppo_clip" and cfg.hpt.loss.demo is None
    assert cfg.hpt.gate.gamma == 0.5 and cfg.actor_rollout_ref.actor.optim.lr == 1e-6
    # hpt_qwen1_5b's demo coef outlives a preset switch (documented in the file): the partial arm
    # {coef: 0.3} is an error naming the key, not a silent demo arm of default fields; null it explicitly.
    cfg = compose_exp("hpt_qwen1_5b", ["upge=grpo"])
    assert OmegaConf.to_container(cfg.hpt.loss.demo) == {"coef": 0.3}
    with pytest.raises(UPGEConfigError, match=r"hpt\.loss\.demo\.ref is not set"):
        load_upge_config(cfg.hpt.loss)
    cfg = compose_exp("hpt_qwen1_5b", ["upge=grpo", "hpt.loss.demo=null"])
    assert cfg.hpt.loss.demo is None and load_upge_config(cfg.hpt.loss).demo is None
    # Table 5's rows differ only in hpt.gate.demo_arms: SFT/ON is Mix/ON with [demo] (same loss).
    mix = compose_exp("table5_mix_on", ["hpt.gate.demo_arms=[demo]", "hpt.gate.keep_gated_rollouts=false"])
    gate = GateConfig.from_mapping(OmegaConf.to_container(mix.hpt.gate, resolve=True))
    assert gate.demo_arms == ("demo",) and load_upge_config(mix.hpt.loss).demo_off is not None
    cfg = compose_exp("hpt_qwen1_5b", ["upge=hpt_paper"])
    assert cfg.hpt.loss.demo.coef == 0.3 and cfg.hpt.loss.demo.agg == "seq-mean-token-mean"


def test_llama_template_renders_the_zero_prompt_verbatim():
    from jinja2 import Template

    from verl_ext.data.prompts import build_messages

    tmpl = compose_exp("hpt_llama8b").actor_rollout_ref.model.custom_chat_template
    assert tmpl == _zero_template()
    msgs = build_messages("What is 1+1?", "zero")
    text = Template(tmpl).render(messages=msgs, bos_token="<|begin_of_text|>", add_generation_prompt=True)
    assert text == "<|begin_of_text|>" + msgs[-1]["content"]
    assert text.endswith("Answer:\nLet's think step by step.")


# ------------------------------------------------------------------ rope patch


def test_patch_rope_copy(tmp_path):
    from transformers import AutoConfig

    from verl_ext.models.rope import patch

    src = tmp_path / "Qwen2.5-Math-7B"
    src.mkdir()
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64,
           "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "num_hidden_layers": 1,
           "vocab_size": 100, "rope_theta": 10000.0, "max_position_embeddings": 4096}
    (src / "config.json").write_text(json.dumps(cfg))
    (src / "model.safetensors").write_bytes(b"weights")
    dst = Path(patch(str(src), str(tmp_path / "Qwen2.5-Math-7B-rope40k")))
    assert (dst / "model.safetensors").is_symlink() and (dst / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((src / "config.json").read_text())["rope_theta"] == 10000.0  # source untouched
    loaded = AutoConfig.from_pretrained(dst)
    assert loaded.max_position_embeddings == 16384
    theta = (getattr(loaded, "rope_parameters", None) or {}).get("rope_theta", getattr(loaded, "rope_theta", None))
    assert theta == 40000.0
    patch(str(src), str(dst))  # idempotent
    assert json.loads((dst / "config.json").read_text())["rope_theta"] == 40000.0


QWEN_MATH_CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
                    "num_hidden_layers": 1, "vocab_size": 300, "rope_theta": 10000.0, "max_position_embeddings": 4096}


def fake_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes | str] | None = None,
                   revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """A Hugging Face hub cache holding one model snapshot, laid out as huggingface_hub writes it
    (``models--Org--Name/snapshots/<commit>/...`` and ``refs/main``), so that with ``HF_HUB_CACHE=cache``
    and ``HF_HUB_OFFLINE=1`` the id resolves as it would for a user who ran ``hf download <id>``.
    Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    for name, data in (files or {"config.json": json.dumps(QWEN_MATH_CONFIG)}).items():
        (snap / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return snap


def _patch_rope_cli(args: list[str], cache: Path):
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(REPO / "scripts/train/patch_rope.py"), *args],
                          capture_output=True, text=True, env=env)


def test_patch_rope_resolves_a_hub_id_through_the_cache(tmp_path):
    """README: MODEL=Qwen/Qwen2.5-Math-7B. The id resolves through the hub cache (offline here), and the
    copy links to the cached snapshot's files; a missing id names the id and the download command."""
    from transformers import AutoConfig

    cache = tmp_path / "hub"
    snap = fake_hub_cache(cache, "Qwen/Qwen2.5-Math-7B",
                          {"config.json": json.dumps(QWEN_MATH_CONFIG), "model.safetensors": b"weights"})
    dst = tmp_path / "models" / "Qwen2.5-Math-7B-rope40k"
    res = _patch_rope_cli(["--src", "Qwen/Qwen2.5-Math-7B", "--dst", str(dst)], cache)
    assert res.returncode == 0, res.stderr
    assert (dst / "model.safetensors").is_symlink() and os.readlink(dst / "model.safetensors") == str(
        snap / "model.safetensors")
    loaded = AutoConfig.from_pretrained(dst)
    assert loaded.max_position_embeddings == 16384
    assert json.loads((snap / "config.json").read_text())["rope_theta"] == 10000.0  # the cache is untouched

    res = _patch_rope_cli(["--src", "Org/Missing-Model", "--dst", str(tmp_path / "x")], cache)
    assert res.returncode == 2 and not (tmp_path / "x").exists()
    assert "'Org/Missing-Model'" in res.stderr and "hf download Org/Missing-Model" in res.stderr
    assert "huggingface-cli download Org/Missing-Model" in res.stderr
    res = _patch_rope_cli(["--src", str(tmp_path / "no-such-folder"), "--dst", str(tmp_path / "y")], cache)
    assert res.returncode == 2 and "no such folder, and not a hub id" in res.stderr


def _launch_model(cmd: list[str]) -> str:
    return next(a.split("=", 1)[1] for a in cmd if a.startswith("actor_rollout_ref.model.path="))


def test_launch_scripts_take_hub_ids():
    """A Qwen2.5-Math id is patched into an absolute folder under MODEL_DIR (not the relative
    "Qwen/Qwen2.5-Math-7B-rope40k"); any other id goes to verl as it is, whatever the script's MODEL_NAME."""
    res = subprocess.run(["bash", str(REPO / "scripts/train/hpt_qwen7b.sh")], capture_output=True, text=True, cwd="/",
                         env={**{k: v for k, v in os.environ.items() if k not in ("MODEL_NAME", "ROPE_MODEL")},
                              "DRY_RUN": "1", "MODEL_DIR": "/models", "MODEL": "Qwen/Qwen2.5-Math-7B"})
    assert res.returncode == 0, res.stderr
    (cmd,) = [shlex.split(line) for line in res.stdout.splitlines() if "recipe.hpt.main_hpt" in line]
    assert _launch_model(cmd) == "/models/Qwen2.5-Math-7B-rope40k"
    (would,) = [line for line in res.stderr.splitlines() if line.startswith("# would run: ")]
    assert shlex.split(would[len("# would run: "):])[2:] == ["--src", "Qwen/Qwen2.5-Math-7B", "--dst",
                                                             "/models/Qwen2.5-Math-7B-rope40k"]
    assert "warning" not in res.stderr
    for script, model in (("grpo.sh", "Qwen/Qwen2.5-7B-Instruct"), ("hpt_llama8b.sh", "meta-llama/Llama-3.1-8B")):
        (cmd,) = _dry_run(script, {"MODEL": model})
        assert _launch_model(cmd) == model
    (cmd,) = _dry_run("hpt_qwen7b.sh", {"MODEL": "Qwen/Qwen2.5-Math-7B", "ROPE_MODEL": "/elsewhere/q"})
    assert _launch_model(cmd) == "/elsewhere/q"
    (cmd,) = _dry_run("hpt_qwen7b.sh", {"MODEL": "Qwen/Qwen2.5-Math-7B", "PATCH_ROPE": "0"})
    assert _launch_model(cmd) == "Qwen/Qwen2.5-Math-7B"


def test_override_config_cannot_set_rope_theta():
    """Why scripts patch config.json: verl's override_config only setattr's rope_theta, which the
    transformers>=5 rotary embedding ignores (it reads rope_parameters). If this test fails, the
    override route works again and `+actor_rollout_ref.model.override_config.rope_theta=40000`
    (plus the vLLM hf_overrides) could replace the patched copy."""
    from transformers import Qwen2Config
    from verl.utils.model import update_model_config

    cfg = Qwen2Config(rope_theta=10000.0, max_position_embeddings=4096)
    if not isinstance(getattr(cfg, "rope_parameters", None), dict):
        pytest.skip("transformers < 5: rope_theta is a plain attribute, override_config would work")
    update_model_config(cfg, {"rope_theta": 40000.0})
    assert cfg.rope_parameters["rope_theta"] == 10000.0


# ------------------------------------------------------------------ scripts

SCRIPTS = sorted((REPO / "scripts" / "train").glob("*.sh")) + sorted((REPO / "scripts" / "eval").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_script_syntax(script):
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _dry_run(script: str, env: dict | None = None, args: tuple = ()) -> list[list[str]]:
    full_env = {**os.environ, "DRY_RUN": "1", "MODEL_DIR": "/models", "CKPT_DIR": "/ckpt", "DATA_DIR": "/data",
                **(env or {})}
    for k in ("NNODES", "GPUS_PER_NODE", "MODEL", "TRAIN", "VAL", "VAL_DIR", "EXP_NAME", "PATCH_ROPE"):
        if k not in (env or {}):
            full_env.pop(k, None)
    res = subprocess.run(["bash", str(REPO / "scripts" / "train" / script), *args], capture_output=True,
                         text=True, env=full_env, cwd="/")
    assert res.returncode == 0, res.stderr
    return [shlex.split(line) for line in res.stdout.splitlines() if "recipe.hpt.main_hpt" in line]


# script, env, exp selection, experiment name, model path
LAUNCHES = [
    ("hpt_qwen7b.sh", {}, "hpt_qwen7b", "hpt_qwen2.5-math-7b", "/models/Qwen2.5-Math-7B-rope40k"),
    ("hpt_qwen1_5b.sh", {}, "hpt_qwen1_5b", "hpt_qwen2.5-math-1.5b", "/models/Qwen2.5-Math-1.5B-rope40k"),
    ("hpt_llama8b.sh", {}, "hpt_llama8b", "hpt_llama-3.1-8b", "/models/Llama-3.1-8B"),
    ("hpt_paper_eq.sh", {}, "[hpt_qwen7b,hpt_paper_eq]", "hpt_paper_eq_qwen2.5-math-7b",
     "/models/Qwen2.5-Math-7B-rope40k"),
    ("hpt_paper_eq.sh", {"MODEL_NAME": "Llama-3.1-8B"}, "[hpt_llama8b,hpt_paper_eq]", "hpt_paper_eq_llama-3.1-8b",
     "/models/Llama-3.1-8B"),
    ("grpo.sh", {}, "baseline_grpo", "grpo_qwen2.5-math-7b", "/models/Qwen2.5-Math-7B-rope40k"),
    ("grpo.sh", {"MODEL_NAME": "Qwen2.5-Math-1.5B"}, "baseline_grpo", "grpo_qwen2.5-math-1.5b",
     "/models/Qwen2.5-Math-1.5B-rope40k"),
    ("grpo.sh", {"MODEL_NAME": "Llama-3.1-8B"}, "[baseline_grpo,llama_zero_template]", "grpo_llama-3.1-8b",
     "/models/Llama-3.1-8B"),
    ("sft.sh", {}, "baseline_sft", "sft_qwen2.5-math-7b", "/models/Qwen2.5-Math-7B-rope40k"),
    ("luffy.sh", {}, "baseline_luffy", "luffy_qwen2.5-math-7b", "/models/Qwen2.5-Math-7B-rope40k"),
    ("srft.sh", {}, "baseline_srft", "srft_qwen2.5-math-7b", "/models/Qwen2.5-Math-7B-rope40k"),
    ("table5_off_on.sh", {}, "table5_off_on", "table5_off_on_qwen2.5-math-1.5b", "/models/Qwen2.5-Math-1.5B-rope40k"),
    ("table5_mix_on.sh", {}, "table5_mix_on", "table5_mix_on_qwen2.5-math-1.5b", "/models/Qwen2.5-Math-1.5B-rope40k"),
    ("table6_gamma1_8.sh", {}, "table6_gamma1_8", "table6_gamma1_8_qwen2.5-math-1.5b",
     "/models/Qwen2.5-Math-1.5B-rope40k"),
    ("table6_gamma2_8.sh", {}, "table6_gamma2_8", "table6_gamma2_8_qwen2.5-math-1.5b",
     "/models/Qwen2.5-Math-1.5B-rope40k"),
]


def _overrides(cmd: list[str]) -> list[str]:
    return cmd[cmd.index("recipe.hpt.main_hpt") + 1:]


@pytest.mark.parametrize("script,env,selection,exp_name,model", LAUNCHES,
                         ids=[f"{s}-{e.get('MODEL_NAME', 'default')}" for s, e, *_ in LAUNCHES])
def test_launch_script_command_composes(script, env, selection, exp_name, model):
    (cmd,) = _dry_run(script, env, ("trainer.logger=[console]",))
    ov = _overrides(cmd)
    assert ov[0] == f"+exp={selection}"
    cfg = compose_exp(selection, ov[1:])
    assert cfg.trainer.experiment_name == exp_name
    assert cfg.trainer.default_local_dir == f"/ckpt/{exp_name}"
    assert cfg.actor_rollout_ref.model.path == model
    assert cfg.trainer.nnodes == 1 and cfg.trainer.n_gpus_per_node == 8
    assert cfg.trainer.logger == ["console"]  # "$@" reaches Hydra
    zero = "llama" in exp_name
    assert cfg.data.train_files == ("/data/openr1_zero.parquet" if zero else "/data/openr1.parquet")
    bench = "/data/benchmarks_zero" if zero else "/data/benchmarks"
    assert list(cfg.data.val_files) == [f"{bench}/{b}.parquet" for b in ("aime24", "amc23", "math500")]
    assert (cfg.actor_rollout_ref.model.custom_chat_template == _zero_template()) == zero


def test_launch_script_env_overrides():
    (cmd,) = _dry_run("hpt_qwen7b.sh", {"NNODES": "2", "GPUS_PER_NODE": "4", "MODEL": "/m/q7",
                                         "TRAIN": "/t.parquet", "VAL": "[/v.parquet]", "EXP_NAME": "x"})
    cfg = compose_exp("hpt_qwen7b", _overrides(cmd)[1:])
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (2, 4)
    assert cfg.actor_rollout_ref.model.path == "/m/q7-rope40k"
    assert cfg.data.train_files == "/t.parquet" and list(cfg.data.val_files) == ["/v.parquet"]
    (cmd,) = _dry_run("hpt_qwen7b.sh", {"MODEL": "/m/q7", "PATCH_ROPE": "0"})
    assert "actor_rollout_ref.model.path=/m/q7" in cmd


def test_sft_then_grpo_chains_two_stages():
    stage1, stage2 = _dry_run("run_sft_then_grpo.sh", {"STAGE2_ARGS": "trainer.total_training_steps=7"})
    assert _overrides(stage1)[0] == "+exp=baseline_sft"
    ov2 = _overrides(stage2)
    assert ov2[0] == "+exp=baseline_sft_grpo_stage2"
    cfg = compose_exp("baseline_sft_grpo_stage2", ov2[1:])
    assert cfg.actor_rollout_ref.model.path == "/ckpt/sft_qwen2.5-math-7b/global_step_LATEST/actor/huggingface"
    assert cfg.data.train_files == "/data/openr1_complement.parquet"
    assert cfg.trainer.experiment_name == "sft_grpo_qwen2.5-math-7b"
    assert cfg.trainer.total_training_steps == 7
    assert cfg.hpt.gate.strategy == "never"
    # A given SFT model skips stage 1.
    (only,) = _dry_run("run_sft_then_grpo.sh", {"SFT_MODEL": "/sft/hf"})
    assert "actor_rollout_ref.model.path=/sft/hf" in only


def test_eval_all_builds_tables_from_summaries(tmp_path):
    results = tmp_path / "results"
    runs = {"hpt_qwen2.5-math-7b": 0.5, "srft_qwen2.5-math-7b": 0.4, "sft_grpo_qwen2.5-math-7b": 0.45,
            "hpt_qwen2.5-math-1.5b": 0.41, "table6_gamma1_8_qwen2.5-math-1.5b": 0.38}
    for exp, avg in runs.items():
        (results / exp).mkdir(parents=True)
        bench = {k: {"avg": avg, "n": 1, "num_questions": 5, "pass@k": {"1": avg}}
                 for k in ("aime24", "aime25", "amc23", "math500", "minerva", "olympiad")}
        (results / exp / "summary.json").write_text(json.dumps(
            {"model": exp, "backend": "hf", "settings": {}, "benchmarks": bench}))
    env = {**os.environ, "RESULTS_DIR": str(results), "CKPT_DIR": str(tmp_path / "none"), "RUNS": "",
           "TABLE_ARGS": "--no-plot", "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(REPO / "scripts" / "eval" / "eval_all.sh")], capture_output=True, text=True,
                         env=env, cwd="/")
    assert res.returncode == 0, res.stdout + res.stderr
    t2 = (results / "tables" / "table2" / "table2.md").read_text()
    for label in ("HPT (ours)", "SRFT (re-implemented) (ours)", "SFT -> GRPO (ours)"):
        assert label in t2, label
    assert "| **HPT (ours)** | 50.0 |" in t2
    t6 = (results / "tables" / "table6" / "table6.md").read_text()
    assert "gamma=0 (ours)" in t6 and "gamma=1/8 (ours)" in t6 and "gamma=2/8 (ours)" not in t6
    t5 = (results / "tables" / "table5" / "table5.md").read_text()
    assert "SFT/ON (HPT) (ours)" in t5
    assert not (results / "tables" / "table3_llama").exists()  # no LLaMA run evaluated


def test_eval_all_dry_run_evaluates_checkpoints(tmp_path):
    ckpt = tmp_path / "ckpt" / "hpt_llama-3.1-8b"
    hf = ckpt / "global_step_500" / "actor" / "huggingface"
    hf.mkdir(parents=True)
    (hf / "model.safetensors").write_bytes(b"")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("500")
    env = {**os.environ, "RESULTS_DIR": str(tmp_path / "res"), "CKPT_DIR": str(tmp_path / "ckpt"),
           "RUNS": "hpt_llama-3.1-8b grpo_qwen2.5-math-7b", "DRY_RUN": "1"}
    res = subprocess.run(["bash", str(REPO / "scripts" / "eval" / "eval_all.sh")], capture_output=True, text=True,
                         env=env, cwd="/")
    assert res.returncode == 0, res.stderr
    evals = [shlex.split(line) for line in res.stdout.splitlines() if "scripts/eval/evaluate.py" in line]
    assert len(evals) == 1
    cmd = evals[0]
    assert cmd[cmd.index("--model") + 1] == str(hf)
    assert cmd[cmd.index("--prompt-style") + 1] == "zero"
    assert "grpo_qwen2.5-math-7b: no checkpoint" in res.stdout


def test_gpu_smoke_settings(composed):
    """scripts/gpu_smoke.sh's run: verl's vLLM rollout on one GPU, rollout log-probs for the mismatch
    metric, token-level truncated IS on, the gate able to fire both ways."""
    cfg = composed("gpu_smoke")
    want = {"actor_rollout_ref.rollout.name": "vllm", "actor_rollout_ref.rollout.calculate_log_probs": True,
            "actor_rollout_ref.rollout.tensor_model_parallel_size": 1, "trainer.n_gpus_per_node": 1,
            "algorithm.rollout_correction.rollout_is": "token", "algorithm.rollout_correction.bypass_mode": False,
            "hpt.gate.strategy": "switch", "hpt.gate.gamma": 0.5, "actor_rollout_ref.model.use_remove_padding": True}
    for key, value in want.items():
        assert _select(cfg, key) == value, key


def test_paper_runs_warn_that_the_release_loss_depends_on_packing_and_the_default_does_not():
    """hpt_qwen7b reproduces the release exactly (upge=hpt_release, dynamic bsz): main_hpt warns that its
    SFT arm and entropy bonus are per-micro-batch means; the default preset (upge=hpt) gets no warning."""
    from verl_ext.checks.settings import settings_warnings

    warnings = settings_warnings(compose_exp("hpt_qwen7b"))
    assert len(warnings) == 1 and "hpt.loss.demo" in warnings[0] and "upge=hpt" in warnings[0]
    default = compose_exp("hpt_qwen7b", ["upge=hpt"])
    assert default.actor_rollout_ref.actor.use_dynamic_bsz and settings_warnings(default) == []


def test_trapo_reads_demonstrations_although_its_gate_never_routes_to_sft():
    """The start-up data check checks demonstrations when a stage continues a demonstration prefix."""
    trapo = HPTConfig.from_config(compose_exp("trapo"))
    assert trapo.gate.strategy == "never" and not trapo.gate.can_choose_sft() and trapo.needs_demonstrations
    grpo = HPTConfig.from_config(compose_exp("baseline_grpo"))
    assert not grpo.needs_demonstrations


def test_exp_files_are_packaged_and_load_from_any_directory(tmp_path):
    """``+exp=<name>`` resolves inside the installed recipe package (recipe/hpt/config/exp), not
    through a path relative to the launch directory: Hydra composes it from an empty temp dir."""
    import subprocess
    import sys

    from importlib.resources import files

    packaged = files("recipe.hpt").joinpath("config/exp/cpu_tiny.yaml")
    assert packaged.is_file()
    out = subprocess.run([sys.executable, "-m", "recipe.hpt.main_hpt", "+exp=cpu_tiny", "--cfg", "job",
                          "--package", "trainer"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "device: cpu" in out.stdout  # cpu_tiny's trainer.device, composed from the packaged file
    missing = subprocess.run([sys.executable, "-m", "recipe.hpt.main_hpt", "+exp=no_such_exp", "--cfg", "job"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "no_such_exp" in missing.stderr
