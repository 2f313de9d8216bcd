"""The ``hpt`` config node, typed: :class:`HPTConfig`, built from the composed run config.

:meth:`HPTConfig.from_config` runs every start-up check that needs only the config (``main_hpt.run_hpt``
calls it on the driver, before Ray starts; the data check and the trainer build the same object from
the same config): ``hpt.gate`` (strategy, γ ∈ [0, 1], soft table, ...: :class:`GateConfig`),
``actor_rollout_ref.rollout.n >= 2`` for a pass-rate gate (switch/soft) and n+1 rows in a soft table,
the loss preset (``hpt.loss``, :func:`verl_ext.loss.load_upge_config`) has the arms the gate can route
rows to, ``hpt.data.*`` (:class:`DataOptions`), ``hpt.demo_field``, ``hpt.demo_choice``, ``hpt.max_consecutive_skips``,
``hpt.skip_grad_norm_above``, ``hpt.stages`` (:func:`verl_ext.hpt.staging.stages.load_stages`). Every error
names the dotted key. Unknown preset names (``upge=foo``, ``+exp=foo``) are refused by Hydra itself,
listing the available ones.

One home per default: ``recipe/hpt/config/hpt_trainer.yaml``. It is what users read and override and
what every run composes, so the dataclasses here have no defaults: a key missing from the node is an
error naming it, never a second, Python-side default that could drift from the YAML. (verl keeps its
defaults in both its YAML and its dataclasses and tests that they agree; with one home there is nothing
to keep in step.) The exception is ``hpt.gate``, see :class:`GateConfig`. Code that needs a default
without a run config (the data converter's demonstration field) reads the YAML:
:func:`verl_ext.recipe_defaults.yaml_defaults`.

Typed as verl types its own nodes (frozen dataclasses built from the OmegaConf node, like
``verl/workers/config``), but built by hand rather than with ``verl.utils.config.omega_conf_to_dataclass``:
that reports a bad value in OmegaConf's words instead of naming the ``hpt.`` key and what it allows, and
the gate's values (fractions such as ``2/8``, tables as tuples) need parsing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional


from verl_ext.hpt.gate import GateConfig
from verl_ext.hpt.staging.stages import Stage, load_stages
from verl_ext.loss.config import UPGELossConfig, load_upge_config

ON_BAD_ROW = ("error", "skip")
ON_LONG_DEMO = ("truncate", "skip", "error")
ON_MISSING_DEMO = ("error", "skip", "rl")
PASS_RATE_STRATEGIES = ("switch", "soft")



class HPTConfigError(ValueError):
    """A bad HPT setting found at start-up; the message names the key."""


def to_plain(node) -> Any:
    """An OmegaConf node as plain Python containers (resolved); anything else as it is."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(node, (DictConfig, ListConfig)):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return node


