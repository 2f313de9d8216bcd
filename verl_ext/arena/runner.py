"""Running the CPU arena: its data and base, one ``main_hpt`` process per training stage, the
evaluation of each run, and one result JSON per (method, lr, seed).

A run's JSON is its only result: a rerun skips finished JSONs (so the arena resumes after any
stop) but refuses one written under another setting (steps, questions per step, the base's build
settings and its weights' fingerprint, ``verl_ext.arena.fingerprint``), so results of two settings
or two bases are never mixed. A lock per run lets several invocations share one ``runs/``
folder (e.g. ``--methods`` lanes) without training the same run twice.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from verl_ext.arena import REPO
from verl_ext.arena.fingerprint import base_fingerprint
from verl_ext.arena.methods import accuracy, lr_tag, method_overrides, run_path, slug, stage_steps, stages_of
from verl_ext.tasks.report import DYNAMICS

# what every run records per training step: short name -> verl metric key
DYN_KEYS = {name: key for name, (_, key) in DYNAMICS.items()}


@dataclass(frozen=True)
class ArenaContext:
    """What every run of one arena invocation shares."""

    cfg: dict  # configs/arena/cpu.yaml
    common: list[str]  # methods.yaml's common overrides
    methods: dict  # methods.yaml's methods
    steps: int  # optimizer steps per method (chains split them)
    questions_per_step: int
    data: Path  # the task's parquet folder
    base: Path  # the base model's HF folder
    sets: dict  # eval_sets(): the fixed evaluation rows
    out: Path  # results: runs/, table.md, ...
    quick: bool
    work_root: Path  # checkpoints, logs and locks
    # base_fingerprint(base), hashed once per invocation: run_arena always sets it. None only for a
    # context that trains nothing (it still checks finished JSONs); _train_and_evaluate refuses it
    base_fingerprint: str | None = None


# ------------------------------------------------------------------ data and base


def prepare(cfg: dict, quick: bool) -> tuple[Path, Path]:
    """The task's parquet files and the base model, each built once (both builders reuse a
    finished folder). The builders run in this process with their command lines' arguments."""
    from verl_ext.tasks.arith_base import main as make_base
    from verl_ext.tasks.arith_dataset import main as make_data

    d, b = cfg["data"], cfg["base"]
    task = ["--task", cfg["task"]] if cfg.get("task") else []  # Arena I's config names none: arith
    data = REPO / d["dir"]
    if not (data / "test_ood.parquet").exists():
        make_data([*task, "--out", str(data), "--levels", ",".join(map(str, d["levels"])),
                   "--train-weights", ",".join(map(str, d["train_weights"])), "--train", str(d["train"]),
                   "--test", str(d["test"]), "--val", str(d["val"]),
                   "--ood-levels", ",".join(map(str, d["ood_levels"])), "--ood-test", str(d["ood_test"])])
    steps = cfg["quick"]["warmup_steps"] if quick else b["warmup_steps"]
    base = REPO / (b["dir"] + ("-quick" if quick else ""))
    make_base([*task, "--out", str(base), "--test", str(data / "test.parquet"), "--steps", str(steps),
               "--max-new-tokens", str(max_new_tokens(cfg)),
               "--warmup-levels", ",".join(map(str, b["warmup_levels"])),
               *(["--warmup-weights", ",".join(map(str, b["warmup_weights"]))] if b.get("warmup_weights") else []),
               *(["--threads", str(b["threads"])] if b.get("threads") else []),
               "--exclude", f"{data / 'val.parquet'},{data / 'test_ood.parquet'}"])
    return data, base


def max_new_tokens(cfg: dict) -> int:
    """The response budget of evaluation (and of training, through the config's trainer overrides)."""
    return int(cfg.get("max_new_tokens", 48))


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


def base_settings(base: Path) -> dict | None:
    """The base model's build settings (hpt_base.json), stored in every run next to its weights'
    fingerprint: the fingerprint tells two bases apart (the same settings built on another machine
    give other weights), the settings say how each was built."""
    marker = Path(base) / "hpt_base.json"
    return json.loads(marker.read_text()).get("settings") if marker.exists() else None


# ------------------------------------------------------------------ one training stage


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
    """A run's evaluation blocks: greedy correctness on val / test / ood, sampled pass counts on the
    pass@k subset, a few test responses."""
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
        counts, texts = correct_counts(model, tok, rows, keep_text=6 if name == "test" else 0,
                                       max_new_tokens=max_new_tokens(cfg))
        res[name] = {"levels": [int(e["level"]) for e in rows["extra_info"]], "correct": "".join(map(str, counts))}
        if texts:
            res["samples"] = texts
    counts, _ = correct_counts(model, tok, sets["passk"], temperature=1.0, samples=samples, seed=seed,
                               max_new_tokens=max_new_tokens(cfg))
    res["passk"] = {"levels": [int(e["level"]) for e in sets["passk"]["extra_info"]], "samples": samples,
                    "counts": counts}
    return res


# ------------------------------------------------------------------ one run: resume, lock, train, evaluate


def run_one(ctx: ArenaContext, name: str, lr, seed: int) -> dict:
    """The result of one (method, lr, seed) run: its JSON if finished under the same setting, else
    trained and evaluated now."""
    path = run_path(ctx.out, name, lr, seed)
    setting = {"steps": ctx.steps, "questions_per_step": ctx.questions_per_step, "quick": ctx.quick,
               "base_settings": base_settings(ctx.base), "base_fingerprint": ctx.base_fingerprint}
    if path.exists():
        return finished_run(path, setting, ctx.base)
    with run_lock(ctx.work_root / slug(name) / f"lr{lr_tag(lr)}_s{seed}.lock", f"{name} lr={lr_tag(lr)} s={seed}"):
        if path.exists():  # finished by another invocation between the check above and the lock
            return finished_run(path, setting, ctx.base)
        return _train_and_evaluate(ctx, name, lr, seed, path, setting)


