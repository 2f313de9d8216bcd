"""A toy-scale version of the paper's Table 2 on the embedded default task (CPU, one command).

Same base model, data and step budget for every method, all through the same trainer with presets:

  base        the warmed-up model, untrained
  SFT         hpt.gate.strategy=always, upge=sft (no rollouts generated)
  GRPO        hpt.gate.strategy=never,  upge=hpt_release's RL arm (release-style GRPO)
  SFT->GRPO   SFT for half the budget, then GRPO from its checkpoint for the other half
  LUFFY       demo added to each group (placement=add, fixed alpha=beta=1), upge=luffy
  HPT         switch gate, gamma=0 (the default)
  HPT g=1/4, HPT g=2/4   gate ablations (Table 6)

Writes outputs/toy_table/table.md (held-out greedy accuracy per level) and dynamics.png (reward,
SFT share, response length, entropy per step for every run). Not part of CI: ~8 trainings.

Usage: python scripts/toy_table.py [--steps 60] [--out outputs/toy_table] [--only HPT,GRPO]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

def methods(rl_const_len: int) -> dict[str, list[str]]:
    """Overrides per method. ``rl_const_len`` is L of the Σ/L loss terms of GRPO and LUFFY; the HPT
    rows keep cpu_default's L = 256. The table in the README was made with the default 48."""
    const_len = [f"hpt.loss.rollout.const_len={rl_const_len}"]
    return {
        "SFT": ["hpt.gate.strategy=always", "upge=sft", "hpt.loss.rollout=null", "actor_rollout_ref.rollout.n=1"],
        "GRPO": ["hpt.gate.strategy=never", "upge=hpt_release", "hpt.loss.demo=null", *const_len],
        "LUFFY": ["hpt.gate.strategy=fixed", "hpt.gate.placement=add", "upge=luffy", *const_len,
                  f"hpt.loss.demo.const_len={rl_const_len}"],
        "HPT": [],
        "HPT g=1/4": ["hpt.gate.gamma=0.25"],
        "HPT g=2/4": ["hpt.gate.gamma=0.5"],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default="outputs/toy_table")
    ap.add_argument("--data", default="data/arith")
    ap.add_argument("--base", default="models/arith-base")
    ap.add_argument("--only", default=None, help="comma-separated subset of methods (plus SFT->GRPO)")
    ap.add_argument("--rl-const-len", type=int, default=48,
                    help="L of GRPO/LUFFY's Σ/L loss terms (HPT rows use cpu_default's 256)")
    args = ap.parse_args(argv)

    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scripts.data.make_arith_dataset import main as make_data
    from scripts.models.make_arith_base import main as make_base
    from scripts.run_default import train
    from verl_ext.tasks.evaluate import level_accuracy
    from verl_ext.tasks.report import accuracy_table, plot_dynamics, read_metrics

    out, data, base = Path(args.out), Path(args.data), Path(args.base)
    out.mkdir(parents=True, exist_ok=True)
    if not (data / "train.parquet").exists():
        make_data(["--out", str(data)])
    make_base(["--out", str(base), "--test", str(data / "test.parquet")])
    common = [f"data.train_files={data / 'train.parquet'}", f"data.val_files={data / 'test.parquet'}"]
    wanted = set(args.only.split(",")) if args.only else None
    METHODS = methods(args.rl_const_len)

    test = pd.read_parquet(data / "test.parquet")
    tok = AutoTokenizer.from_pretrained(base)

    def evaluate(path):
        return level_accuracy(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), tok, test)

    accs, dyn, times = {"base": evaluate(base)}, {}, {}
    for name, extra in METHODS.items():
        if wanted and name not in wanted:
            continue
        t0 = time.time()
        run_dir = out / name.replace(" ", "_").replace("/", "-").replace("=", "")
        run_dir.mkdir(parents=True, exist_ok=True)
        model = train(args.steps, run_dir, [*common, f"actor_rollout_ref.model.path={base}",
                                            f"trainer.experiment_name=toy_{run_dir.name}", *extra])
        accs[name], dyn[name], times[name] = evaluate(model), read_metrics(run_dir / "metrics.jsonl"), time.time() - t0
    if not wanted or "SFT->GRPO" in wanted:
        t0 = time.time()
        half = max(1, args.steps // 2)
        sft_dir, rl_dir = out / "SFT-GRPO_stage1", out / "SFT-GRPO_stage2"
        for d in (sft_dir, rl_dir):
            d.mkdir(parents=True, exist_ok=True)
        sft_model = train(half, sft_dir, [*common, f"actor_rollout_ref.model.path={base}", *METHODS["SFT"]])
        model = train(args.steps - half, rl_dir, [*common, f"actor_rollout_ref.model.path={sft_model}",
                                                  *METHODS["GRPO"]])
        accs["SFT->GRPO"], times["SFT->GRPO"] = evaluate(model), time.time() - t0
        dyn["SFT->GRPO (stage 2)"] = read_metrics(rl_dir / "metrics.jsonl")
    levels = sorted(k for k in accs["base"] if k.startswith("level_"))
    png = plot_dynamics(dyn, out / "dynamics.png")
    md = "\n".join([f"Toy Table 2: held-out greedy accuracy (%), {args.steps} steps per method "
                    f"(32 questions/step, n=4), {len(test)} held-out problems", "",
                    accuracy_table(accs, levels), "",
                    "Wall time per method (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()),
                    f"Dynamics: {png}", ""])
    (out / "table.md").write_text(md)
    (out / "results.json").write_text(json.dumps({"steps": args.steps, "accuracy": accs, "seconds": times},
                                                 indent=2))
    print(md)


if __name__ == "__main__":
    main()
