"""Learning-rate selection on the validation split: every method is compared at its own best lr.

The grid runs at the arena's first seed; the lr whose run has the best greedy validation accuracy
(val.parquet, disjoint from the test split) is selected, so the test numbers never choose a
setting. Chains and ``lr_from`` methods reuse their sources' selected lrs instead of a grid.
"""

from __future__ import annotations

import json
from pathlib import Path

from verl_ext.arena.methods import accuracy, lr_sources, run_path


def select_lrs(out: Path, methods: dict, names: list[str], lrs: list[float], seed0: int) -> dict:
    """Best validation accuracy over the grid (seed ``seed0``) for every method with its own grid;
    ties go to the smaller lr. Reads the run JSONs (the report writes the result to lr_selection.json)."""
    sel = {}
    for name in names:
        m = methods[name]
        if m.get("train", True) is False or lr_sources(methods, name) is not None:
            continue
        grid = {}
        for lr in lrs:
            p = run_path(out, name, lr, seed0)
            if p.exists():
                r = json.loads(p.read_text())
                grid[f"{lr:g}"] = {"val": accuracy(r["val"]), "test": accuracy(r["test"])}
        if grid:
            best = max(sorted(grid, key=float), key=lambda k: grid[k]["val"])
            sel[name] = {"grid": grid, "selected": float(best),
                         "criterion": f"validation accuracy (greedy), seed {seed0}"}
    for name in names:
        src = lr_sources(methods, name)
        if src is not None and all(s in sel for s in src):
            sel[name] = {"selected": [sel[s]["selected"] for s in src] if methods[name].get("stages")
                         else sel[src[0]]["selected"], "reused_from": src}
    return sel


def needed_grid_methods(methods: dict, names: list[str]) -> list[str]:
    """The trained methods whose lr grid ``names`` need: their own, or their lr sources'."""
    need = []
    for name in names:
        for n in (lr_sources(methods, name) or [name]):
            if methods[n].get("train", True) is not False and n not in need:
                need.append(n)
    return need