def finished_run(path: Path, setting: dict, base: Path) -> dict:
    """A finished run's JSON, refused (naming the file) if written under another setting. Another
    base's weights are named first: with the same build settings (a base rebuilt on another
    machine) they are the one difference, and a JSON written before fingerprints has none."""
    done = json.loads(path.read_text())
    stored, now = done.get("base_fingerprint"), setting["base_fingerprint"]
    if stored != now:
        raise SystemExit(f"{path} was trained from another base: its base_fingerprint is "
                         f"{stored or 'missing (written before fingerprints)'}, the base {base} has {now}; move it "
                         f"away or pass another --out; results of two bases are never mixed")
    differs = {k: (done.get(k), v) for k, v in setting.items() if done.get(k) != v}
    if differs:
        raise SystemExit(f"{path} was run under another setting ({differs}; stored, now): move it away "
                         f"or pass another --out; results of two settings are never mixed")
    return done


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


def _train_and_evaluate(ctx: ArenaContext, name: str, lr, seed: int, path: Path, setting: dict) -> dict:
    if ctx.base_fingerprint is None:
        raise ValueError(f"{path}: the arena context has no base_fingerprint, and every run trained records "
                         f"its base's; set ArenaContext.base_fingerprint = base_fingerprint({ctx.base})")
    t0 = time.time()
    methods, work_root = ctx.methods, ctx.work_root
    rec = {"method": name, "lr": lr, "seed": seed, **setting}
    if methods[name].get("train", True) is False:
        model, stage_recs, dyn = ctx.base, [], None
    else:
        stages = stages_of(methods, name)
        lrs = lr if isinstance(lr, (list, tuple)) else [lr] * len(stages)
        model, stage_recs, offset = ctx.base, [], 0
        dyn = None
        for i, ((st_method, _), n_steps, st_lr) in enumerate(zip(stages, stage_steps(ctx.steps, [f for _, f in stages]),
                                                                  lrs)):
            ov = method_overrides(ctx.common, methods, st_method, "cpu")
            n_roll = next((int(o.split("=")[1]) for o in reversed(ov)
                           if o.startswith("actor_rollout_ref.rollout.n=")), 4)
            q, data = ctx.questions_per_step, ctx.data
            extra = [f"data.train_files={data / 'train.parquet'}", f"data.val_files={data / 'val.parquet'}",
                     f"actor_rollout_ref.model.path={model}", f"data.train_batch_size={q}",
                     f"actor_rollout_ref.actor.ppo_mini_batch_size={q}", f"actor_rollout_ref.actor.optim.lr={st_lr}",
                     f"data.seed={seed}", f"actor_rollout_ref.rollout.seed={seed}", "trainer.total_epochs=100",
                     f"trainer.experiment_name=arena_{slug(name)}_{i}", *ctx.cfg.get("overrides", [])]
            work = work_root / slug(name) / f"lr{lr_tag(lr)}_s{seed}" / f"stage{i}"
            ts = time.time()
            model, rows = train_stage(n_steps, work, [*ov, *extra], ctx.cfg["exp"],
                                      f"[{name} lr={lr_tag(lr)} s={seed}]")
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
    rec.update(evaluate_model(model, ctx.sets, ctx.cfg, ctx.quick, seed))
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


# ------------------------------------------------------------------ the whole CPU arena


def run_arena(cfg: dict, common: list[str], methods: dict, names: list[str], out: Path, *, seeds=None, lrs=None,
              steps: int | None = None, quick: bool = False, jobs: int = 1, work: str | None = None) -> str:
    """Every run ``names`` need (the base, the lr grids, the seeds at the selected lrs), then the
    report over every method with results. ``seeds``, ``lrs``, ``steps`` default to cpu.yaml's
    (its ``quick`` block with ``quick``); ``work`` to outputs/arena_work/<out's name>."""
    from verl_ext.arena.report import report
    from verl_ext.arena.selection import needed_grid_methods, select_lrs

    q = cfg["quick"]
    seeds = seeds or (q["seeds"] if quick else cfg["seeds"])
    lrs = lrs or [float(x) for x in (q["lrs"] if quick else cfg["lrs"])]
    steps = steps or (q["steps"] if quick else cfg["steps"])
    qps = cfg["questions_per_step"]
    # a relative --work is taken from the repository root, as every other path of the arena
    work_root = Path(work) if work else REPO / "outputs" / "arena_work" / out.name
    os.chdir(REPO)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data, base = prepare(cfg, quick)
    fingerprint = base_fingerprint(base)  # once per invocation: every run of it records this one
    sets = eval_sets(cfg, data, quick)
    order = (["base"] if "base" in methods and "base" not in names else []) + names
    (out / "arena.json").write_text(json.dumps({"methods": order, "seeds": seeds, "lrs": lrs, "steps": steps,
                                                "questions_per_step": qps, "quick": quick,
                                                "eval_rows": {k: len(v) for k, v in sets.items()}}, indent=2))
    ctx = ArenaContext(cfg=cfg, common=common, methods=methods, steps=steps, questions_per_step=qps, data=data,
                       base=base, sets=sets, out=out, quick=quick, work_root=work_root,
                       base_fingerprint=fingerprint)

    def go_all(runs: list[tuple]):
        """(method, lr, seed) runs, ``jobs`` at a time: each trains in its own process (its own Ray),
        so independent runs overlap; a finished run's JSON is skipped as always."""
        if jobs <= 1:
            for name, lr, seed in runs:
                run_one(ctx, name, lr, seed)
            return
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for _ in pool.map(lambda r: run_one(ctx, *r), runs):
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
