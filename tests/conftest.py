"""Shared fixtures (the tiny model and the arithmetic dataset, built once per session) and the e2e marker.

tests/unit/ mirrors the package and runs in seconds to minutes; tests/e2e/ holds every test that
starts Ray or FSDP (verl's trainer, its vLLM replica, several ranks): each of them is marked
``e2e`` here, so ``pytest -m "not e2e"`` is the developers' fast loop. A test elsewhere that starts
the trainer carries the marker itself (the quick arena in tests/unit/arena).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
E2E_DIR = REPO / "tests" / "e2e"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def char_tok():
    """verl_ext.tiny's byte-level tokenizer (no files, no download)."""
    from verl_ext.tiny import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from verl_ext.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), seed=0)


@pytest.fixture(scope="session")
def arith_data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arith")
    subprocess.run([sys.executable, str(REPO / "scripts/data/make_arith_dataset.py"), "--out", str(out),
                    "--train", "64", "--test", "16"], check=True, cwd=REPO)
    return out
