"""The embedded default: HPT on CPU on a task the project generates itself (README's main job).

1. writes the synthetic arithmetic task (data/arith) if missing;
2. makes the base model (models/arith-base: the tiny Qwen2 warmed up on level-1 problems) if missing;
3. trains it with HPT through ``python -m recipe.hpt.main_hpt +exp=cpu_default`` (verl's
   RayPPOTrainer, FSDP2 on CPU, the hf rollout), printing one progress line per step;
4. evaluates base and trained model on the held-out problems (greedy), per difficulty level;
5. prints and writes the summary (outputs/default/summary.md, summary.json, dynamics.png).

Usage: python scripts/run_default.py [--steps 100] [--out outputs/default] [hydra overrides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _progress_line(m: dict, total: int) -> str:
    def f(key, fmt="{:.3f}"):
        v = m.get(key)
        return fmt.format(v) if isinstance(v, (int, float)) else "-"

    val = m.get("val-core/hpt_arith/acc/mean@1")
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
    return ckpt / f"global_step_{steps}" / "actor" / "huggingface"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", default="outputs/default")
    ap.add_argument("--data", default="data/arith")
    ap.add_argument("--base", default="models/arith-base")
    args, overrides = ap.parse_known_args(argv)
    t0 = time.time()
    os.chdir(REPO)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, base = Path(args.data), Path(args.base)

    print("[1/5] data", flush=True)
    if not (data / "train.parquet").exists():
        from scripts.data.make_arith_dataset import main as make_data

        make_data(["--out", str(data)])
    else:
        print(f"      reusing {data}")
    print("[2/5] base model", flush=True)
    from scripts.models.make_arith_base import main as make_base

    make_base(["--out", str(base), "--test", str(data / "test.parquet")])

    overrides = [f"data.train_files={data / 'train.parquet'}", f"data.val_files={data / 'test.parquet'}",
                 f"actor_rollout_ref.model.path={base}", *overrides]
    trained = train(args.steps, out, overrides)

    print("[4/5] held-out evaluation (greedy)", flush=True)
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl_ext.tasks.evaluate import level_accuracy
    from verl_ext.tasks.report import accuracy_table, plot_dynamics, read_metrics

    test = pd.read_parquet(data / "test.parquet")
    tok = AutoTokenizer.from_pretrained(base)
    accs = {}
    for name, path in (("base", base), ("HPT", trained)):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        accs[name] = level_accuracy(model, tok, test)
    levels = sorted(k for k in accs["base"] if k.startswith("level_"))

    print("[5/5] summary", flush=True)
    rows = read_metrics(out / "metrics.jsonl")
    shares = [(r["step"], r["hpt/sft_question_share"]) for r in rows if "hpt/sft_question_share" in r]
    k = max(1, len(shares) // 10)
    share_lines = [f"| {shares[i][0]}-{shares[min(i + k, len(shares)) - 1][0]} | "
                   f"{sum(s for _, s in shares[i:i + k]) / len(shares[i:i + k]):.2f} |"
                   for i in range(0, len(shares), k)]
    png = plot_dynamics({"HPT": rows}, out / "dynamics.png")
    step_times = [r["timing_s/step"] for r in rows if "timing_s/step" in r]
    summary = {
        "steps": args.steps,
        "accuracy": accs,
        "improvement_all": accs["HPT"]["all"] - accs["base"]["all"],
        "sft_share_by_step": shares,
        "mean_step_seconds": sum(step_times) / max(len(step_times), 1),
        "wall_seconds": round(time.time() - t0, 1),
        "trained_model": str(trained),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    md = "\n".join([
        f"## HPT on the synthetic arithmetic task ({args.steps} steps on CPU, {summary['wall_seconds']:.0f}s)",
        "", "Held-out accuracy (%, greedy):", "", accuracy_table(accs, levels), "",
        "SFT share of questions (the gate's offline-data ratio) by step range:", "",
        "| steps | SFT share |", "|---|---|", *share_lines, "",
        f"Mean step time {summary['mean_step_seconds']:.2f}s. Dynamics plot: {png}", ""])
    (out / "summary.md").write_text(md)
    print(md)
    return summary


if __name__ == "__main__":
    main()
