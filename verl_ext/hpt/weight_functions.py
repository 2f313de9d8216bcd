"""Named weight functions of the pass count for the ``soft`` gate (``hpt.gate.soft_fn``).

Each maps a question's k correct out of n drawn rollouts to (α, β): α weighs the question's
rollouts in the rollout arm, β its demonstration row in the demonstration arm. Parameters come from
``hpt.gate.soft_params`` (a mapping; missing keys take the defaults below).

``linear`` (no parameters)::

    α = P,  β = 1 − P,  P = k / n

``rasft`` (RASFT, arXiv 2606.07006; read from the authors' ``train_RASFT.py``, the paper's own
equations are UNCONFIRMED)::

    d   = 1 − k/n,   R_E = r_min + d·(r_max − r_min)                  expert reward, larger when harder
    g   = [R_E, pos_reward × k, neg_reward × min(n − k, max_negative_keep)]
    A   = tanh(adv_alpha · (g − mean g) / (std_pop g + 1e-6))           per member of the group
    k = 0, or g has zero variance:  β = 1, α = 0
    else:                           β = A_E / (1 + k)
                                    α = rollout_coef · clip(A_pos / (1 + k), rollout_floor, rollout_cap)

α then weighs each *correct* rollout (the preset's rollout arm is an NLL whose advantage is 1 on
correct rows and 0 on wrong ones): RASFT trains no RL loss, it imitates the demonstration, less as
more rollouts succeed, and its own correct answers weakly. Differences from the source: n is the
number of rollouts drawn (the source first removes near-duplicate samples and loops, and chooses which
negatives to keep by similarity: neither changes the counts used here except through dedup); the source
routes questions into rollouts by their current demonstration loss (quantile windows) and scales each
token by a clipped reference ratio and its probability (DFT-style): neither is reproduced.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

RASFT_DEFAULTS = {
    "r_min": 1.0, "r_max": 3.0, "pos_reward": 1.0, "neg_reward": 0.0, "max_negative_keep": 3,
    "adv_alpha": 0.4, "rollout_coef": 0.25, "rollout_floor": 0.02, "rollout_cap": 0.15,
}
PARAMS = {"linear": {}, "rasft": RASFT_DEFAULTS}


def resolve_params(fn: str, params: Mapping[str, Any] | None, path: str = "hpt.gate.soft_params") -> dict:
    """The function's parameters: defaults overridden by ``params``; unknown keys are an error."""
    known = PARAMS[fn]
    given = dict(params or {})
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown} for soft_fn={fn}; known: {sorted(known)}")
    out = {**known, **given}
    for key, value in out.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise ValueError(f"{path}.{key}={value!r} must be a finite number")
    if fn == "rasft":
        if out["rollout_floor"] > out["rollout_cap"]:
            raise ValueError(f"{path}: rollout_floor {out['rollout_floor']} > rollout_cap {out['rollout_cap']}")
        if int(out["max_negative_keep"]) != out["max_negative_keep"] or out["max_negative_keep"] < 0:
            raise ValueError(f"{path}.max_negative_keep={out['max_negative_keep']!r} must be an integer >= 0")
    return out


def rasft_weights(k: int, n: int, p: Mapping[str, float]) -> tuple[float, float]:
    """(α, β) of one question with k of n rollouts correct (module docstring)."""
    if k <= 0 or n <= 0:
        return 0.0, 1.0
    r_e = p["r_min"] + (1.0 - k / n) * (p["r_max"] - p["r_min"])
    negatives = min(n - k, int(p["max_negative_keep"]))
    group = np.array([r_e] + [p["pos_reward"]] * k + [p["neg_reward"]] * negatives, dtype=np.float64)
    std = group.std()  # population std, as the source
    if std == 0.0:
        return 0.0, 1.0
    adv = np.tanh(p["adv_alpha"] * (group - group.mean()) / (std + 1e-6))  # (1 + k + negatives,)
    beta = float(adv[0] / (1 + k))
    alpha = p["rollout_coef"] * float(np.clip(adv[1] / (1 + k), p["rollout_floor"], p["rollout_cap"]))
    return alpha, beta


def soft_weights(fn: str, correct: np.ndarray, n: np.ndarray, params: Mapping[str, Any] | None = None):
    """(α, β), each (Q,) float64, of the named function for k = ``correct``, n = ``n`` per question."""
    correct = np.asarray(correct, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    if fn == "linear":
        p = correct / np.maximum(n, 1)
        return p.astype(np.float64), 1.0 - p
    if fn == "rasft":
        prm = resolve_params(fn, params)
        pairs = [rasft_weights(int(k), int(m), prm) for k, m in zip(correct, n)]
        alpha = np.array([a for a, _ in pairs], dtype=np.float64).reshape(correct.shape)
        beta = np.array([b for _, b in pairs], dtype=np.float64).reshape(correct.shape)
        return alpha, beta
    raise ValueError(f"unknown soft_fn {fn!r}; known: {sorted(PARAMS)}")
