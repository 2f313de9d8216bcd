"""The CPU route: HPT on CPU on the embedded arithmetic task (README's main job) or on your files.

1. data: the synthetic arithmetic task (written to ``--data``, default data/arith, if missing), or
   your own ``--train F --test F`` (rows in the contract of README "Your own data");
2. base model: ``--base`` (default models/arith-base: the tiny Qwen2 warmed up on level-1
   arithmetic, built if missing); a folder of your own (an HF model without the warm-up marker) is
   used as it is;
3. trains it with HPT through ``python -m recipe.hpt.main_hpt +exp=cpu_default`` (verl's
   RayPPOTrainer, FSDP2 on CPU, the hf rollout), printing one progress line per step;
4. evaluates base and trained model on the held-out file (greedy), per difficulty level for the
   arithmetic task, per data_source for your data;
5. prints and writes the summary under the data's name (``--name``; default the arithmetic task, or
   your test file's folder) to ``--out``: summary.md, summary.json, dynamics.png.

Usage:
  python scripts/run_default.py [--steps 100] [--out outputs/default] [hydra overrides ...]
  python scripts/run_default.py --train my/train.parquet --test my/test.parquet [--name my-data]
      [--base models/arith-base] [--eval-limit 200] [--steps N] [hydra overrides, e.g.
      data.max_prompt_length=512 data.max_response_length=256]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARITH_TITLE = "the synthetic arithmetic task"
# verl's validation metric of any data_source: val-core/<data_source>/<acc|reward|score>/mean@1
VAL_KEY = re.compile(r"^val-core/.+/(acc|reward|score)/mean@1$")


def _progress_line(m: dict, total: int) -> str:
    def f(key, fmt="{:.3f}"):
        v = m.get(key)
        return fmt.format(v) if isinstance(v, (int, float)) else "-"

    val = next((v for k, v in sorted(m.items()) if VAL_KEY.match(k)), None)
    return (f"step {m['step']:>3}/{total}  reward {f('critic/score/mean')}  pass-rate {f('hpt/pass_rate/mean')}  "
            f"SFT share {f('hpt/sft_question_share', '{:.2f}')}  sft-nll {f('actor/hpt/sft/nll')}  "
            f"rl-loss {f('actor/hpt/rl/pg_loss')}  {f('timing_s/step', '{:.1f}')}s/step"
            + (f"  | held-out acc {val:.3f}" if isinstance(val, (int, float)) else ""))


def train(steps: int, out: Path, overrides: list[str]) -> Path:
    """Run the HPT trainer as a subprocess; stream compact progress from its metrics file."""
    metrics = out / "metrics.jsonl"
    ckpt = out / "checkpoints"
    if metrics.exists():
        metrics.unlink()
    cmd = [sys.executable, "-m", "recipe.hpt.main_hpt", "+exp=cpu_default", "trainer.logger=[file]",
           f"trainer.total_training_steps={steps}", f"trainer.save_freq={steps}",
           f"trainer.test_freq={max(1, steps // 4)}", f"trainer.default_local_dir={ckpt}",
           "trainer.resume_mode=disable", *overrides]
    env = dict(os.environ, VERL_FILE_LOGGER_PATH=str(metrics), PYTHONUNBUFFERED="1")
    log_path = out / "train.log"
    print(f"[3/5] HPT training, {steps} steps (full log: {log_path})\n      {' '.join(cmd[1:])}", flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        seen = 0
        while True:
            done = proc.poll() is not None
            if metrics.exists():
                lines = metrics.read_text().splitlines()
                for line in lines[seen:]:
                    if line.strip():
                        rec = json.loads(line)
                        print("      " + _progress_line(dict(rec["data"], step=rec["step"]), steps), flush=True)
                seen = len(lines)
            if done:
                break
            time.sleep(2)
    if proc.returncode != 0:
        tail = log_path.read_text()[-4000:]
        raise SystemExit(f"training failed (exit {proc.returncode}); last lines of {log_path}:\n{tail}")
    final = ckpt / f"global_step_{steps}" / "actor" / "huggingface"
    if not final.exists():
        raise SystemExit(f"training ended without the step-{steps} checkpoint {final} (see {log_path}): the run "
                         f"stopped early, e.g. the data ran out (trainer.total_epochs x batches per epoch < {steps})")
    return final


def _override(overrides: list[str], key: str) -> str | None:
    for o in overrides:
        if o.lstrip("+").startswith(key + "="):
            return o.split("=", 1)[1]
    return None


def _score_fn(overrides: list[str]):
    """The function the run grades with: verl's dispatch when the custom reward is switched off."""
    if _override(overrides, "reward.custom_reward_function.path") in ("null", "None", ""):
        from verl.utils.reward_score import default_compute_score

        return default_compute_score, "verl's default_compute_score (data_source dispatch)"
    from verl_ext.reward import compute_score

    return compute_score, "this project's math reward (last \\boxed{})"