def _keys(node: Any, cls: type, path: str) -> dict:
    """``node`` as a dict with exactly the fields of ``cls`` (errors name ``path.<key>``)."""
    node = to_plain(node)
    if not isinstance(node, dict):
        raise HPTConfigError(f"{path} must be a mapping, got {node!r}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(node) - set(known))
    if unknown:
        raise HPTConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    missing = [k for k in known if k not in node]
    if missing:
        raise HPTConfigError(
            f"{path}.{missing[0]} is not set (missing: {missing}). Its default lives in "
            f"recipe/hpt/config/hpt_trainer.yaml: compose the run config from it (python -m recipe.hpt.main_hpt).")
    return node


def choice_seed(config) -> int:
    """The seed of ``hpt.demo_choice=uniform``'s draws: the run's ``data.seed`` (verl's, which also seeds
    the data order), 0 when null, so a run without one still draws reproducibly."""
    data = config.get("data", None) or {}
    seed = data.get("seed", None)
    if seed is None:
        return 0
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HPTConfigError(f"data.seed={seed!r} must be an integer or null (it seeds hpt.demo_choice=uniform)")
    return int(seed)


@dataclass(frozen=True)
class DataOptions:
    """``hpt.data``: what the start-up data check does (``hpt_trainer.yaml`` says what each key does
    and holds the defaults)."""

    validate: bool
    on_bad_row: str  # error | skip
    on_long_demo: str  # truncate | skip | error
    on_missing_demo: Optional[str]  # error | skip | rl; None: as on_bad_row
    filtered_dir: Optional[str]  # None: <trainer.default_local_dir>/hpt_data
    max_errors_shown: int
    demo_check_rows: int  # 0: no demonstration reward check
    demo_check_min_rate: float

    @property
    def missing_demo_policy(self) -> str:
        return self.on_missing_demo or self.on_bad_row

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None, path: str = "hpt.data") -> "DataOptions":
        opts = cls(**_keys(node, cls, path))
        if not isinstance(opts.validate, bool):
            raise HPTConfigError(f"{path}.validate={opts.validate!r} must be true or false")
        if opts.on_bad_row not in ON_BAD_ROW:
            raise HPTConfigError(f"{path}.on_bad_row={opts.on_bad_row!r} is not one of {list(ON_BAD_ROW)}")
        if opts.on_long_demo not in ON_LONG_DEMO:
            raise HPTConfigError(f"{path}.on_long_demo={opts.on_long_demo!r} is not one of {list(ON_LONG_DEMO)}")
        if opts.on_missing_demo is not None and opts.on_missing_demo not in ON_MISSING_DEMO:
            raise HPTConfigError(f"{path}.on_missing_demo={opts.on_missing_demo!r} is not one of "
                                 f"{list(ON_MISSING_DEMO)} (or null: as {path}.on_bad_row)")
        if isinstance(opts.max_errors_shown, bool) or not isinstance(opts.max_errors_shown, int) \
                or opts.max_errors_shown < 1:
            raise HPTConfigError(f"{path}.max_errors_shown={opts.max_errors_shown!r} must be an integer >= 1")
        if isinstance(opts.demo_check_rows, bool) or not isinstance(opts.demo_check_rows, int) \
                or opts.demo_check_rows < 0:
            raise HPTConfigError(f"{path}.demo_check_rows={opts.demo_check_rows!r} must be an integer >= 0 "
                                 f"(0: no demonstration reward check)")
        rate = opts.demo_check_min_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (0.0 <= float(rate) <= 1.0):
            raise HPTConfigError(f"{path}.demo_check_min_rate={rate!r} must be a number in [0, 1] "
                                 f"(0: report the rate, never stop)")
        if opts.filtered_dir is not None and not isinstance(opts.filtered_dir, str):
            raise HPTConfigError(f"{path}.filtered_dir={opts.filtered_dir!r} must be a path or null")
        return opts


