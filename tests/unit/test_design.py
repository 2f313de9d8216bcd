"""docs/design.md stays true: the step's phases run in the documented order, and every function the
batch walk names exists where the walk says."""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import ast
import importlib
import inspect
import re

import pytest

REPO = TESTS_REPO
DESIGN = REPO / "docs" / "design.md"
# where a name of the walk is looked up, in order (the walk writes names relative to these)
NAMESPACES = ("recipe.hpt.hpt_ray_trainer", "recipe.hpt.hpt_ray_trainer.RayHPTTrainer", "verl_ext.hpt.step",
              "verl_ext.hpt", "verl_ext", "verl_ext.hpt.state", "verl_ext.hpt.demonstrations", "verl_ext.checks",
              "verl_ext.loss.batch_keys")


# batch keys and settings the walk names beside the code
DATA_NAMES = {"rm_scores", "uid", "meta_info", "placement"}


def _resolve(name: str):
    for base in NAMESPACES:
        parts = f"{base}.{name}".split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            return obj
    return None


def _walk_names() -> list[str]:
    text = DESIGN.read_text()
    walk = text[text.index("## One batch through one step"):text.index("## Why hooks")]
    names = set()
    for row in walk.splitlines():
        if not row.startswith("|"):
            continue
        cells = row.split("|")
        if len(cells) < 4:
            continue
        for token in re.findall(r"`([^`]+)`", cells[3]):  # the "HPT does (function)" column
            data = token.startswith(("hpt.", "hpt_", "trainer.")) or token in DATA_NAMES  # not code
            if re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*", token) and not data:
                names.add(token)
    return sorted(names)


@pytest.mark.parametrize("name", _walk_names())
def test_every_function_the_walk_names_exists(name):
    assert _resolve(name) is not None, f"docs/design.md names {name!r}, which no module has"


def test_the_step_runs_gate_demonstrations_merge_record_in_that_order():
    from verl_ext.hpt.step import HPTStep

    tree = ast.parse(inspect.getsource(HPTStep.__call__).strip())
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            calls.append((node.lineno, f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")))
    order = [name for _, name in sorted(calls)]
    phases = ["gate", "demonstrations", "merge_demonstrations", "record_step", "step_metrics"]
    positions = [order.index(p) for p in phases]
    assert positions == sorted(positions), order
    assert all(order.count(p) == 1 for p in phases), "each phase is visited once"