def _data_name(test: Path) -> str:
    return test.parent.name if test.stem in ("test", "val", "validation") and test.parent.name else test.stem


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", default="outputs/default")
    ap.add_argument("--data", default="data/arith",
                    help="folder of the arithmetic task (written there if it has no train.parquet); a folder with "
                         "your own train.parquet and test.parquet works too")
    ap.add_argument("--train", default=None, help="your training file (.parquet/.jsonl in the row contract)")
    ap.add_argument("--test", default=None, help="your held-out file, evaluated before and after training")
    ap.add_argument("--name", default=None, help="the data's name in the summary (default: from the test file)")
    ap.add_argument("--base", default="models/arith-base",
                    help="base model folder: models/arith-base is built if missing; any other HF folder is used as is")
    ap.add_argument("--eval-limit", type=int, default=200, help="held-out rows evaluated (first N)")
    args, overrides = ap.parse_known_args(argv)
    if (args.train is None) != (args.test is None):
        ap.error("--train and --test go together (your training file and your held-out file)")
    t0 = time.time()
    os.chdir(REPO)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, base = Path(args.data), Path(args.base)

    print("[1/5] data", flush=True)
    if args.train is not None:
        train_file, test_file = Path(args.train), Path(args.test)
        for f in (train_file, test_file):
            if not f.exists():
                raise SystemExit(f"error: {f} does not exist")
        print(f"      your data: train {train_file}, test {test_file}")
    else:
        train_file, test_file = data / "train.parquet", data / "test.parquet"
        if not train_file.exists():
            from verl_ext.tasks.arith_dataset import main as make_data

            make_data(["--out", str(data)])
        else:
            print(f"      reusing {data}")

    import pandas as pd

    test = pd.read_parquet(test_file) if str(test_file).endswith(".parquet") else pd.read_json(test_file, lines=True)
    is_arith = bool(len(test)) and set(test["data_source"]) == {"hpt_arith"}
    name = args.name or (ARITH_TITLE if is_arith else _data_name(test_file))
    # the base model's warm-up keeps the arithmetic task's held-out problems out of its data
    arith_dir = data if is_arith and args.train is None else Path("data/arith")
    arith_test = arith_dir / "test.parquet"

    print("[2/5] base model", flush=True)
    if (base / "config.json").exists() and not (base / "hpt_base.json").exists():
        print(f"      using your model {base} as it is")
    else:
        if not arith_test.exists():  # the warm-up keeps the arithmetic held-out problems out
            from verl_ext.tasks.arith_dataset import main as make_data

            make_data(["--out", str(arith_dir)])
        from verl_ext.tasks.arith_base import main as make_base

        make_base(["--out", str(base), "--test", str(arith_test)])

    if _override(overrides, "trainer.total_epochs") is None:
        # enough passes over a small file for --steps batches (verl stops at the end of the last epoch)
        train_rows = len(pd.read_parquet(train_file, columns=["data_source"])) if str(train_file).endswith(
            ".parquet") else len(pd.read_json(train_file, lines=True))
        batch = int(_override(overrides, "data.train_batch_size") or 32)  # cpu_default's batch
        per_epoch = train_rows // batch
        if per_epoch < 1:
            raise SystemExit(f"error: {train_file} has {train_rows} rows, fewer than one batch "
                             f"(data.train_batch_size={batch}): lower data.train_batch_size (and "
                             f"actor_rollout_ref.actor.ppo_mini_batch_size) or add rows")
        overrides = [f"trainer.total_epochs={-(-args.steps // per_epoch)}", *overrides]
    overrides = [f"data.train_files={train_file}", f"data.val_files={test_file}",
                 f"actor_rollout_ref.model.path={base}", *overrides]
    trained = train(args.steps, out, overrides)

    print("[4/5] held-out evaluation (greedy)", flush=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl_ext.tasks.evaluate import group_accuracy
    from verl_ext.tasks.report import accuracy_table, plot_dynamics, read_metrics

    test = test.head(args.eval_limit) if args.eval_limit else test
    max_new = int(_override(overrides, "data.max_response_length") or 48)  # cpu_default's response length
    score_fn, grader = _score_fn(overrides)
    tok = AutoTokenizer.from_pretrained(base)
    accs = {}
    for model_name, path in (("base", base), ("HPT", trained)):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        accs[model_name] = group_accuracy(model, tok, test, max_new_tokens=max_new, score_fn=score_fn)
    groups = [k for k in accs["base"] if k != "all"]

    print("[5/5] summary", flush=True)
    rows = read_metrics(out / "metrics.jsonl")
    shares = [(r["step"], r["hpt/sft_question_share"]) for r in rows if "hpt/sft_question_share" in r]
    k = max(1, len(shares) // 10)
    share_lines = [f"| {shares[i][0]}-{shares[min(i + k, len(shares)) - 1][0]} | "
                   f"{sum(s for _, s in shares[i:i + k]) / len(shares[i:i + k]):.2f} |"
                   for i in range(0, len(shares), k)]
    png = plot_dynamics({"HPT": rows}, out / "dynamics.png")
    step_times = [r["timing_s/step"] for r in rows if "timing_s/step" in r]
    demo_rate = next((r["hpt/data/demo_reward_pass_rate"] for r in rows if "hpt/data/demo_reward_pass_rate" in r), None)
    summary = {
        "name": name,
        "data": {"train": str(train_file), "test": str(test_file), "test_rows_evaluated": len(test)},
        "steps": args.steps,
        "accuracy": accs,
        "improvement_all": accs["HPT"]["all"] - accs["base"]["all"],
        "graded_by": grader,
        "demo_reward_pass_rate": demo_rate,
        "sft_share_by_step": shares,
        "mean_step_seconds": sum(step_times) / max(len(step_times), 1),
        "wall_seconds": round(time.time() - t0, 1),
        "trained_model": str(trained),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    by = "difficulty level" if is_arith else "data_source"
    md = "\n".join([
        f"## HPT on {name} ({args.steps} steps on CPU, {summary['wall_seconds']:.0f}s)", "",
        f"Held-out accuracy (%, greedy, {len(test)} problems of {test_file}, by {by}; graded by {grader}):", "",
        accuracy_table(accs, groups), "",
        "SFT share of questions (the gate's offline-data ratio) by step range:", "",
        "| steps | SFT share |", "|---|---|", *share_lines, "",
        (f"Demonstrations passing the reward at start-up: {100 * demo_rate:.1f}%. " if demo_rate is not None else "")
        + f"Mean step time {summary['mean_step_seconds']:.2f}s. Dynamics plot: {png}", ""])
    (out / "summary.md").write_text(md)
    print(md)
    return summary
