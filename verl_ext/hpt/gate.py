"""The verification-accuracy gate of HPT (paper Eq. 8-10), as pure array functions.

For question q with n verified rollouts v_i ∈ {0,1}:

    P(q) = (1/n) Σ_i v_i                       (Eq. 8, pass rate)
    α(q) = f(P), β(q) = g(P)                   (Eq. 9)
    L(q) = α·L_RL(rollouts of q) + β·L_SFT(demonstration of q)   (Eq. 13)

Strategies (``hpt.gate.strategy``):

- ``switch``  α = 1[P > γ], β = 1[P ≤ γ]  (Eq. 10; what the paper and its release ran)
- ``soft``    (α, β) read from ``soft_table`` indexed by the number of correct rollouts k = nP
              (n+1 rows), or from ``soft_fn``, a named function of (k, n) with parameters
              ``soft_params`` (:mod:`verl_ext.hpt.weight_functions`: ``linear``: α = P, β = 1 − P;
              ``rasft``: RASFT's demonstration and correct-rollout weights)
- ``fixed``   α = ``fixed_alpha``, β = ``fixed_beta`` for every question (a fixed SFT/RL mix)
- ``always``  α = 0, β = 1 (SFT only; the trainer then skips generation altogether)
- ``never``   α = 1, β = 0 (pure RL, e.g. GRPO through the same trainer)

A rollout counts as correct when its score is >= ``correct_threshold`` (the release counts
reward == 1 exactly, which is the same for a binary verifier).

``drop_all_correct`` (DYPO, arXiv 2604.08926): a question whose n rollouts are all correct leaves
the update (α = β = 0; counted as ``hpt/dropped_all_correct``), whatever the strategy says.

Which demonstration rows a question with β > 0 gets (``hpt.gate.demo_arms``, the merge builds
them; each row is trained by the ``hpt.loss`` arm of the same name):

- ``demo``      one row, ``hpt_row_kind`` = ``SFT_DEMO``; its uid follows ``placement`` (replace: own uid,
                add: the question's uid, joining the rollout group). HPT's SFT row; the LUFFY/SRFT
                presets train this row with their off-policy term (placement add).
- ``demo_off``  one row, ``hpt_row_kind`` = ``OFF_POLICY_DEMO``, always with the question's uid: it joins the
                rollout group, so verl's GRPO advantage is taken over rollouts ∪ demonstration.
- ``[demo, demo_off]``  both rows (Table 5's Mix/ON: SFT + off-policy RL on one demonstration).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from verl_ext.hpt.weight_functions import PARAMS as SOFT_FUNCTION_PARAMS
from verl_ext.hpt.weight_functions import resolve_params, soft_weights
from verl_ext.loss.config import DEMO_ARMS

STRATEGIES = ("switch", "soft", "fixed", "always", "never")
PLACEMENTS = ("replace", "add")
SOFT_FUNCTIONS = tuple(SOFT_FUNCTION_PARAMS)


class GateConfigError(ValueError):
    """A bad ``hpt.gate`` value; the message names the key."""


@dataclass(frozen=True)
class GateConfig:
    """``hpt.gate``: how each question is routed between the RL and SFT arms.

    placement: ``replace`` — the demonstration is a separate row with its own group (the
      release: a gated question's n rollouts are replaced by one SFT row when α = 0);
      ``add`` — the demonstration joins the question's rollout group as an off-policy sample
      (LUFFY/SRFT style: GRPO's group statistics then include it).
      ``placement`` applies to the ``demo`` row only.
    keep_gated_rollouts: keep the rollouts of a gated question (α forced to 1 for them) so a
      demonstration in the question's group has rollouts to be compared with (Table 5's OFF/ON and
      Mix/ON). Needs a demonstration row in the group: ``placement=add`` or ``demo_off`` in
      ``demo_arms``.
    demo_arms: the demonstration rows of a gated question, a non-empty subset of
      ``("demo", "demo_off")`` (module docstring); stored in that order. Default ``("demo",)``.

    The field defaults repeat ``hpt_trainer.yaml``'s ``hpt.gate`` block, verl-style, and
    tests/unit/hpt/test_config.py keeps the two equal: unlike the rest of the ``hpt`` node
    (:mod:`verl_ext.hpt.config`, whose only home is the YAML) the gate is also a plain value that the
    gate and merge functions' tests and benchmarks build directly (``GateConfig()``,
    ``GateConfig(strategy="soft", soft_fn="linear")``).
    """

    strategy: str = "switch"
    gamma: float = 0.0
    placement: str = "replace"
    keep_gated_rollouts: bool = False
    soft_table: Optional[tuple[tuple[float, float], ...]] = None
    soft_fn: Optional[str] = None
    fixed_alpha: float = 1.0
    fixed_beta: float = 1.0
    correct_threshold: float = 1.0
    demo_arms: tuple[str, ...] = ("demo",)
    soft_params: Optional[tuple[tuple[str, Any], ...]] = None  # soft_fn's parameters, as sorted (key, value) pairs
    drop_all_correct: bool = False

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None, path: str = "hpt.gate") -> "GateConfig":
        node = dict(node or {})
        known = {f.name for f in cls.__dataclass_fields__.values()}
        unknown = sorted(set(node) - known)
        if unknown:
            raise GateConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
        for key in ("gamma", "fixed_alpha", "fixed_beta", "correct_threshold"):
            if key in node:
                node[key] = _parse_number(f"{path}.{key}", node[key])
        if "demo_arms" in node:
            node["demo_arms"] = _demo_arms(f"{path}.demo_arms", node["demo_arms"])
        if node.get("soft_params") is not None:
            params = node["soft_params"]
            if not hasattr(params, "items"):
                raise GateConfigError(f"{path}.soft_params={params!r} must be a mapping (or null)")
            node["soft_params"] = tuple(sorted(dict(params).items()))
        if node.get("soft_table") is not None:
            node["soft_table"] = tuple(
                tuple(_parse_number(f"{path}.soft_table[{i}]", x) for x in row)
                for i, row in enumerate(node["soft_table"]))
        cfg = cls(**node)
        cfg.validate(path)
        return cfg

    def validate(self, path: str = "hpt.gate") -> None:
        if self.strategy not in STRATEGIES:
            raise GateConfigError(f"{path}.strategy={self.strategy!r} is not one of {list(STRATEGIES)}")
        if self.placement not in PLACEMENTS:
            raise GateConfigError(f"{path}.placement={self.placement!r} is not one of {list(PLACEMENTS)}")
        if not 0.0 <= self.gamma <= 1.0:
            raise GateConfigError(f"{path}.gamma={self.gamma} must lie in [0, 1] (a pass rate)")
        if self.strategy == "soft":
            if (self.soft_table is None) == (self.soft_fn is None):
                raise GateConfigError(f"{path}: strategy=soft needs exactly one of soft_table / soft_fn")
            if self.soft_fn is not None and self.soft_fn not in SOFT_FUNCTIONS:
                raise GateConfigError(f"{path}.soft_fn={self.soft_fn!r} is not one of {list(SOFT_FUNCTIONS)}")
            if self.soft_fn is not None:
                try:
                    resolve_params(self.soft_fn, dict(self.soft_params or ()), f"{path}.soft_params")
                except ValueError as e:
                    raise GateConfigError(str(e)) from None
            for i, row in enumerate(self.soft_table or ()):
                if len(row) != 2 or min(row) < 0:
                    raise GateConfigError(f"{path}.soft_table[{i}]={list(row)} must be [alpha, beta] with both >= 0")
        if self.soft_params is not None and self.soft_fn is None:
            raise GateConfigError(f"{path}.soft_params is set but {path}.soft_fn is not (strategy=soft, soft_fn=...)")
        if not isinstance(self.drop_all_correct, bool):
            raise GateConfigError(f"{path}.drop_all_correct={self.drop_all_correct!r} must be true or false")
        if self.strategy == "fixed" and (self.fixed_alpha < 0 or self.fixed_beta < 0):
            raise GateConfigError(f"{path}: fixed_alpha/fixed_beta must be >= 0")
        arms = _demo_arms(f"{path}.demo_arms", self.demo_arms)
        if self.keep_gated_rollouts and self.placement != "add" and "demo_off" not in arms:
            raise GateConfigError(
                f"{path}.keep_gated_rollouts=true needs placement=add or 'demo_off' in {path}.demo_arms "
                f"(a demonstration row in the question's group)")

    @property
    def needs_rollouts(self) -> bool:
        return self.strategy != "always"

    def can_choose_sft(self) -> bool:
        """Whether any question can get β > 0 (a demonstration row) under this gate."""
        if self.strategy == "never":
            return False
        if self.strategy == "fixed":
            return self.fixed_beta > 0
        if self.strategy == "soft" and self.soft_table is not None:
            return any(row[1] > 0 for row in self.soft_table)
        return True  # switch (P <= γ always holds for P = 0), soft linear, always

    def can_choose_rl(self) -> bool:
        """Whether any question can keep its rollouts (α > 0) under this gate."""
        if self.strategy == "always":
            return False
        if self.strategy == "fixed":
            return self.fixed_alpha > 0 or self.keep_gated_rollouts
        if self.strategy == "soft" and self.soft_table is not None:
            return any(row[0] > 0 for row in self.soft_table) or self.keep_gated_rollouts
        return True


def _demo_arms(path: str, value: Any) -> tuple:
    """``demo_arms`` as a tuple in ``DEMO_ARMS`` order; a bare string is one arm."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise GateConfigError(f"{path}={value!r} must be a list, e.g. [demo] or [demo, demo_off]")
    unknown = [v for v in value if v not in DEMO_ARMS]
    if unknown or not value or len(set(value)) != len(value):
        raise GateConfigError(
            f"{path}={list(value)} must be a non-empty list of distinct values from {list(DEMO_ARMS)}")
    return tuple(a for a in DEMO_ARMS if a in value)


