"""Small helpers shared by several test modules."""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESET_DIR = os.path.join(REPO, "recipe", "hpt", "config", "upge")
PRESETS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(PRESET_DIR, "*.yaml")))


def load_script(rel: str):
    """Import a script under scripts/ (not a package path) as a module."""
    spec = importlib.util.spec_from_file_location(Path(rel).stem, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
