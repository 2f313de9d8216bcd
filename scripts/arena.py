"""The arena: every post-training method from one base, through one trainer, each at its best lr,
over seeds, with uncertainty (issue 19; replaces scripts/toy_table.py).

Methods are data: configs/arena/methods.yaml (Hydra overrides per method). The CPU arena's task,
base, budget and evaluation: configs/arena/cpu.yaml. For every method:

1. lr grid at seed 0 (``--lrs``), each point scored on the validation split (val.parquet, disjoint
   from the test split); the best validation score picks the lr (results/arena/lr_selection.json
   records every grid point). Chains (SFT->GRPO) and ``lr_from`` entries reuse selected lrs.
2. ``--seeds`` runs at the selected lr (seed 0 is the grid run itself).
3. Each (method, lr, seed) run writes one JSON (runs/<method>/lr<lr>_s<seed>.json): per-problem
   greedy correctness on the ID test and the OOD test, per-problem correct counts of ``samples``
   temperature-1 samples on a fixed pass@k subset, validation accuracy, generated / trained tokens,
   wall time, per-step dynamics, sample outputs. Finished JSONs are skipped on a rerun.
4. ``--report`` (also run at the end): table.md (mean ± std over seeds, 95 % bootstrap interval over
   problems and seeds, paired bootstrap vs the best method, ID and OOD apart), passk.png,
   tokens.png (accuracy against generated tokens per method), dynamics.png (mean over seeds with a
   min-max band), base_passk.md — from the JSONs alone.

``--scale configs/arena/scale_<model>.yaml --dry-run`` composes the same methods as GPU launches of
``recipe.hpt.main_hpt`` (one per method, lr, seed; chains as consecutive stages), prints them and
validates each with Hydra's compose API and verl's config checks.

Usage:
  python scripts/arena.py                          # the full CPU arena (see README "Arena")
  python scripts/arena.py --quick --out /tmp/q     # CI: 2 methods, 1 seed, 2 steps, tiny sets
  python scripts/arena.py --report                 # rebuild table and plots from the JSONs
  python scripts/arena.py --methods "GRPO,HPT g=0" --seeds 0,1 --steps 20 --lrs 3e-4,1e-3
  python scripts/arena.py --scale configs/arena/scale_qwen2.5-math-7b.yaml --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

METHODS_FILE = REPO / "configs" / "arena" / "methods.yaml"
CPU_FILE = REPO / "configs" / "arena" / "cpu.yaml"
DYN_KEYS = {"pass_rate": "hpt/pass_rate/mean", "sft_share": "hpt/sft_question_share",
            "response_length": "hpt/response_length/rl", "entropy": "actor/entropy"}


# ------------------------------------------------------------------ methods


def load_methods(path: Path = METHODS_FILE) -> tuple[list[str], dict[str, dict]]:
    spec = yaml.safe_load(Path(path).read_text())
    common = list(spec.get("common") or [])
    methods = {name: dict(m or {}) for name, m in spec["methods"].items()}
    for name, m in methods.items():
        for st in m.get("stages", []):
            if st["method"] not in methods or methods[st["method"]].get("stages"):
                raise SystemExit(f"{path}: {name}: stage method {st['method']!r} must be a single-run method")
        if m.get("stages") and abs(sum(s["fraction"] for s in m["stages"]) - 1.0) > 1e-9:
            raise SystemExit(f"{path}: {name}: stage fractions must sum to 1")
    return common, methods


def method_overrides(common: list[str], methods: dict, name: str, scale: str) -> list[str]:
    """The Hydra overrides of a single-run method at ``scale`` ('cpu' or 'gpu')."""
    m = methods[name]
    return [*common, *m.get("overrides", []), *m.get(scale, [])]


def stages_of(methods: dict, name: str) -> list[tuple[str, float]]:
    m = methods[name]
    return [(s["method"], float(s["fraction"])) for s in m["stages"]] if m.get("stages") else [(name, 1.0)]


def lr_sources(methods: dict, name: str) -> list[str] | None:
    """Methods whose selected lr this one reuses (one per stage), or None if it has its own grid."""
    src = methods[name].get("lr_from")
    if src is None:
        return None
    return [src] if isinstance(src, str) else list(src)


def stage_steps(total: int, fractions: list[float]) -> list[int]:
    steps = [max(1, int(round(total * f))) for f in fractions[:-1]]
    return [*steps, max(1, total - sum(steps))]


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name.replace("->", "_to_").replace("=", "")).strip("_")


def lr_tag(lr) -> str:
    if lr is None:
        return "none"
    return "+".join(f"{x:g}" for x in lr) if isinstance(lr, (list, tuple)) else f"{lr:g}"


def run_path(out: Path, method: str, lr, seed: int) -> Path:
    return out / "runs" / slug(method) / f"lr{lr_tag(lr)}_s{seed}.json"


# ------------------------------------------------------------------ CPU: data, base, training


def prepare(cfg: dict, quick: bool) -> tuple[Path, Path]:
    from scripts.data.make_arith_dataset import main as make_data
    from scripts.models.make_arith_base import main as make_base

    d, b = cfg["data"], cfg["base"]
    data = REPO / d["dir"]
    if not (data / "test_ood.parquet").exists():
        make_data(["--out", str(data), "--levels", ",".join(map(str, d["levels"])),
                   "--train-weights", ",".join(map(str, d["train_weights"])), "--train", str(d["train"]),
                   "--test", str(d["test"]), "--val", str(d["val"]),
                   "--ood-levels", ",".join(map(str, d["ood_levels"])), "--ood-test", str(d["ood_test"])])
    steps = cfg["quick"]["warmup_steps"] if quick else b["warmup_steps"]
    base = REPO / (b["dir"] + ("-quick" if quick else ""))
    make_base(["--out", str(base), "--test", str(data / "test.parquet"), "--steps", str(steps),
               "--warmup-levels", ",".join(map(str, b["warmup_levels"])),
               *(["--warmup-weights", ",".join(map(str, b["warmup_weights"]))] if b.get("warmup_weights") else []),
               *(["--threads", str(b["threads"])] if b.get("threads") else []),
               "--exclude", f"{data / 'val.parquet'},{data / 'test_ood.parquet'}"])
    return data, base


def eval_sets(cfg: dict, data: Path, quick: bool) -> dict:
    """The fixed evaluation rows: val, test (ID), test_ood, passk subset (first rows per level)."""
    import pandas as pd

    def head_per_level(df, k):
        lv = df["extra_info"].map(lambda e: int(e["level"]))
        return df[lv.groupby(lv).cumcount() < k].reset_index(drop=True) if k else df.reset_index(drop=True)

    q = cfg["quick"]
    k = q["eval_per_level"] if quick else 0
    sets = {"val": head_per_level(pd.read_parquet(data / "val.parquet"), k),
            "test": head_per_level(pd.read_parquet(data / "test.parquet"), k),
            "ood": head_per_level(pd.read_parquet(data / "test_ood.parquet"), k)}
    per = q["passk_per_level"] if quick else cfg["passk"]["per_level"]
    sets["passk"] = pd.concat([head_per_level(sets["test"], per), head_per_level(sets["ood"], per)],
                              ignore_index=True)
    return sets


def _kill_group(proc: subprocess.Popen):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def train_stage(steps: int, work: Path, overrides: list[str], exp: str, log_prefix: str) -> tuple[Path, list[dict]]:
    """One ``main_hpt`` run in its own process group (killed afterwards, Ray's helpers included);
    returns the final HF folder and the per-step metrics."""
    from verl_ext.tasks.report import read_metrics

    work.mkdir(parents=True, exist_ok=True)
    metrics, ckpt = work / "metrics.jsonl", work / "checkpoints"
    if metrics.exists():
        metrics.unlink()
    cmd = [sys.executable, "-m", "recipe.hpt.main_hpt", f"+exp={exp}", "trainer.logger=[file]",
           f"trainer.total_training_steps={steps}", f"trainer.save_freq={steps}", "trainer.test_freq=-1",
           "trainer.val_before_train=false", f"trainer.default_local_dir={ckpt}", "trainer.resume_mode=disable",
           "actor_rollout_ref.actor.checkpoint.save_contents=[hf_model]", *overrides]
    env = dict(os.environ, VERL_FILE_LOGGER_PATH=str(metrics), PYTHONUNBUFFERED="1")
    print(f"{log_prefix} training {steps} steps: {shlex.join(cmd[2:])}", flush=True)
    with open(work / "train.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait()
        finally:
            _kill_group(proc)
    final = ckpt / f"global_step_{steps}" / "actor" / "huggingface"
    if rc != 0 or not final.exists():
        tail = (work / "train.log").read_text()[-3000:]
        raise RuntimeError(f"training failed (exit {rc}; {work / 'train.log'}):\n{tail}")
    return final, read_metrics(metrics)


def dynamics(rows: list[dict], offset: int = 0, n: int = 1, max_len: int = 48) -> dict:
    """Per-step dynamics and token/time totals of one stage's metrics."""
    dyn = {k: [] for k in DYN_KEYS}
    steps, gen_tokens, trained_tokens, gen_s = [], 0.0, 0.0, 0.0
    known = [r["hpt/response_length/rl"] for r in rows
             if r.get("hpt/rows/rollout", 0) and "hpt/response_length/rl" in r]
    for r in rows:
        steps.append(r["step"] + offset)
        # the SFT baseline's rollout manager returns the demonstrations without generating
        generated = not any("demo_rollout_s" in k for k in r) and float(r.get("timing_s/gen", 0.0) or 0.0) > 0
        for k, key in DYN_KEYS.items():
            ok = r.get(key) is not None and (generated or k not in ("pass_rate", "response_length"))
            dyn[k].append(float(r[key]) if ok else None)
        rl_rows, demo_rows = r.get("hpt/rows/rollout", 0), r.get("hpt/rows/demo", 0)
        rl_len, demo_len = r.get("hpt/response_length/rl", 0.0), r.get("hpt/response_length/demo", 0.0)
        trained_tokens += rl_rows * rl_len + demo_rows * demo_len
        if "hpt/gen/tokens" in r:
            gen_tokens += float(r["hpt/gen/tokens"])  # the trainer's count (staged runs: rows drawn only)
        elif generated:
            # runs from before the trainer logged hpt/gen/tokens: every question's n rollouts (gated ones
            # included) at the RL rows' mean length of this step; a step whose questions were all gated
            # (no RL row kept) uses the run's mean RL length, or the response cap if no step kept one
            est_len = rl_len if rl_rows else (sum(known) / len(known) if known else float(max_len))
            gen_tokens += r.get("hpt/questions", 0) * n * est_len
        gen_s += float(r.get("timing_s/gen", 0.0) or 0.0)
    return {"step": steps, **dyn, "generated_tokens_est": gen_tokens, "trained_tokens": trained_tokens,
            "generation_s": gen_s}


def evaluate_model(path: Path, sets: dict, cfg: dict, quick: bool, seed: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl_ext.arena.evaluate import correct_counts

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    samples = cfg["quick"]["passk_samples"] if quick else cfg["passk"]["samples"]
    res = {}
    for name in ("val", "test", "ood"):
        rows = sets[name]
        counts, texts = correct_counts(model, tok, rows, keep_text=6 if name == "test" else 0)
        res[name] = {"levels": [int(e["level"]) for e in rows["extra_info"]], "correct": "".join(map(str, counts))}
        if texts:
            res["samples"] = texts
    counts, _ = correct_counts(model, tok, sets["passk"], temperature=1.0, samples=samples, seed=seed)
    res["passk"] = {"levels": [int(e["level"]) for e in sets["passk"]["extra_info"]], "samples": samples,
                    "counts": counts}
    return res


def accuracy(block: dict) -> float:
    c = block["correct"]
    return sum(ch == "1" for ch in c) / max(len(c), 1)


def base_settings(base: Path) -> dict | None:
    """The base model's build settings (hpt_base.json), stored in every run so that a rerun never
    mixes results of two bases."""
    marker = Path(base) / "hpt_base.json"
    return json.loads(marker.read_text()).get("settings") if marker.exists() else None


def run_one(cfg, common, methods, name, lr, seed, steps, q, data, base, sets, out, quick, work_root) -> dict:
    path = run_path(out, name, lr, seed)
    setting = {"steps": steps, "questions_per_step": q, "quick": quick, "base_settings": base_settings(base)}
    if path.exists():
        done = json.loads(path.read_text())
        differs = {k: (done.get(k), v) for k, v in setting.items() if done.get(k) != v}
        if differs:
            raise SystemExit(f"{path} was run under another setting ({differs}; stored, now): move it away "
                             f"or pass another --out; results of two settings are never mixed")
        return done
    with run_lock(work_root / slug(name) / f"lr{lr_tag(lr)}_s{seed}.lock", f"{name} lr={lr_tag(lr)} s={seed}"):
        if path.exists():  # finished by another invocation between the check above and the lock
            return json.loads(path.read_text())
        return _train_and_evaluate(cfg, common, methods, name, lr, seed, steps, q, data, base, sets, out, quick,
                                   work_root, path, setting)


@contextmanager
def run_lock(path: Path, what: str):
    """One process per (method, lr, seed): two arena invocations sharing ``runs/`` (e.g. two
    ``--methods`` lanes) would otherwise train the same run into the same work folder, and each
    would read the other's metrics. The lock file holds the owner's pid; a second invocation stops
    with the owner's pid, and a lock whose pid is gone (a killed run) is taken over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        pid, alive = 0, True
        try:
            pid = int(path.read_text().strip() or 0)
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, FileNotFoundError):
            alive = False
        except PermissionError:  # another user's live process
            pass
        if not alive:
            path.unlink(missing_ok=True)  # stale: its owner is gone
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        else:
            raise SystemExit(f"run {what} is being trained by process {pid} ({path}); "
                             f"wait for it, or remove the lock if that process is not an arena") from None
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _train_and_evaluate(cfg, common, methods, name, lr, seed, steps, q, data, base, sets, out, quick, work_root,
                        path, setting) -> dict:
    t0 = time.time()
    rec = {"method": name, "lr": lr, "seed": seed, **setting}
    if methods[name].get("train", True) is False:
        model, stage_recs, dyn = base, [], None
    else:
        stages = stages_of(methods, name)
        lrs = lr if isinstance(lr, (list, tuple)) else [lr] * len(stages)
        model, stage_recs, offset = base, [], 0
        dyn = None
        for i, ((st_method, _), n_steps, st_lr) in enumerate(zip(stages, stage_steps(steps, [f for _, f in stages]),
                                                                  lrs)):
            ov = method_overrides(common, methods, st_method, "cpu")
            n_roll = next((int(o.split("=")[1]) for o in reversed(ov)
                           if o.startswith("actor_rollout_ref.rollout.n=")), 4)
            extra = [f"data.train_files={data / 'train.parquet'}", f"data.val_files={data / 'val.parquet'}",
                     f"actor_rollout_ref.model.path={model}", f"data.train_batch_size={q}",
                     f"actor_rollout_ref.actor.ppo_mini_batch_size={q}", f"actor_rollout_ref.actor.optim.lr={st_lr}",
                     f"data.seed={seed}", f"actor_rollout_ref.rollout.seed={seed}", "trainer.total_epochs=100",
                     f"trainer.experiment_name=arena_{slug(name)}_{i}"]
            work = work_root / slug(name) / f"lr{lr_tag(lr)}_s{seed}" / f"stage{i}"
            ts = time.time()
            model, rows = train_stage(n_steps, work, [*ov, *extra], cfg["exp"], f"[{name} lr={lr_tag(lr)} s={seed}]")
            d = dynamics(rows, offset, n_roll)
            stage_recs.append({"method": st_method, "steps": n_steps, "lr": st_lr, "overrides": ov,
                               "seconds": round(time.time() - ts, 1)})
            offset += n_steps
            if dyn is None:
                dyn = d
            else:
                for k in ("step", *DYN_KEYS):
                    dyn[k] += d[k]
                for k in ("generated_tokens_est", "trained_tokens", "generation_s"):
                    dyn[k] += d[k]
    te = time.time()
    rec.update(evaluate_model(model, sets, cfg, quick, seed))
    rec["stages"] = stage_recs
    if dyn is not None:
        rec["generated_tokens_est"] = round(dyn.pop("generated_tokens_est"))
        rec["trained_tokens"] = round(dyn.pop("trained_tokens"))
        rec["generation_s"] = round(dyn.pop("generation_s"), 1)
        rec["dynamics"] = dyn
    else:
        rec.update(generated_tokens_est=0, trained_tokens=0, generation_s=0.0)
    rec["eval_s"] = round(time.time() - te, 1)
    rec["wall_s"] = round(time.time() - t0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec))
    tmp.replace(path)
    if work_root.exists() and dyn is not None:
        shutil.rmtree(work_root / slug(name) / f"lr{lr_tag(lr)}_s{seed}", ignore_errors=True)
    print(f"[{name} lr={lr_tag(lr)} s={seed}] val {100 * accuracy(rec['val']):.1f}  "
          f"test {100 * accuracy(rec['test']):.1f}"
          f"  ood {100 * accuracy(rec['ood']):.1f}  ({rec['wall_s']:.0f}s)", flush=True)
    return rec


# ------------------------------------------------------------------ lr selection


def select_lrs(out: Path, methods: dict, names: list[str], lrs: list[float], seed0: int) -> dict:
    """Best validation accuracy over the grid (seed ``seed0``) for every method with its own grid;
    ties go to the smaller lr. Reads the run JSONs; writes lr_selection.json."""
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
    need = []
    for name in names:
        for n in (lr_sources(methods, name) or [name]):
            if methods[n].get("train", True) is not False and n not in need:
                need.append(n)
    return need


# ------------------------------------------------------------------ report


def _matrix(runs: list[dict], block: str):
    import numpy as np

    return np.array([[int(c) for c in r[block]["correct"]] for r in runs])


def _level_cols(runs: list[dict], block: str) -> list[int]:
    return sorted(set(runs[0][block]["levels"]))


def report(out: Path, methods: dict, names: list[str] | None = None) -> str:
    """Rebuild table.md, passk.png, tokens.png, dynamics.png and base_passk.md from the run JSONs alone."""
    import numpy as np

    from verl_ext.arena.stats import bootstrap_ci, paired_bootstrap, pass_at_k_curve, seed_mean_std

    all_runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/*.json"))]
    if not all_runs:
        raise SystemExit(f"no run JSONs under {out / 'runs'}")
    planned = json.loads((out / "arena.json").read_text()).get("lrs") if (out / "arena.json").exists() else None
    # every method of methods.yaml with results, in its order (arena.json names only the last
    # invocation's methods, and several invocations may have filled runs/)
    order = [n for n in (names or list(methods)) if n in methods]
    if names is None:
        order = [n for n in order if any(r["method"] == n for r in all_runs)]
    seed0 = min(r["seed"] for r in all_runs)
    lrs = sorted({r["lr"] for r in all_runs if isinstance(r["lr"], float)})
    sel = select_lrs(out, methods, list(dict.fromkeys(needed_grid_methods(methods, order) + order)), lrs, seed0)
    (out / "lr_selection.json").write_text(json.dumps(sel, indent=2))

    final = {}
    for name in order:
        if methods[name].get("train", True) is False:
            runs = [r for r in all_runs if r["method"] == name]
        elif name in sel:
            want = sel[name]["selected"]
            runs = [r for r in all_runs if r["method"] == name and r["lr"] == want]
        else:
            runs = []
        if runs:
            final[name] = sorted(runs, key=lambda r: r["seed"])
    if not final:
        raise SystemExit("no finished method to report")
    any_run = next(iter(final.values()))[0]
    id_levels, ood_levels = _level_cols([any_run], "test"), _level_cols([any_run], "ood")

    stats = {}
    for name, runs in final.items():
        s = {"seeds": [r["seed"] for r in runs], "lr": runs[0]["lr"]}
        for block in ("test", "ood"):
            mat = _matrix(runs, block)
            levels = np.array(runs[0][block]["levels"])
            mean, std = seed_mean_std(mat)
            _, lo, hi = bootstrap_ci(mat)
            s[block] = {"mean": mean, "std": std, "low": lo, "high": hi,
                        "levels": {int(lv): float(mat[:, levels == lv].mean()) for lv in sorted(set(levels))}}
        s["generated_tokens_est"] = float(np.mean([r["generated_tokens_est"] for r in runs]))
        s["trained_tokens"] = float(np.mean([r["trained_tokens"] for r in runs]))
        s["wall_s"] = float(np.mean([r["wall_s"] for r in runs]))
        stats[name] = s
    bests = {}
    for block in ("test", "ood"):
        best = bests[block] = max(stats, key=lambda n: stats[n][block]["mean"])
        for name in stats:
            if name == best:
                stats[name][block]["vs_best"] = "best"
                continue
            cmp = paired_bootstrap(_matrix(final[name], block), _matrix(final[best], block))
            stats[name][block]["vs_best"] = cmp
        # the gain over the untrained base, paired on the same problems: what the issue's "the best
        # method gains on the base by many times the interval" is read from
        for name in stats:
            if "base" in final and name != "base":
                stats[name][block]["vs_base"] = paired_bootstrap(_matrix(final[name], block),
                                                                 _matrix(final["base"], block))
    (out / "stats.json").write_text(json.dumps({"best": bests, "methods": stats}, indent=2))

    def pct(x):
        return f"{100 * x:.1f}"

    def sig(v):
        if v == "best":
            return "best"
        if v is None:
            return "-"
        return (f"{100 * v['diff']:+.1f} [{100 * v['low']:+.1f}, {100 * v['high']:+.1f}]"
                + (" *" if v["significant"] else ""))

    n_test, n_ood = len(any_run["test"]["correct"]), len(any_run["ood"]["correct"])
    head = ("| method | lr | seeds | ID mean ± std | ID 95% CI | " + " | ".join(f"L{lv}" for lv in id_levels)
            + " | ID vs best | ID vs base | OOD mean ± std | OOD 95% CI | " + " | ".join(f"L{lv}" for lv in ood_levels)
            + " | OOD vs best | OOD vs base | gen. tokens | trained tokens | wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, s in ((n, stats[n]) for n in final):
        t, o = s["test"], s["ood"]
        lines.append(
            f"| {name} | {lr_tag(s['lr']) if s['lr'] is not None else '-'} | {len(s['seeds'])} | "
            f"{pct(t['mean'])} ± {pct(t['std'])} | [{pct(t['low'])}, {pct(t['high'])}] | "
            + " | ".join(pct(t["levels"][lv]) for lv in id_levels)
            + f" | {sig(t['vs_best'])} | {sig(t.get('vs_base'))} | {pct(o['mean'])} ± {pct(o['std'])} | "
            + f"[{pct(o['low'])}, {pct(o['high'])}] | " + " | ".join(pct(o["levels"][lv]) for lv in ood_levels)
            + f" | {sig(o['vs_best'])} | {sig(o.get('vs_base'))} | {s['generated_tokens_est']:.0f}"
            + f" | {s['trained_tokens']:.0f}"
            + f" | {s['wall_s']:.0f} |")
    sel_lines = ["| method | grid: validation accuracy % (test %) | selected lr |", "|---|---|---|"]
    for name in order:
        if name not in sel or not (sel[name].get("grid") or name in final):  # a reused lr: listed once run
            continue
        g = sel[name].get("grid")
        grid = ", ".join(f"{k}: {pct(v['val'])} ({pct(v['test'])})" for k, v in g.items()) if g else \
            f"reuses {', '.join(sel[name]['reused_from'])}"
        n_grid = len(planned or lrs)
        partial = f" (grid: {len(g)} of {n_grid} points so far)" if g and len(g) < n_grid else ""
        sel_lines.append(f"| {name} | {grid} | {lr_tag(sel[name]['selected'])}{partial} |")
    base_val = None
    if "base" in final:
        base_val = float(np.mean([accuracy(r["val"]) for r in final["base"]]))
    degenerate = []
    for name in order:
        g = (sel.get(name) or {}).get("grid")
        if g and base_val is not None and all(v["val"] < 0.5 * base_val for v in g.values()):
            degenerate.append(name)
    md = [f"# Arena: held-out accuracy (%), greedy; ID = {n_test} test problems of levels {id_levels}, "
          f"OOD = {n_ood} problems of levels {ood_levels} (never trained on)", "",
          f"Steps per method: {any_run['steps']} × {any_run['questions_per_step']} questions; "
          "mean ± std over seeds; 95% CI: bootstrap over problems and seeds; 'vs best' / 'vs base': paired "
          "bootstrap difference to the best method / to the base, with its 95% CI, * = significant (CI excludes 0).",
          "",
          *lines, "", "## Learning-rate selection (validation split, disjoint from test)", "", *sel_lines, ""]
    if degenerate:
        md += ["## Degenerate at every grid point (validation < half the base's)", ""]
        for name in degenerate:
            r = json.loads(run_path(out, name, sel[name]["selected"], seed0).read_text())
            md += [f"- {name}: " + "; ".join(f"`{s['question']}` -> `{s['response'][:60]}`"
                                            for s in r.get("samples", [])[:3])]
        md.append("")

    # pass@k
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_samples = any_run["passk"]["samples"]
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n_samples]
    # one colour per method in every plot; tab20 past 10 methods, where tab10 would repeat colours
    cmap = plt.get_cmap("tab20" if len(final) > 10 else "tab10")
    colour = {name: cmap(i) for i, name in enumerate(final)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    passk = {}
    for name, runs in final.items():
        for ax, (label, is_ood) in zip(axes, (("ID", False), ("OOD", True))):
            curves = []
            for r in runs:
                lv = np.array(r["passk"]["levels"])
                sel_rows = np.isin(lv, ood_levels) if is_ood else ~np.isin(lv, ood_levels)
                counts = np.array(r["passk"]["counts"])[sel_rows]
                c = pass_at_k_curve(counts, n_samples, ks)
                curves.append([c[k] for k in ks])
            m = np.mean(curves, axis=0)
            passk.setdefault(name, {})[label] = {int(k): float(v) for k, v in zip(ks, m)}
            ax.plot(ks, 100 * m, marker="o", label=name, color=colour[name])
            ax.set_title(f"pass@k at temperature 1 ({label} subset)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "passk.png", dpi=110)
    plt.close(fig)
    md += ["## pass@k at temperature 1 (fixed subset; mean over seeds; passk.png)", "",
           "| method | " + " | ".join(f"ID@{k}" for k in ks) + " | " + " | ".join(f"OOD@{k}" for k in ks) + " |",
           "|---|" + "---|" * (2 * len(ks))]
    for name, pk in passk.items():
        md.append(f"| {name} | " + " | ".join(pct(pk["ID"][k]) for k in ks) + " | "
                  + " | ".join(pct(pk["OOD"][k]) for k in ks) + " |")
    md.append("")

    # base pass@k per level: which regime each level is in
    if "base" in final:
        r = final["base"][0]
        lv = np.array(r["passk"]["levels"])
        counts = np.array(r["passk"]["counts"])
        bl = ["## Base model: pass@k per level (temperature 1)", "",
              "| level | problems | greedy (test) | " + " | ".join(f"pass@{k}" for k in ks) + " |",
              "|---|---|---|" + "---|" * len(ks)]
        for level in sorted(set(lv)):
            c = pass_at_k_curve(counts[lv == level], n_samples, ks)
            block = "ood" if level in ood_levels else "test"
            greedy = stats["base"][block]["levels"].get(int(level), float("nan"))
            bl.append(f"| {level} | {int((lv == level).sum())} | {pct(greedy)} | "
                      + " | ".join(pct(c[k]) for k in ks) + " |")
        (out / "base_passk.md").write_text("\n".join(bl) + "\n")
        md += bl + [""]

    # accuracy against generation cost: one point per method (issue 16's staged-generation question)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (block, label) in zip(axes, (("test", "ID"), ("ood", "OOD"))):
        for name, s in stats.items():
            b = s[block]
            x = s["generated_tokens_est"] / 1e3
            ax.errorbar([x], [100 * b["mean"]], yerr=[[100 * (b["mean"] - b["low"])], [100 * (b["high"] - b["mean"])]],
                        fmt="o", capsize=3, label=name, color=colour[name])
            ax.annotate(name, (x, 100 * b["mean"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_title(f"{label} accuracy vs generated tokens (95 % CI)")
        ax.set_xlabel("generated tokens per run (thousands; mean over seeds)")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "tokens.png", dpi=110)
    plt.close(fig)

    # dynamics: mean over seeds, min-max band
    # the same colours in all four panels: a method without a series in one panel (SFT has no rollout
    # pass rate) must not shift the colour cycle of the methods after it
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    handles = {}
    for ax, key in zip(axes.flat, DYN_KEYS):
        for name, runs in final.items():
            series = [r["dynamics"] for r in runs if r.get("dynamics")]
            if not series:
                continue
            steps = series[0]["step"]
            vals = np.array([[np.nan if v is None else v for v in s[key]][: len(steps)] for s in series
                             if len(s[key]) >= len(steps)], dtype=float)
            if vals.size == 0 or np.all(np.isnan(vals)):
                continue
            mean = np.nanmean(vals, axis=0)
            handles[name], = ax.plot(steps, mean, label=name, linewidth=1.2, color=colour[name])
            ax.fill_between(steps, np.nanmin(vals, axis=0), np.nanmax(vals, axis=0), alpha=0.2, color=colour[name])
        ax.set_title(f"{key} (mean over seeds, band = min..max)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    # the legend names every method drawn in any panel, in methods.yaml's order
    axes.flat[0].legend([handles[n] for n in final if n in handles], [n for n in final if n in handles], fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "dynamics.png", dpi=110)
    plt.close(fig)
    md += ["Plots: passk.png, tokens.png (accuracy vs generated tokens), dynamics.png. "
           "Per-run JSONs: runs/<method>/lr<lr>_s<seed>.json.", ""]
    text = "\n".join(md)
    (out / "table.md").write_text(text)
    return text


# ------------------------------------------------------------------ GPU scale (compose only)


def _expand(value: str) -> str:
    defaults = {"MODEL_DIR": str(Path.home() / "models"), "DATA_DIR": str(REPO / "data"),
                "CKPT_DIR": str(REPO / "checkpoints")}
    return re.sub(r"\$\{(\w+)\}", lambda m: os.environ.get(m.group(1), defaults.get(m.group(1), m.group(0))), value)


def scale_commands(scale_file: Path, common, methods, names, lrs=None, seeds=None, steps=None,
                   selected: dict | None = None) -> list[dict]:
    """Every launch of the GPU arena: {"method", "lr", "seed", "stage", "overrides", "command"}.
    Without ``selected`` lrs, every grid point of every seed; chains use the grid of their sources
    pairwise (stage i at lr of the i-th source's grid point) unless ``selected`` names them."""
    sc = yaml.safe_load(scale_file.read_text())
    lrs = lrs or [float(x) for x in sc["lrs"]]
    seeds = seeds if seeds is not None else list(sc["seeds"])
    steps = steps or int(sc["steps"])
    val = "[" + ",".join(f"{_expand(sc['val_dir'])}/{b}.parquet" for b in sc["val_files"]) + "]"
    base = [f"actor_rollout_ref.model.path={_expand(sc['model'])}", f"data.train_files={_expand(sc['train_files'])}",
            f"data.val_files={val}", f"trainer.nnodes={sc['nnodes']}", f"trainer.n_gpus_per_node={sc['gpus_per_node']}",
            *sc.get("overrides", [])]
    out = []
    for name in names:
        m = methods[name]
        if m.get("train", True) is False:
            continue
        stages = stages_of(methods, name)
        fr = stage_steps(steps, [f for _, f in stages])
        grid = [selected[name]] if selected and name in selected else lrs
        for lr in grid:
            for seed in seeds:
                tag = f"arena_{sc['name']}_{slug(name)}_lr{lr_tag(lr)}_s{seed}"
                model = None
                for i, ((st, _), n_steps) in enumerate(zip(stages, fr)):
                    st_lr = lr[i] if isinstance(lr, (list, tuple)) else lr
                    exp_name = tag + (f"_stage{i}" if len(stages) > 1 else "")
                    ckpt = f"{_expand(sc['ckpt_dir'])}/{exp_name}"
                    ov = [*base, *method_overrides(common, methods, st, "gpu"),
                          f"actor_rollout_ref.actor.optim.lr={st_lr:g}", f"trainer.total_training_steps={n_steps}",
                          f"data.seed={seed}", f"actor_rollout_ref.rollout.seed={seed}",
                          f"trainer.experiment_name={exp_name}", f"trainer.default_local_dir={ckpt}"]
                    if model is not None:
                        ov = [o for o in ov if not o.startswith("actor_rollout_ref.model.path=")]
                        ov.insert(0, f"actor_rollout_ref.model.path={model}")
                    cmd = ["python", "-m", "recipe.hpt.main_hpt", f"+exp={sc['exp']}", *ov]
                    out.append({"method": name, "lr": lr, "seed": seed, "stage": i,
                                "overrides": [f"+exp={sc['exp']}", *ov],
                                "command": shlex.join(cmd)})
                    model = f"{ckpt}/global_step_{n_steps}/actor/huggingface"
    return out


def validate_overrides(overrides: list[str]) -> None:
    """Compose as main_hpt does (Hydra compose API, config hpt_trainer) and run the project's gate and
    UPGE validators and verl's config validation (as tests/test_configs.py)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from verl_ext.hpt.gate import GateConfig
    from verl_ext.loss.config import load_upge_config

    GlobalHydra.instance().clear()
    old = os.getcwd()
    os.chdir(REPO)
    try:
        with initialize_config_dir(config_dir=str(REPO / "recipe" / "hpt" / "config"), version_base=None):
            cfg = compose(config_name="hpt_trainer", overrides=overrides)
    finally:
        os.chdir(old)
        GlobalHydra.instance().clear()
    gate = GateConfig.from_mapping(OmegaConf.to_container(cfg.hpt.gate, resolve=True))
    loss = load_upge_config(cfg.hpt.loss)
    if gate.strategy != "always" and loss.rollout is None:
        raise ValueError(f"gate {gate.strategy} keeps rollouts but hpt.loss.rollout is null")
    if gate.strategy != "never":
        for arm in gate.demo_arms:
            if loss.arm(arm) is None:
                raise ValueError(f"gate {gate.strategy} builds {arm} rows but hpt.loss.{arm} is null")
    from verl.experimental.reward_loop import migrate_legacy_reward_impl
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    c = migrate_legacy_reward_impl(OmegaConf.create(OmegaConf.to_container(cfg)))
    OmegaConf.resolve(c)
    omega_conf_to_dataclass(c.actor_rollout_ref.actor)
    omega_conf_to_dataclass(c.actor_rollout_ref.rollout)
    omega_conf_to_dataclass(c.algorithm)
    validate_config(config=c, use_reference_policy=need_reference_policy(c), use_critic=need_critic(c))
    return cfg


# ------------------------------------------------------------------ main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=None, help="comma-separated method names (configs/arena/methods.yaml)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: configs/arena/cpu.yaml)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer-step budget per method (chains split it)")
    ap.add_argument("--lrs", default=None, help="comma-separated lr grid")
    ap.add_argument("--quick", action="store_true", help="CI: 2 methods, 1 seed, 2 steps, tiny evaluation sets")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs trained at once (each its own process; 2 on 2 cores: a run keeps about one busy)")
    ap.add_argument("--report", action="store_true", help="rebuild table and plots from the result JSONs only")
    ap.add_argument("--out", default="results/arena")
    ap.add_argument("--work", default=None, help="checkpoints and logs (default outputs/arena_work/<out name>)")
    ap.add_argument("--methods-file", default=str(METHODS_FILE))
    ap.add_argument("--config", default=str(CPU_FILE))
    ap.add_argument("--scale", default=None, help="GPU scale config (configs/arena/scale_*.yaml): compose launches")
    ap.add_argument("--dry-run", action="store_true", help="with --scale: print and validate every command")
    args = ap.parse_args(argv)

    common, methods = load_methods(Path(args.methods_file))
    cfg = yaml.safe_load(Path(args.config).read_text())
    names = [n.strip() for n in args.methods.split(",")] if args.methods else None
    if args.quick and names is None:
        names = list(cfg["quick"]["methods"])
    names = names or list(methods)
    unknown = [n for n in names if n not in methods]
    if unknown:
        ap.error(f"unknown methods {unknown}; known: {list(methods)}")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    lrs = [float(x) for x in args.lrs.split(",")] if args.lrs else None
    out = Path(args.out)
    if not out.is_absolute():
        out = REPO / out

    if args.scale:
        cmds = scale_commands(Path(args.scale), common, methods, names, lrs, seeds, args.steps)
        for c in cmds:
            print(c["command"])
            if args.dry_run:
                validate_overrides(c["overrides"])
        print(f"# {len(cmds)} commands" + (", each composed and validated" if args.dry_run else ""), flush=True)
        if not args.dry_run:
            print("# run them on the cluster in order (chain stages after their predecessor)")
        return cmds

    if args.report:
        text = report(out, methods, names if args.methods else None)
        print(text)
        return text

    quick = args.quick
    q = cfg["quick"]
    seeds = seeds or (q["seeds"] if quick else cfg["seeds"])
    lrs = lrs or [float(x) for x in (q["lrs"] if quick else cfg["lrs"])]
    steps = args.steps or (q["steps"] if quick else cfg["steps"])
    qps = cfg["questions_per_step"]
    work_root = Path(args.work) if args.work else REPO / "outputs" / "arena_work" / out.name
    os.chdir(REPO)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data, base = prepare(cfg, quick)
    sets = eval_sets(cfg, data, quick)
    order = (["base"] if "base" in methods and "base" not in names else []) + names
    (out / "arena.json").write_text(json.dumps({"methods": order, "seeds": seeds, "lrs": lrs, "steps": steps,
                                                "questions_per_step": qps, "quick": quick,
                                                "eval_rows": {k: len(v) for k, v in sets.items()}}, indent=2))
    ctx = dict(cfg=cfg, common=common, methods=methods, steps=steps, q=qps, data=data, base=base, sets=sets,
               out=out, quick=quick, work_root=work_root)

    def go_all(runs: list[tuple]):
        """(method, lr, seed) runs, ``--jobs`` at a time: each trains in its own process (its own Ray),
        so independent runs overlap; a finished run's JSON is skipped as always."""
        if args.jobs <= 1:
            for name, lr, seed in runs:
                run_one(name=name, lr=lr, seed=seed, **ctx)
            return
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for _ in pool.map(lambda r: run_one(name=r[0], lr=r[1], seed=r[2], **ctx), runs):
                pass

    # the lr grid (and the base) always at the arena's first seed, whatever --seeds asks for: a
    # later `--seeds 1,2` adds seeds at the selected lr and never re-runs the grid at seed 1
    grid_seed = int((q["seeds"] if quick else cfg["seeds"])[0])
    if "base" in methods:
        go_all([("base", None, grid_seed)])
    go_all([(name, lr, grid_seed) for name in needed_grid_methods(methods, [n for n in names if n != "base"])
            for lr in lrs])
    sel = select_lrs(out, methods, list(dict.fromkeys(needed_grid_methods(methods, names) + names)), lrs, grid_seed)
    go_all([(name, sel[name]["selected"], seed) for name in names if methods[name].get("train", True) is not False
            for seed in seeds])
    # every method with results, not only this invocation's: runs/ is shared by all invocations
    text = report(out, methods)
    print(text)
    print(f"arena finished in {time.time() - t0:.0f}s; results in {out}")
    return text


if __name__ == "__main__":
    main()
