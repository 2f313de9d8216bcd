"""Reliability end to end on CPU (issue 8): ``python -m recipe.hpt.main_hpt`` as a user runs it.

- bad rows: an error names file/row/field before any worker exists; with ``on_bad_row=skip`` they
  are removed from what verl trains on, counted at step 1 and in ``hpt_summary.json``;
- resume: a run interrupted after its step-2 checkpoint and resumed reproduces the uninterrupted
  run's step 3 (data order and gate decisions exactly; model and AdamW state to float noise);
- non-finite gradients (fault injection): each step is skipped with parameters and optimizer
  untouched and counted; N in a row stop the run with a clear error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.utils import REPO, base_overrides, read_metrics
from tests.fault_injection import FAULT_INJECTION_ENV

PARITY_REWARD = str(REPO / "tests/assets/parity_reward.py")
pytestmark = pytest.mark.e2e

# rows of the 64-row arithmetic training set made bad, and why
BAD = {5: "demo_missing", 17: "demo_missing", 30: "ground_truth_missing", 41: "prompt_too_long"}


@pytest.fixture(scope="module")
def bad_train(arith_data_dir, tmp_path_factory) -> Path:
    df = pd.read_parquet(arith_data_dir / "train.parquet")
    rows = df.to_dict(orient="records")
    rows[5]["extra_info"] = dict(rows[5]["extra_info"], target="")
    rows[17]["extra_info"] = dict(rows[17]["extra_info"], target=None)
    rows[30]["reward_model"] = dict(rows[30]["reward_model"], ground_truth=None)
    rows[41]["prompt"] = [{"role": "user", "content": "Compute " + "+".join(["12"] * 40) + "."}]  # > 64 tokens
    out = tmp_path_factory.mktemp("bad_arith") / "train.parquet"
    pd.DataFrame(rows).to_parquet(out)
    return out


def _launch(overrides: list[str], metrics_file: Path, env: dict | None = None, timeout: int = 600):
    env = dict(os.environ, VERL_FILE_LOGGER_PATH=str(metrics_file), HPT_HF_ROLLOUT_THREADS="2",
               RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1", **(env or {}))
    cmd = [sys.executable, "-m", "recipe.hpt.main_hpt", *overrides, "trainer.logger=[console,file]"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(proc):
    assert proc.returncode == 0, f"main_hpt failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"


def _overrides(model, data, ckpt, steps, train=None):
    out = base_overrides(model, data, ckpt, steps=steps, reward=PARITY_REWARD)
    if train is not None:
        out = [o for o in out if not o.startswith("data.train_files=")] + [f"data.train_files={train}"]
    return out


def test_bad_row_stops_the_start_naming_file_row_and_field(tiny_model_dir, arith_data_dir, bad_train, tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = _launch(_overrides(tiny_model_dir, arith_data_dir, ckpt, 1, train=bad_train), tmp_path / "m.jsonl")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "DataValidationError" in out, out[-4000:]
    assert f"{bad_train}: row 5: field 'extra_info.target': is empty" in out
    assert f"{bad_train}: row 17: field 'extra_info.target': missing" in out
    assert f"{bad_train}: row 30: field 'reward_model.ground_truth': missing" in out
    assert f"{bad_train}: row 41: field 'prompt':" in out and "data.max_prompt_length=64" in out
    # nothing was built: no worker, no step, no checkpoint
    assert "HPTActorRolloutRefWorker" not in out and "Training Progress" not in out
    assert not (tmp_path / "m.jsonl").exists() and not ckpt.exists()


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_close_tree(a, b, where="", rel=0.0, atol=0.0):
    """Float tensors within ``atol + rel * max|a|`` (per tensor); everything else exactly equal."""
    if isinstance(a, torch.Tensor):
        a = a.to_local() if hasattr(a, "to_local") else a
        b = b.to_local() if hasattr(b, "to_local") else b
        assert a.shape == b.shape and a.dtype == b.dtype, where
        if a.is_floating_point() and a.numel():
            scale = a.abs().max().item()
            assert (a - b).abs().max().item() <= atol + rel * scale, (where, (a - b).abs().max().item(), scale)
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_close_tree(a[k], b[k], f"{where}/{k}", rel, atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close_tree(x, y, f"{where}[{i}]", rel, atol)
    else:
        assert a == b, (where, a, b)


def test_resume_reproduces_the_uninterrupted_run(tiny_model_dir, arith_data_dir, bad_train, tmp_path):
    """3 steps straight vs. a run interrupted after its step-2 checkpoint and resumed to step 3,
    on the bad dataset with on_bad_row=skip."""
    common = ["hpt.gate.gamma=0.5", "hpt.data.on_bad_row=skip", "trainer.save_freq=1"]
    full, part = tmp_path / "full", tmp_path / "part"
    _ok(_launch(_overrides(tiny_model_dir, arith_data_dir, full, 3, bad_train) + common, tmp_path / "full.jsonl"))
    # The interrupted run: what a run killed during step 3 leaves behind is its last complete
    # checkpoint (global_step_2, named by the tracker file); resume from exactly that.
    part.mkdir()
    shutil.copytree(full / "global_step_2", part / "global_step_2")
    (part / "latest_checkpointed_iteration.txt").write_text("2")
    _ok(_launch(_overrides(tiny_model_dir, arith_data_dir, part, 3, bad_train) + common, tmp_path / "part.jsonl"))

    # The same checkpoint moved to another folder and resumed from there (trainer.resume_from_path),
    # the run's own folder new and empty: HPT's state comes from where verl loaded the weights.
    moved, elsewhere = tmp_path / "moved", tmp_path / "elsewhere"
    shutil.copytree(full / "global_step_2", elsewhere / "global_step_2")
    _ok(_launch(_overrides(tiny_model_dir, arith_data_dir, moved, 3, bad_train) + common + [
        "trainer.resume_mode=resume_path", f"trainer.resume_from_path={elsewhere / 'global_step_2'}"],
        tmp_path / "moved.jsonl"))

    m_full = [m for m in read_metrics(tmp_path / "full.jsonl") if "actor/pg_loss" in m]
    m_res = [m for m in read_metrics(tmp_path / "part.jsonl") if "actor/pg_loss" in m]
    assert [m["step"] for m in m_full] == [1, 2, 3] and [m["step"] for m in m_res] == [3]

    # bad rows: removed, counted at the first step of each process and in the summary
    first = m_full[0]
    assert first["hpt/data/train_rows"] == 64 and first["hpt/data/train_rows_kept"] == 60
    assert first["hpt/data/skipped_rows"] == 4
    assert first["hpt/data/skipped/demo_missing"] == 2 and first["hpt/data/skipped/ground_truth_missing"] == 1
    assert first["hpt/data/skipped/prompt_too_long"] == 1
    assert "hpt/data/skipped_rows" not in m_full[1]
    assert m_res[0]["hpt/data/skipped_rows"] == 4
    summary = json.loads((full / "hpt_summary.json").read_text())
    assert summary["data"]["train_skipped"] == {"demo_missing": 2, "ground_truth_missing": 1, "prompt_too_long": 1}
    assert summary["last_step"] == 3 and summary["gate"]["steps"] == 3 and summary["stopped"] is None
    assert summary["optimizer"]["skipped_steps"] == 0

    s_full = json.loads((full / "global_step_3" / "hpt_state.json").read_text())
    s_res = json.loads((part / "global_step_3" / "hpt_state.json").read_text())
    # same data order ...
    assert s_full["batch_indices"] == s_res["batch_indices"] and len(s_full["batch_indices"]) == 3
    trained = {i for ids in s_full["batch_indices"].values() for i in ids}
    assert not trained & set(BAD), "a skipped row was trained on"
    # ... the same gate decisions (per question: number of correct rollouts, routed to SFT or not),
    # step 3 computed by the resumed process from its own, reseeded rollouts ...
    assert s_full["gate_decisions"]["3"] == s_res["gate_decisions"]["3"]
    assert s_full["gate_decisions"] == s_res["gate_decisions"]
    assert any(any(d["sft"]) for d in s_full["gate_decisions"].values())
    assert any(not all(d["sft"]) for d in s_full["gate_decisions"].values())  # both arms used
    for key in ("questions", "gated", "steps", "demo_missing", "skipped_steps"):
        assert s_full[key] == s_res[key], key
    s_moved = json.loads((moved / "global_step_3" / "hpt_state.json").read_text())
    assert s_moved == s_res, "a resume from trainer.resume_from_path lost HPT's gate statistics or counters"
    assert s_moved["steps"] == 3 and set(s_moved["gate_decisions"]) == {"1", "2", "3"}
    for key in ("hpt/sft_question_share", "critic/score/mean", "hpt/rows/demo", "hpt/rows/rollout",
                "response_length/mean", "actor/entropy", "actor/pg_loss"):
        assert m_full[2][key] == m_res[0][key], key
    # ... and the same model and AdamW state after step 3. Not bit for bit: two resumes from the
    # same checkpoint already differ in the last float bits of some step-3 gradients (CPU kernels,
    # ~1e-7 relative), so parameters are compared to 1e-7 absolute (an AdamW update moves a
    # parameter by ~lr = 1e-4: a lost or repeated update is 1000x that) and the optimizer moments
    # to 1e-5 of each tensor's largest value (a lost moment is off by ~100%).
    name = "model_world_size_1_rank_0.pt"
    _assert_close_tree(_load(full / "global_step_3" / "actor" / name), _load(part / "global_step_3" / "actor" / name),
                       name, atol=1e-7)
    name = "optim_world_size_1_rank_0.pt"
    _assert_close_tree(_load(full / "global_step_3" / "actor" / name), _load(part / "global_step_3" / "actor" / name),
                       name, rel=1e-5)
    optim = _load(full / "global_step_3" / "actor" / "optim_world_size_1_rank_0.pt")
    steps = {int(torch.as_tensor(s["step"]).item()) for s in optim["state"].values()}
    assert steps == {3}, steps  # one mini-batch per step, 3 steps: AdamW stepped 3 times, in both runs


def _hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tiny_model_dir, arith_data_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = _launch(
        _overrides(tiny_model_dir, arith_data_dir, ckpt, 3)
        + ["hpt.max_consecutive_skips=2", "trainer.save_freq=1",
           "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]"],
        tmp_path / "m.jsonl", env=FAULT_INJECTION_ENV)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    assert "HPTStopError" in out and "2 consecutive optimizer steps were skipped" in out, out[-4000:]
    assert "hpt.max_consecutive_skips=2" in out

    steps = [m for m in read_metrics(tmp_path / "m.jsonl") if "actor/pg_loss" in m]
    assert [m["step"] for m in steps] == [1, 2]  # both logged, step 3 never started
    assert [m["hpt/skipped_steps"] for m in steps] == [1, 1]
    assert [m["hpt/consecutive_skips"] for m in steps] == [1, 2]
    assert [m["hpt/cumulative/skipped_steps"] for m in steps] == [1, 2]

    # parameters untouched: the step-2 checkpoint still holds the initial weights ...
    before = _hf_weights(Path(tiny_model_dir))
    after = _hf_weights(ckpt / "global_step_2" / "actor" / "huggingface")
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k].to(before[k].dtype)), k
    # ... and AdamW never stepped (no moments, no step count)
    optim = _load(ckpt / "global_step_2" / "actor" / "optim_world_size_1_rank_0.pt")
    assert not optim["state"], list(optim["state"])[:3]
    state = json.loads((ckpt / "global_step_2" / "hpt_state.json").read_text())
    assert state["skipped_steps"] == 2 and state["consecutive_skips"] == 2
    summary = json.loads((ckpt / "hpt_summary.json").read_text())
    assert "consecutive optimizer steps were skipped" in summary["stopped"]
    assert summary["optimizer"]["skipped_steps"] == 2