def _parse_number(path: str, value: Any) -> float:
    """A finite float; fractions such as "2/8" (handy on the command line) are accepted."""
    try:
        if isinstance(value, str) and "/" in value:
            num, den = value.split("/", 1)
            out = float(num) / float(den)
        else:
            out = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise GateConfigError(f"{path}={value!r} is not a number") from None
    if not np.isfinite(out):
        raise GateConfigError(f"{path}={value!r} must be finite")
    return out


@dataclass
class QuestionStats:
    """Per-question verification results, questions in order of first appearance in the batch.

    uids (Q,), n (Q,) rollouts per question, correct (Q,) number correct, first_row (Q,) index of the
    question's first row, rows: list of Q index arrays.
    """

    uids: np.ndarray
    n: np.ndarray
    correct: np.ndarray
    first_row: np.ndarray
    rows: list = field(default_factory=list)

    @property
    def pass_rate(self) -> np.ndarray:
        return self.correct / np.maximum(self.n, 1)


def question_stats(uids: Sequence, scores: np.ndarray, correct_threshold: float = 1.0) -> QuestionStats:
    """Group rows by uid and count verified-correct rollouts (Eq. 7-8).

    uids: (N,) question id per row; scores: (N,) sequence-level reward per row.
    """
    uids = np.asarray(uids, dtype=object)
    scores = np.asarray(scores, dtype=np.float64)
    if uids.shape[0] != scores.shape[0]:
        raise ValueError(f"uids ({uids.shape[0]}) and scores ({scores.shape[0]}) differ in length")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(f"non-finite reward at row(s) {bad[:10].tolist()} (uid {uids[bad[0]]!r})")
    order: dict[Any, list[int]] = {}
    for i, u in enumerate(uids):
        order.setdefault(u, []).append(i)
    keys = list(order)
    rows = [np.asarray(order[k], dtype=np.int64) for k in keys]
    ok = scores >= correct_threshold
    return QuestionStats(
        uids=np.asarray(keys, dtype=object),
        n=np.asarray([len(r) for r in rows], dtype=np.int64),
        correct=np.asarray([int(ok[r].sum()) for r in rows], dtype=np.int64),
        first_row=np.asarray([r[0] for r in rows], dtype=np.int64),
        rows=rows,
    )