@dataclass(frozen=True)
class HPTConfig:
    """The ``hpt`` node as the driver, the data check and the trainer use it (see the module docstring)."""

    demo_field: str  # the extra_info key that holds a row's demonstration (or a list of them)
    demo_choice: str  # which of several listed demonstrations train: uniform | shortest | first | all
    skip_grad_norm_above: Optional[float]  # None: no optimizer step is skipped for its grad norm
    max_consecutive_skips: Optional[int]  # None: never stop (0 or null in the config)
    fuse_old_log_prob: bool  # old log-probs from the update's forward (verl_ext/loss/fused_old_log_prob.py)
    data: DataOptions
    gate: GateConfig
    loss: UPGELossConfig
    stages: Optional[tuple[Stage, ...]]  # None: all n rollouts at once (verl_ext/hpt/staging/stages.py)

    @property
    def needs_demonstrations(self) -> bool:
        """Whether training reads demonstrations: the gate can route a question to SFT, or a stage
        continues a demonstration prefix (the start-up data check then checks them)."""
        return self.gate.can_choose_sft() or self.stages_train_demonstrations

    @property
    def stages_train_demonstrations(self) -> bool:
        """Whether a stage sends questions to SFT (``stop_to_sft``) or continues a demonstration prefix:
        either trains demonstration tokens, whatever the gate says."""
        return any(s.action == "stop_to_sft" or s.prefix is not None for s in self.stages or ())

    @classmethod
    def from_config(cls, config) -> "HPTConfig":
        """The ``hpt`` node of a composed run config, checked against itself and against
        ``actor_rollout_ref.rollout.n``. Raises :class:`HPTConfigError` (or the gate/loss config
        errors, also ``ValueError``s naming their key)."""
        hpt = config.get("hpt", None)
        if hpt is None:
            raise HPTConfigError("the config has no `hpt` node (compose it from recipe/hpt/config/hpt_trainer.yaml)")
        node = _keys(hpt, cls, "hpt")
        gate = GateConfig.from_mapping(node["gate"] or {})

        n = int(config.actor_rollout_ref.rollout.n)
        if gate.strategy in PASS_RATE_STRATEGIES and n < 2:
            raise HPTConfigError(
                f"actor_rollout_ref.rollout.n={n} with hpt.gate.strategy={gate.strategy}: a pass-rate gate needs at "
                f"least 2 rollouts per question (a pass rate over one rollout is 0 or 1, and GRPO's advantage of a "
                f"single rollout is 0). Use n >= 2, or strategy always/never/fixed.")
        if gate.strategy == "soft" and gate.soft_table is not None and len(gate.soft_table) != n + 1:
            raise HPTConfigError(
                f"hpt.gate.soft_table has {len(gate.soft_table)} rows but actor_rollout_ref.rollout.n={n} needs "
                f"n+1 = {n + 1} (one [alpha, beta] row per number of correct rollouts 0..n)")

        demo_field = node["demo_field"]
        if not isinstance(demo_field, str) or not demo_field:
            raise HPTConfigError(f"hpt.demo_field={demo_field!r} must be a non-empty string")
        from verl_ext.hpt.demonstrations import DEMO_CHOICES  # the rule's home (imports torch: not at module load)

        demo_choice = node["demo_choice"]
        if demo_choice not in DEMO_CHOICES:
            raise HPTConfigError(f"hpt.demo_choice={demo_choice!r} is not one of {list(DEMO_CHOICES)} (which of a "
                                 f"question's listed demonstrations train; see hpt_trainer.yaml)")

        threshold = node["skip_grad_norm_above"]
        if threshold is not None:
            try:
                t = float(threshold)
            except (TypeError, ValueError):
                t = float("nan")
            if not (math.isfinite(t) and t > 0):
                raise HPTConfigError(f"hpt.skip_grad_norm_above={threshold!r} must be a positive number or null")
            threshold = t
        skips = node["max_consecutive_skips"]
        if skips is not None and (isinstance(skips, bool) or not isinstance(skips, int) or skips < 0):
            raise HPTConfigError(f"hpt.max_consecutive_skips={skips!r} must be an integer >= 0 (0 or null: never stop)")

        fuse = node["fuse_old_log_prob"]
        if not isinstance(fuse, bool):
            raise HPTConfigError(f"hpt.fuse_old_log_prob={fuse!r} must be true or false")

        data = DataOptions.from_mapping(node["data"])
        if data.missing_demo_policy == "rl" and not gate.can_choose_rl():
            raise HPTConfigError(
                f"hpt.data.on_missing_demo=rl keeps questions without a demonstration for RL, but "
                f"hpt.gate.strategy={gate.strategy} never trains on rollouts: use on_missing_demo=skip|error, or a "
                f"gate that can choose RL (switch, soft, fixed with fixed_alpha > 0)")

        if node["loss"] is None:
            raise HPTConfigError("hpt.loss is null: pick a loss preset (upge=<preset>, recipe/hpt/config/upge/)")
        loss = load_upge_config(node["loss"])
        if gate.can_choose_sft():
            for arm in gate.demo_arms:  # the loss arms demonstration rows go to
                if getattr(loss, arm, None) is None:
                    raise HPTConfigError(
                        f"hpt.gate.strategy={gate.strategy} can route questions to SFT but the loss preset has no "
                        f"{arm} arm (hpt.loss.{arm}: null, e.g. upge=grpo): pick a preset with a {arm} arm or "
                        f"hpt.gate.strategy=never")
        if gate.can_choose_rl() and loss.rollout is None:
            raise HPTConfigError(
                f"hpt.gate.strategy={gate.strategy} keeps rollouts for RL but the loss preset has no rollout arm "
                f"(hpt.loss.rollout: null, e.g. upge=sft): pick a preset with a rollout arm or "
                f"hpt.gate.strategy=always")
        stages = load_stages(to_plain(node["stages"]), n)
        if stages is not None and gate.strategy == "soft" and gate.soft_table is not None:
            raise HPTConfigError(
                "hpt.stages with hpt.gate.soft_table: a question stopped early has fewer than n rollouts, which a "
                "table of n+1 rows cannot index; use hpt.gate.soft_fn (a function of k and n) instead")
        if stages is not None and not gate.needs_rollouts:
            raise HPTConfigError(
                f"hpt.stages is set but hpt.gate.strategy={gate.strategy} draws no rollouts during training "
                f"(the SFT-only baseline): set hpt.stages=null")
        out = cls(demo_field=demo_field, demo_choice=demo_choice, skip_grad_norm_above=threshold,
                  max_consecutive_skips=skips or None, fuse_old_log_prob=fuse,
                  data=data, gate=gate, loss=loss, stages=stages)
        if out.stages_train_demonstrations and loss.demo is None:
            raise HPTConfigError(
                "hpt.stages has a stop_to_sft or continue_with_prefix stage, whose demonstration tokens the loss's "
                "demo arm trains, but hpt.loss.demo is null (e.g. upge=grpo): pick a preset with a demo arm")
        return out
