"""The arena's methods (configs/arena/methods.yaml) and the names of their runs and result files.

A method is Hydra overrides on ``recipe.hpt.main_hpt`` (``overrides`` at every scale, ``cpu`` /
``gpu`` per scale, after the file's ``common`` ones), or a chain of such methods (``stages``, each
with its ``fraction`` of the step budget), optionally reusing other methods' selected lrs
(``lr_from``); ``train: false`` marks the untrained base. Keeping them as data means the CPU arena
and the GPU launches (``verl_ext.arena.scale``) run the very same methods.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from verl_ext.arena import REPO

METHODS_FILE = REPO / "configs" / "arena" / "methods.yaml"
CPU_FILE = REPO / "configs" / "arena" / "cpu.yaml"


def load_methods(path: Path = METHODS_FILE) -> tuple[list[str], dict[str, dict]]:
    """(common overrides, {method name: its entry}) in the file's order, chains checked."""
    spec = yaml.safe_load(Path(path).read_text())
    common = list(spec.get("common") or [])
    methods = {name: dict(m or {}) for name, m in spec["methods"].items()}
    for name, m in methods.items():
        for st in m.get("stages", []):
            if st["method"] not in methods or methods[st["method"]].get("stages"):
                raise SystemExit(f"{path}: {name}: stage method {st['method']!r} must be a single-run method "
                                 f"(a method of this file without stages); fix the stage's method name")
        if m.get("stages") and abs(sum(s["fraction"] for s in m["stages"]) - 1.0) > 1e-9:
            raise SystemExit(f"{path}: {name}: stage fractions must sum to 1; fix its stages' fraction values")
    return common, methods


def load_config(path: Path = CPU_FILE) -> dict:
    """The CPU arena's settings (configs/arena/cpu.yaml: task, base, budget, evaluation)."""
    return yaml.safe_load(Path(path).read_text())


def method_overrides(common: list[str], methods: dict, name: str, scale: str) -> list[str]:
    """The Hydra overrides of a single-run method at ``scale`` ('cpu' or 'gpu')."""
    m = methods[name]
    return [*common, *m.get("overrides", []), *m.get(scale, [])]


def stages_of(methods: dict, name: str) -> list[tuple[str, float]]:
    """(single-run method, fraction of the steps) per stage; one stage for a plain method."""
    m = methods[name]
    return [(s["method"], float(s["fraction"])) for s in m["stages"]] if m.get("stages") else [(name, 1.0)]


def lr_sources(methods: dict, name: str) -> list[str] | None:
    """Methods whose selected lr this one reuses (one per stage), or None if it has its own grid."""
    src = methods[name].get("lr_from")
    if src is None:
        return None
    return [src] if isinstance(src, str) else list(src)


def stage_steps(total: int, fractions: list[float]) -> list[int]:
    """Steps per stage: each at least 1, the last one takes what rounding left of ``total``."""
    steps = [max(1, int(round(total * f))) for f in fractions[:-1]]
    return [*steps, max(1, total - sum(steps))]


# ------------------------------------------------------------------ runs and their files


def slug(name: str) -> str:
    """A method name as a folder / experiment name ('SFT->GRPO' -> 'SFT_to_GRPO', 'HPT g=0' -> 'HPT_g0')."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name.replace("->", "_to_").replace("=", "")).strip("_")


def lr_tag(lr) -> str:
    """An lr as written in file names and tables: 'none' (base), '3e-05', '0.001+0.0001' (a chain)."""
    if lr is None:
        return "none"
    return "+".join(f"{x:g}" for x in lr) if isinstance(lr, (list, tuple)) else f"{lr:g}"


def run_path(out: Path, method: str, lr, seed: int) -> Path:
    """The result JSON of one (method, lr, seed) run under the arena's output folder."""
    return out / "runs" / slug(method) / f"lr{lr_tag(lr)}_s{seed}.json"


def accuracy(block: dict) -> float:
    """Share of correct problems in a run's evaluation block ({"correct": "0110..."})."""
    c = block["correct"]
    return sum(ch == "1" for ch in c) / max(len(c), 1)
