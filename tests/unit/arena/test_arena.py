"""The arena (verl_ext.arena; CLI scripts/arena.py): statistics, the method list, the GPU --scale dry
run, resume and locks, and a --quick CPU run end to end with a --report rebuild from its JSONs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from math import comb

import numpy as np
import pytest

from tests.e2e.utils import REPO
from verl_ext.arena.methods import load_methods, method_overrides, run_path, stage_steps
from verl_ext.arena.scale import scale_commands, validate_overrides
from verl_ext.arena.stats import bootstrap_ci, paired_bootstrap, seed_mean_std
from verl_ext.eval.passk import pass_at_k, pass_at_k_curve

# ------------------------------------------------------------------ statistics


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(32, 3, 8) == pytest.approx(1 - comb(29, 8) / comb(32, 8))
    assert pass_at_k(32, 0, 32) == 0.0 and pass_at_k(32, 30, 4) == 1.0
    assert pass_at_k_curve([0, 2, 4], 4, [1, 4]) == {1: pytest.approx(0.5), 4: pytest.approx(2 / 3)}
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 8)


def test_seed_mean_std_is_over_per_seed_accuracies():
    m = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])  # 0.5, 0.75, 1.0
    mean, std = seed_mean_std(m)
    assert mean == pytest.approx(0.75) and std == pytest.approx(0.25)
    assert seed_mean_std([1, 0, 1, 1]) == (0.75, 0.0)


def test_bootstrap_interval_matches_binomial_width():
    rng = np.random.default_rng(1)
    x = (rng.random(1000) < 0.3).astype(int)  # one seed, 1000 problems, p ~ 0.3
    mean, lo, hi = bootstrap_ci(x)
    se = np.sqrt(mean * (1 - mean) / 1000)
    assert lo < mean < hi
    # percentile interval ~ mean ± 1.96 se (0.028 here); a wrong resampling (e.g. of seeds only,
    # or a 68% interval) would be far off
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert bootstrap_ci(np.ones((3, 50))) == (1.0, 1.0, 1.0)


def test_bootstrap_interval_widens_with_seed_disagreement():
    rng = np.random.default_rng(2)
    base = (rng.random(500) < 0.5).astype(int)
    agree = np.stack([base, base, base])
    disagree = np.stack([base, np.zeros(500, int), np.ones(500, int)])  # seeds at 0.5, 0, 1
    _, lo1, hi1 = bootstrap_ci(agree)
    _, lo2, hi2 = bootstrap_ci(disagree)
    assert (hi2 - lo2) > 3 * (hi1 - lo1)


def test_paired_bootstrap_significance():
    rng = np.random.default_rng(3)
    a = (rng.random((3, 1000)) < 0.5).astype(int)
    better = a.copy()
    flip = rng.random((3, 1000)) < 0.12  # +~6 points: some wrong answers become right
    better[flip] = 1
    res = paired_bootstrap(better, a)
    assert res["significant"] and res["low"] > 0 and res["diff"] == pytest.approx(better.mean() - a.mean())
    assert res["p"] < 0.01
    # the same accuracy on the same problems (a permuted copy of one seed's answers): not significant
    same = paired_bootstrap(a, a[[1, 2, 0]])
    assert not same["significant"] and same["low"] < 0 < same["high"] and same["p"] > 0.05
    # pairing matters: 1.5 points better on the very same problems (15 problems wrong in every seed
    # made right; seeds that agree up to 0.3 % of answers) is significant paired, while the two
    # methods' own intervals overlap almost entirely (an unpaired comparison would call it noise)
    row = (rng.random(1000) < 0.5).astype(int)
    c = np.stack([row ^ (rng.random(1000) < 0.003) for _ in range(3)]).astype(int)
    b = c.copy()
    b[:, np.flatnonzero(c.max(axis=0) == 0)[:15]] = 1
    paired = paired_bootstrap(b, c)
    _, lo_c, hi_c = bootstrap_ci(c)
    _, lo_b, hi_b = bootstrap_ci(b)
    assert paired["diff"] == pytest.approx(0.015) and paired["low"] > 0 and paired["significant"]
    assert lo_b < hi_c - 0.03
    with pytest.raises(ValueError):
        paired_bootstrap(a, a[:, :10])


# ------------------------------------------------------------------ methods and the GPU scale


def test_methods_cover_the_issue_and_use_split_invariant_sft():
    common, methods = load_methods()
    assert {"base", "SFT", "GRPO", "SFT->GRPO", "LUFFY", "SRFT", "HPT g=0", "HPT g=1/4", "HPT soft"} <= set(methods)
    assert "++hpt.loss.entropy_agg=global" in common
    for name in methods:
        if methods[name].get("train", True) is False or methods[name].get("stages"):
            continue
        ov = method_overrides(common, methods, name, "cpu")
        presets = [o.split("=", 1)[1] for o in ov if o.startswith("upge=")]
        assert presets, name
        # release presets with a per-micro-batch SFT mean are never used as they are
        assert presets[-1] not in ("hpt_release", "hpt_release_off"), name
        if presets[-1] == "srft_release":
            assert "hpt.loss.demo.nll_agg=token-mean" in ov
    assert [s["method"] for s in methods["SFT->GRPO"]["stages"]] == ["SFT", "GRPO"]
    assert stage_steps(40, [0.5, 0.5]) == [20, 20] and stage_steps(3, [0.5, 0.5]) == [2, 1]


def test_cpu_overrides_compose_with_split_invariant_sft_arms():
    """Every CPU method composes on +exp=cpu_default, and its SFT arms use the global token mean."""
    common, methods = load_methods()
    for name in methods:
        if methods[name].get("train", True) is False or methods[name].get("stages"):
            continue
        cfg = validate_overrides(["+exp=cpu_default", *method_overrides(common, methods, name, "cpu")])
        loss = cfg.hpt.loss
        assert loss.entropy_agg == "global", name
        if loss.get("demo") is not None:
            assert loss.demo.agg in ("token-mean", "const-len"), (name, loss.demo.agg)
            if loss.demo.get("nll_coef"):
                assert loss.demo.nll_agg == "token-mean", name
        if loss.get("rollout") is not None:
            assert loss.rollout.const_len == 256, name
        if loss.get("demo") is not None and loss.demo.agg == "const-len":
            assert loss.demo.const_len == 256, name


@pytest.mark.parametrize("scale", ["scale_qwen2.5-math-1.5b.yaml", "scale_qwen2.5-math-7b.yaml"])
def test_scale_dry_run_validates_every_command(scale, tmp_path):
    proc = subprocess.run([sys.executable, "scripts/arena.py", "--scale", f"configs/arena/{scale}", "--dry-run",
                           "--seeds", "0", "--lrs", "1e-6"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cmds = [ln for ln in proc.stdout.splitlines() if ln.startswith("python -m recipe.hpt.main_hpt")]
    # 12 trained methods, SFT->GRPO in two stages
    assert len(cmds) == 13 and "# 13 commands, each composed and validated" in proc.stdout
    assert proc.stdout.count("All configuration checks passed") >= 13
    # the GPU scale's staged HPT draws 4 + 4 of its 8 rollouts (the CPU arena: 2 + 2 of 4)
    staged = [c for c in cmds if "HPT_staged" in c][0]
    assert "hpt.stages=[{rollouts:4},{rollouts:4,max_correct:0,action:stop_to_sft}]" in staged
    assert sum("upge=dypo" in c for c in cmds) == 1 and sum("hpt.gate.soft_fn=rasft" in c for c in cmds) == 1
    trapo = [c for c in cmds if "upge=trapo" in c][0]
    assert "{rollouts:4},{rollouts:2,max_correct:1,action:continue_with_prefix,prefix:0.25}" in trapo
    assert sum("upge=sft" in c for c in cmds) == 2 and sum("upge=luffy" in c for c in cmds) == 1
    stage2 = [c for c in cmds if "SFT_to_GRPO" in c and "_stage1" in c][0]
    assert "actor_rollout_ref.model.path=" in stage2 and "_stage0/global_step_250/actor/huggingface" in stage2


def test_scale_dry_run_rejects_a_broken_method(tmp_path):
    """The dry run fails (it validates), e.g. on a method whose gate builds rows its loss has no arm for."""
    common, methods = load_methods()
    cmds = scale_commands(REPO / "configs/arena/scale_qwen2.5-math-7b.yaml", common, methods, ["GRPO"], [1e-6], [0])
    broken = [o for o in cmds[0]["overrides"] if o != "hpt.gate.strategy=never"]
    with pytest.raises(ValueError, match="hpt.loss.demo is null"):
        validate_overrides(broken)


# ------------------------------------------------------------------ the CPU arena, end to end


@pytest.mark.e2e
def test_quick_arena_end_to_end_and_report_rebuild(tmp_path):
    out = tmp_path / "arena"
    # --jobs 2: the grid's two runs (SFT, HPT g=0) train at once, each in its own process and Ray
    proc = subprocess.run([sys.executable, "scripts/arena.py", "--quick", "--jobs", "2", "--out", str(out),
                           "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    runs = sorted((out / "runs").glob("*/*.json"))
    assert {p.parent.name for p in runs} == {"base", "SFT", "HPT_g0"}
    for p in runs:
        r = json.loads(p.read_text())
        for block in ("val", "test", "ood"):
            assert set(r[block]["correct"]) <= {"0", "1"} and len(r[block]["correct"]) == len(r[block]["levels"])
        assert set(r["test"]["levels"]) == {2, 3, 4, 5} and set(r["ood"]["levels"]) == {6, 7}
        assert len(r["passk"]["counts"]) == len(r["passk"]["levels"]) > 0
        assert all(0 <= c <= r["passk"]["samples"] for c in r["passk"]["counts"])
        assert r["wall_s"] > 0 and r["samples"]
        if r["method"] != "base":
            dyn = r["dynamics"]
            assert dyn["step"] == [1, 2] and r["trained_tokens"] > 0 and r["lr"] == 1e-3
            assert all(0 <= s <= 1 for s in dyn["sft_share"])
    sft = json.loads((out / "runs/SFT/lr0.001_s0.json").read_text())
    hpt = json.loads((out / "runs/HPT_g0/lr0.001_s0.json").read_text())
    assert sft["generated_tokens_est"] == 0 and sft["dynamics"]["sft_share"] == [1.0, 1.0]
    assert hpt["generated_tokens_est"] > 0 or min(hpt["dynamics"]["sft_share"]) == 1.0
    sel = json.loads((out / "lr_selection.json").read_text())
    assert set(sel) == {"SFT", "HPT g=0"} and sel["SFT"]["selected"] == 1e-3
    assert 0.0 <= sel["SFT"]["grid"]["0.001"]["val"] <= 1.0
    table = (out / "table.md").read_text()
    for name in ("| base |", "| SFT |", "| HPT g=0 |", "Learning-rate selection", "pass@k", "OOD", "ID vs base"):
        assert name in table
    # the gain over the base is the paired difference of the two methods' means, inside its interval
    st = json.loads((out / "stats.json").read_text())["methods"]
    for name in ("SFT", "HPT g=0"):
        for block in ("test", "ood"):
            vb = st[name][block]["vs_base"]
            assert vb["diff"] == pytest.approx(st[name][block]["mean"] - st["base"][block]["mean"], abs=1e-9)
            assert vb["low"] <= vb["diff"] <= vb["high"]
    assert "vs_base" not in st["base"]["test"]
    for png in ("passk.png", "tokens.png", "dynamics.png"):
        assert (out / png).stat().st_size > 10_000
    assert (out / "base_passk.md").exists()
    # --report rebuilds the same table from the JSONs alone (no data, no model, no training)
    rebuilt = tmp_path / "rebuilt"
    shutil.copytree(out / "runs", rebuilt / "runs")
    shutil.copy(out / "arena.json", rebuilt / "arena.json")
    proc = subprocess.run([sys.executable, "scripts/arena.py", "--report", "--out", str(rebuilt)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (rebuilt / "table.md").read_text() == table
    assert (rebuilt / "passk.png").exists() and (rebuilt / "dynamics.png").exists()


def test_rerun_never_mixes_two_settings(tmp_path):
    """A finished run JSON is reused only under the same steps, questions per step and base; a
    result of another setting stops the arena with the file's name instead of being mixed in."""
    from verl_ext.arena.runner import ArenaContext, run_one

    base = tmp_path / "base"
    base.mkdir()
    (base / "hpt_base.json").write_text(json.dumps({"settings": {"steps": 600, "warmup_weights": [1, 1, 0.1]}}))
    out = tmp_path / "arena"
    path = run_path(out, "GRPO", 3e-5, 0)
    path.parent.mkdir(parents=True)
    same = {"method": "GRPO", "lr": 3e-5, "seed": 0, "steps": 100, "questions_per_step": 32, "quick": False,
            "base_settings": {"steps": 600, "warmup_weights": [1, 1, 0.1]}}
    path.write_text(json.dumps(same))
    kw = dict(cfg=None, common=[], methods={"GRPO": {}}, questions_per_step=32, data=None, base=base, sets=None,
              out=out, quick=False, work_root=tmp_path / "work")
    assert run_one(ArenaContext(steps=100, **kw), "GRPO", 3e-5, 0) == same
    with pytest.raises(SystemExit, match=r"lr3e-05_s0\.json was run under another setting.*steps"):
        run_one(ArenaContext(steps=60, **kw), "GRPO", 3e-5, 0)
    (base / "hpt_base.json").write_text(json.dumps({"settings": {"steps": 300}}))
    with pytest.raises(SystemExit, match="base_settings"):
        run_one(ArenaContext(steps=100, **kw), "GRPO", 3e-5, 0)


