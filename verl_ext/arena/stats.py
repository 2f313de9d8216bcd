"""Statistics of the arena: intervals over problems and seeds, and paired significance.

Correctness arrays are (seeds, problems) 0/1 matrices whose columns are the same problems for every
method (the arena evaluates every run on the same fixed test files), so comparisons are paired by
problem. The bootstrap resamples problems (one draw of problem indices shared by both methods of a
comparison) and, independently per method, seeds. pass@k is not here: the project has one,
``verl_ext.eval.passk`` (the arena's report uses its ``pass_at_k_curve``).
"""

from __future__ import annotations

import numpy as np

N_BOOT = 2000


def _as_matrix(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0 or a.shape[0] == 0:
        raise ValueError(f"expected a (seeds, problems) matrix, got shape {a.shape}")
    return a


def seed_mean_std(x) -> tuple[float, float]:
    """Mean over seeds of each seed's accuracy, and the sample std (ddof=1) of those accuracies
    (0 for one seed)."""
    per_seed = _as_matrix(x).mean(axis=1)
    std = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0
    return float(per_seed.mean()), std


def _boot_means(a: np.ndarray, prob_idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean accuracy under each bootstrap draw: problems ``prob_idx`` (B, P), seeds drawn here."""
    b = prob_idx.shape[0]
    seed_idx = rng.integers(0, a.shape[0], size=(b, a.shape[0]))
    sums = np.stack([a[:, idx].mean(axis=1) for idx in prob_idx])  # (B, S)
    return np.take_along_axis(sums, seed_idx, axis=1).mean(axis=1)


def bootstrap_ci(x, level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean accuracy, resampling problems
    and seeds with replacement."""
    a = _as_matrix(x)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.shape[1], size=(n_boot, a.shape[1]))
    means = _boot_means(a, idx, rng)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(a.mean()), float(lo), float(hi)


def paired_bootstrap(x, y, level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Difference mean(x) − mean(y) of two methods on the same problems (columns), with its
    percentile interval and a two-sided bootstrap p-value; ``significant`` when the interval
    excludes 0. Problems are drawn once per replicate for both methods (paired); seeds per method."""
    a, b = _as_matrix(x), _as_matrix(y)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired comparison needs the same problems: {a.shape[1]} vs {b.shape[1]} columns")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.shape[1], size=(n_boot, a.shape[1]))
    diffs = _boot_means(a, idx, rng) - _boot_means(b, idx, rng)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])
    p = 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean()))
    return {"diff": float(a.mean() - b.mean()), "low": float(lo), "high": float(hi), "p": min(1.0, p),
            "significant": bool(lo > 0 or hi < 0)}
