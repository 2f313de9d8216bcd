"""Small helpers shared by several test modules."""

from __future__ import annotations

import functools
import glob
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESET_DIR = os.path.join(REPO, "recipe", "hpt", "config", "upge")
PRESETS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(PRESET_DIR, "*.yaml")))


@functools.lru_cache(maxsize=None)
def _default_hpt_node() -> str:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    cwd = os.getcwd()
    os.chdir(REPO)  # relative data paths in the exp files are the repo's
    try:
        with initialize_config_dir(config_dir=str(REPO / "recipe" / "hpt" / "config"), version_base=None):
            return OmegaConf.to_yaml(compose(config_name="hpt_trainer").hpt, resolve=True)
    finally:
        os.chdir(cwd)
        GlobalHydra.instance().clear()


def default_hpt_node(**overrides) -> dict:
    """The `hpt` node of the default composed config (hpt_trainer.yaml, where its defaults live, and
    its upge preset) as a fresh plain dict, with ``overrides`` (top-level keys) replacing its values.
    For tests that build a small run config by hand: HPTConfig requires every key."""
    import yaml

    node = yaml.safe_load(_default_hpt_node())
    node.update(overrides)
    return node


def compose_trainer_config(overrides=()):
    """The trainer config composed as ``python -m recipe.hpt.main_hpt`` composes it (config dir
    recipe/hpt/config, config hpt_trainer, launched from the repo root)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with initialize_config_dir(config_dir=str(REPO / "recipe/hpt/config"), version_base=None):
            return compose(config_name="hpt_trainer", overrides=list(overrides))
    finally:
        os.chdir(cwd)
        GlobalHydra.instance().clear()