def gate_by_pass_rate(correct: np.ndarray, n: np.ndarray, cfg: GateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Weights (α, β) per question, each (Q,) float64: α on the rollouts, β on the demonstration."""
    correct = np.asarray(correct, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    q = correct.shape[0]
    if cfg.strategy == "switch":
        # P ≤ γ compared on counts (k ≤ γn) so that γ = 2/8 is exact for n = 8.
        gated = correct <= cfg.gamma * n + 1e-9
        alpha, beta = (~gated).astype(np.float64), gated.astype(np.float64)
    elif cfg.strategy == "soft":
        if cfg.soft_fn is not None:
            alpha, beta = soft_weights(cfg.soft_fn, correct, n, dict(cfg.soft_params or ()))
        else:
            table = np.asarray(cfg.soft_table, dtype=np.float64)
            if np.any(n != table.shape[0] - 1):
                bad = int(np.flatnonzero(n != table.shape[0] - 1)[0])
                raise GateConfigError(
                    f"hpt.gate.soft_table has {table.shape[0]} rows but question {bad} has n={int(n[bad])} "
                    f"rollouts (needs n+1 rows, one per number correct)"
                )
            alpha, beta = table[correct, 0].copy(), table[correct, 1].copy()
    elif cfg.strategy == "fixed":
        alpha, beta = np.full(q, cfg.fixed_alpha), np.full(q, cfg.fixed_beta)
    elif cfg.strategy == "always":
        alpha, beta = np.zeros(q), np.ones(q)
    elif cfg.strategy == "never":
        alpha, beta = np.ones(q), np.zeros(q)
    else:  # validated already
        raise GateConfigError(f"hpt.gate.strategy={cfg.strategy!r}")
    if cfg.keep_gated_rollouts:
        alpha = np.where(beta > 0, 1.0, alpha)
    if cfg.drop_all_correct:
        everything_right = correct >= n
        alpha, beta = np.where(everything_right, 0.0, alpha), np.where(everything_right, 0.0, beta)
    return alpha, beta


def route_stopped(alpha: np.ndarray, beta: np.ndarray, stopped: np.ndarray,
                  cfg: GateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Questions that staged generation stopped early (``stop_to_sft``) go to SFT: β = 1, and α = 0,
    or α = 1 with ``keep_gated_rollouts`` (their drawn rollouts stay beside the demonstration, as
    :func:`gate_by_pass_rate` keeps a gated question's). All arrays (Q,); returns new ones."""
    stopped = np.asarray(stopped, dtype=bool)
    kept = 1.0 if cfg.keep_gated_rollouts else 0.0
    return np.where(stopped, kept, alpha), np.where(stopped, 1.0, beta)
