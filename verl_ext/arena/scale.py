"""The arena at GPU scale, composed only: every launch of ``recipe.hpt.main_hpt`` that the CPU
arena's methods become on a cluster (configs/arena/scale_<model>.yaml), and a dry-run check of each.

Nothing is launched here: the commands are printed for the cluster's scheduler, and
:func:`validate_overrides` composes each one as the trainer would, so a broken method is found
before it costs GPU hours.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import yaml

from verl_ext.arena import REPO
from verl_ext.arena.methods import lr_tag, method_overrides, slug, stage_steps, stages_of


def _expand(value: str) -> str:
    """``${VAR}`` from the environment, else the defaults below (the scale files' paths)."""
    defaults = {"MODEL_DIR": str(Path.home() / "models"), "DATA_DIR": str(REPO / "data"),
                "CKPT_DIR": str(REPO / "checkpoints")}
    return re.sub(r"\$\{(\w+)\}", lambda m: os.environ.get(m.group(1), defaults.get(m.group(1), m.group(0))), value)


def scale_commands(scale_file: Path, common, methods, names, lrs=None, seeds=None, steps=None,
                   selected: dict | None = None) -> list[dict]:
    """Every launch of the GPU arena: {"method", "lr", "seed", "stage", "overrides", "command"}.
    Without ``selected`` lrs, every grid point of every seed; chains use the grid of their sources
    pairwise (stage i at lr of the i-th source's grid point) unless ``selected`` names them."""
    sc = yaml.safe_load(scale_file.read_text())
    lrs = lrs or [float(x) for x in sc["lrs"]]
    seeds = seeds if seeds is not None else list(sc["seeds"])
    steps = steps or int(sc["steps"])
    val = "[" + ",".join(f"{_expand(sc['val_dir'])}/{b}.parquet" for b in sc["val_files"]) + "]"
    base = [f"actor_rollout_ref.model.path={_expand(sc['model'])}", f"data.train_files={_expand(sc['train_files'])}",
            f"data.val_files={val}", f"trainer.nnodes={sc['nnodes']}", f"trainer.n_gpus_per_node={sc['gpus_per_node']}",
            *sc.get("overrides", [])]
    out = []
    for name in names:
        m = methods[name]
        if m.get("train", True) is False:
            continue
        stages = stages_of(methods, name)
        fr = stage_steps(steps, [f for _, f in stages])
        grid = [selected[name]] if selected and name in selected else lrs
        for lr in grid:
            for seed in seeds:
                tag = f"arena_{sc['name']}_{slug(name)}_lr{lr_tag(lr)}_s{seed}"
                model = None
                for i, ((st, _), n_steps) in enumerate(zip(stages, fr)):
                    st_lr = lr[i] if isinstance(lr, (list, tuple)) else lr
                    exp_name = tag + (f"_stage{i}" if len(stages) > 1 else "")
                    ckpt = f"{_expand(sc['ckpt_dir'])}/{exp_name}"
                    ov = [*base, *method_overrides(common, methods, st, "gpu"),
                          f"actor_rollout_ref.actor.optim.lr={st_lr:g}", f"trainer.total_training_steps={n_steps}",
                          f"data.seed={seed}", f"actor_rollout_ref.rollout.seed={seed}",
                          f"trainer.experiment_name={exp_name}", f"trainer.default_local_dir={ckpt}"]
                    if model is not None:
                        ov = [o for o in ov if not o.startswith("actor_rollout_ref.model.path=")]
                        ov.insert(0, f"actor_rollout_ref.model.path={model}")
                    cmd = ["python", "-m", "recipe.hpt.main_hpt", f"+exp={sc['exp']}", *ov]
                    out.append({"method": name, "lr": lr, "seed": seed, "stage": i,
                                "overrides": [f"+exp={sc['exp']}", *ov],
                                "command": shlex.join(cmd)})
                    model = f"{ckpt}/global_step_{n_steps}/actor/huggingface"
    return out


def validate_overrides(overrides: list[str]):
    """Compose as main_hpt does (Hydra compose API, config hpt_trainer) and run the project's gate and
    UPGE validators and verl's config validation (as tests/unit/recipe/test_configs.py); returns the composed
    config. Raises on the first check that fails."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from verl_ext.hpt.gate import GateConfig
    from verl_ext.loss.config import load_upge_config

    GlobalHydra.instance().clear()
    old = os.getcwd()
    os.chdir(REPO)
    try:
        with initialize_config_dir(config_dir=str(REPO / "recipe" / "hpt" / "config"), version_base=None):
            cfg = compose(config_name="hpt_trainer", overrides=overrides)
    finally:
        os.chdir(old)
        GlobalHydra.instance().clear()
    gate = GateConfig.from_mapping(OmegaConf.to_container(cfg.hpt.gate, resolve=True))
    loss = load_upge_config(cfg.hpt.loss)
    if gate.strategy != "always" and loss.rollout is None:
        raise ValueError(f"gate {gate.strategy} keeps rollouts but hpt.loss.rollout is null: give the method "
                         f"a upge= preset with a rollout arm, or hpt.gate.strategy=always")
    if gate.strategy != "never":
        for arm in gate.demo_arms:
            if loss.arm(arm) is None:
                raise ValueError(f"gate {gate.strategy} builds {arm} rows but hpt.loss.{arm} is null: give the "
                                 f"method a upge= preset with a {arm} arm, or hpt.gate.strategy=never")
    from verl.experimental.reward_loop import migrate_legacy_reward_impl
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    c = migrate_legacy_reward_impl(OmegaConf.create(OmegaConf.to_container(cfg)))
    OmegaConf.resolve(c)
    omega_conf_to_dataclass(c.actor_rollout_ref.actor)
    omega_conf_to_dataclass(c.actor_rollout_ref.rollout)
    omega_conf_to_dataclass(c.algorithm)
    validate_config(config=c, use_reference_policy=need_reference_policy(c), use_critic=need_critic(c))
    return cfg
