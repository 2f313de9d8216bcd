"""The ``hpt.*`` defaults as written in the recipe's trainer YAML, for code without a run config.

``recipe/hpt/config/hpt_trainer.yaml`` is the one home of every ``hpt.*`` default (a run composes it;
:class:`verl_ext.hpt.config.HPTConfig` has no Python-side defaults). A tool that works without a run
config, such as the data converter choosing the demonstration field, reads the same file here. Kept
outside ``verl_ext.hpt`` and ``verl_ext.data`` so that both can read it without one importing the other.
"""

from __future__ import annotations

TRAINER_YAML = "config/hpt_trainer.yaml"  # in the recipe.hpt package


def yaml_defaults() -> dict:
    """The ``hpt`` node of ``recipe/hpt/config/hpt_trainer.yaml`` as written. ``hpt.loss`` is not in
    it (the ``upge`` preset group fills it when Hydra composes the config)."""
    from importlib.resources import files

    import yaml

    return yaml.safe_load(files("recipe.hpt").joinpath(TRAINER_YAML).read_text())["hpt"]