def test_run_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    """Two arena invocations never train the same (method, lr, seed): the second stops naming the
    owner's pid; a lock left by a killed run (its pid gone) is taken over; the lock goes on exit."""
    from verl_ext.arena.runner import run_lock

    lock = tmp_path / "w" / "lr3e-05_s1.lock"
    with run_lock(lock, "HPT g=0 lr=3e-05 s=1"):
        assert lock.read_text() == str(os.getpid())
        with pytest.raises(SystemExit, match=rf"being trained by process {os.getpid()}"):
            with run_lock(lock, "HPT g=0 lr=3e-05 s=1"):
                pass
    assert not lock.exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(str(dead.pid))
    with run_lock(lock, "x"):
        assert lock.read_text() == str(os.getpid())
    assert not lock.exists()


def test_probe_chain_check():
    """The base probe counts a correct answer reached through a false step or another chain."""
    from verl_ext.arena.evaluate import chain_is_wrong

    demo = "9+4=13. 13+5=18. \\boxed{18}"
    assert not chain_is_wrong(demo, demo)
    assert chain_is_wrong("9+4=12. 12+5=18. \\boxed{18}", demo)       # 9+4=12 is false
    assert chain_is_wrong("9+5=14. 14+4=18. \\boxed{18}", demo)       # true steps, another chain
    assert chain_is_wrong("3*4=13. \\boxed{13}", "3*4=12. \\boxed{12}")
    assert not chain_is_wrong("3*4=12. 12+1=13. \\boxed{13}", "3*4=12. 12+1=13. \\boxed{13}")
