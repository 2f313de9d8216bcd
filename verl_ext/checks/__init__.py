"""Every start-up check of an HPT run, in one place, each run once before anything is paid for.

Before Ray starts (:func:`startup_checks`, called by ``recipe.hpt.main_hpt.run_hpt``):

- the ``hpt.*`` settings (:class:`verl_ext.hpt.config.HPTConfig`: errors name the dotted key);
- verl settings HPT cannot honour (:mod:`verl_ext.checks.settings`) and the warnings it prints;
- the environment against the config (:mod:`verl_ext.checks.environment`: flash-attn).

In the task runner, with the run's tokenizer, before the datasets, the trainer or any worker exist
(:func:`verl_ext.checks.data.validate_data`): every data row against the contract
(:mod:`verl_ext.data.contract` applied by :mod:`verl_ext.checks.rows`), and the reward function on
every ``data_source`` and on a sample of demonstrations (:mod:`verl_ext.checks.reward`).
"""

from __future__ import annotations


def startup_checks(config):
    """Run the checks that need only the config; returns the parsed ``HPTConfig``. Raises
    ValueError (with every problem, each with its fix) instead of starting a run that cannot work."""
    from verl_ext.checks.environment import check_attention_implementation
    from verl_ext.checks.settings import settings_warnings, unsupported_settings
    from verl_ext.hpt.config import HPTConfig

    hpt = HPTConfig.from_config(config)
    check_attention_implementation(config)
    unsupported = unsupported_settings(config)
    if unsupported:
        raise ValueError("HPT cannot run this configuration:\n- " + "\n- ".join(unsupported))
    for warning in settings_warnings(config):
        print(f"WARNING (hpt): {warning}")
    return hpt
