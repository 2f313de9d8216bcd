"""Probe a candidate arena base before paying for the arena: how it solves each level, whether its
correct answers come from correct chains, and what a plain-PyTorch SFT / GRPO / HPT loop does to it.

This is the tool the arena's base and budget were chosen with (README "Arena"). It is *not* the
arena: the arena trains every method through verl's trainer (``scripts/arena.py``). The loop here
has none of verl's per-step cost (about 1 s per step against verl's 6 s at 32 questions), so a grid
of candidate bases, learning rates and budgets takes minutes; what it finds is then checked through
the trainer.

    python scripts/bench/arena_probe.py base  models/arena-base
    python scripts/bench/arena_probe.py train models/arena-base --mode grpo --lr 3e-5 --steps 100 --questions 32
    # Arena II (the chain task): --task chains --data data/arena2 --max-new-tokens 96 --train-levels 2,...,8

``base`` prints, per level of the arena's test files: greedy accuracy, pass@1 and pass@8 at
temperature 1, and for the levels 2-3 rollouts that are graded correct, the share whose written
chain is wrong (a step like ``9+4=12`` or a chain other than the demonstration's). A base whose
correct answers mostly come from wrong chains teaches outcome-reward RL to write wrong steps.

``train`` runs one loop (mode ``sft``: the demonstration; ``grpo``: n = 4 rollouts, group-normalised
advantage; ``hpt``: SFT for questions with no correct rollout, GRPO for the rest) with the response
token mean as the loss, AdamW, gradient clip 1, and prints the rollout pass rate every 25 steps
and the greedy accuracy per level (first 100 test problems per level) at the end.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import pandas as pd
import torch

from verl_ext.arena import REPO
from verl_ext.arena.evaluate import chain_is_wrong, correct_counts, level_of
from verl_ext.reward import compute_score
from verl_ext.rollout.sampling import SamplingSpec, sample_batch
from verl_ext.tasks import TASKS
from verl_ext.tasks.evaluate import level_accuracy

N_ROLLOUTS = 4


def prompt_ids(tok, row) -> list[int]:
    ids = tok.apply_chat_template(list(row["prompt"]), add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def is_correct(tok, out, row) -> bool:
    text = tok.decode(out.token_ids, skip_special_tokens=True)
    return compute_score(row["data_source"], text, row["reward_model"]["ground_truth"])["score"] >= 1.0


def load(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def probe_base(path: str, data: Path, per_level: int, task: str = "arith", max_new_tokens: int = 48,
               rows_from: str = "test") -> dict:
    """Per level: greedy accuracy, pass@1 and pass@8 at T=1, and the share of problems with no
    correct sample in 8 (the premise "no RL signal"); ``rows_from`` test (+ OOD) or train."""
    tok, model = load(path)
    model.eval()
    df = (pd.concat([pd.read_parquet(data / "test.parquet"), pd.read_parquet(data / "test_ood.parquet")])
          if rows_from == "test" else pd.read_parquet(data / "train.parquet"))
    result = {}
    levels = df.apply(level_of, axis=1)
    for level in sorted(levels.unique()):
        rows = df[levels == level].head(per_level)
        greedy, _ = correct_counts(model, tok, rows, max_new_tokens=max_new_tokens)
        sampled, _ = correct_counts(model, tok, rows, temperature=1.0, samples=8, seed=1,
                                    max_new_tokens=max_new_tokens)
        result[int(level)] = {"problems": len(rows), "greedy": sum(greedy) / len(greedy),
                              "pass@1": sum(sampled) / (8 * len(sampled)),
                              "pass@8": sum(c > 0 for c in sampled) / len(sampled),
                              "no_correct_in_8": sum(c == 0 for c in sampled) / len(sampled)}
        r = result[int(level)]
        print(f"level {level}: greedy {100 * r['greedy']:5.1f}  pass@1 (T=1) {100 * r['pass@1']:5.1f}  pass@8 "
              f"{100 * r['pass@8']:5.1f}  none of 8 correct {100 * r['no_correct_in_8']:5.1f}   ({len(rows)} problems, "
              f"{rows_from})", flush=True)
    rows = TASKS[task].generate_rows(64, (2, 3), seed=5, split="probe", unique=False)
    prompts = [prompt_ids(tok, r) for r in rows for _ in range(N_ROLLOUTS)]
    with torch.no_grad():
        outs = sample_batch(model, prompts, SamplingSpec(temperature=1.0, max_new_tokens=max_new_tokens),
                            {tok.eos_token_id}, tok.pad_token_id, torch.Generator().manual_seed(0))
    owners = [r for r in rows for _ in range(N_ROLLOUTS)]
    correct = [(o, r) for o, r in zip(outs, owners) if is_correct(tok, o, r)]
    wrong_chain = sum(chain_is_wrong(tok.decode(o.token_ids, skip_special_tokens=True), r["extra_info"]["target"])
                      for o, r in correct)
    print(f"levels 2-3 at T=1: {len(correct)} of {len(outs)} rollouts correct, {wrong_chain} of them through a "
          f"wrong chain", flush=True)
    return result


def train(path: str, data: Path, mode: str, lr: float, steps: int, questions: int, seed: int,
          levels: tuple[int, ...] = (2, 3, 4, 5), task: str = "arith", max_new_tokens: int = 48) -> dict:
    tok, model = load(path)
    test = pd.read_parquet(data / "test.parquet")
    test = test[test.apply(level_of, axis=1).groupby(test.apply(level_of, axis=1)).cumcount() < 100]
    rows = TASKS[task].generate_rows(4000, levels, seed=7, split="probe", unique=False,
                         exclude={info["question"] for info in test["extra_info"]})
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    spec = SamplingSpec(temperature=1.0, max_new_tokens=max_new_tokens)
    eos = tok.eos_token_id

    def demo(row):
        return tok(row["extra_info"]["target"], add_special_tokens=False)["input_ids"] + [eos]

    pass_rate, sft_share, t0 = [], [], time.time()
    for step in range(steps):
        batch = [rows[rng.randrange(len(rows))] for _ in range(questions)]
        seqs: list[tuple[list[int], list[int], float]] = []  # (prompt, response, weight of its tokens)
        if mode == "sft":
            seqs = [(prompt_ids(tok, r), demo(r), 1.0) for r in batch]
        else:
            prompts = [prompt_ids(tok, r) for r in batch for _ in range(N_ROLLOUTS)]
            model.eval()
            with torch.no_grad():
                outs = sample_batch(model, prompts, spec, {eos}, tok.pad_token_id, gen)
            reward = torch.tensor([float(is_correct(tok, o, r))
                                   for o, r in zip(outs, [r for r in batch for _ in range(N_ROLLOUTS)])])
            groups = reward.view(questions, N_ROLLOUTS)                                         # (Q, n)
            adv = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-6)  # (Q, n)
            pass_rate.append(float(reward.mean()))
            to_sft = 0
            for q, r in enumerate(batch):
                if mode == "hpt" and groups[q].sum() == 0:
                    to_sft += 1
                    seqs.append((prompt_ids(tok, r), demo(r), 1.0))
                else:
                    seqs += [(prompts[q * N_ROLLOUTS + j], outs[q * N_ROLLOUTS + j].token_ids, float(adv[q, j]))
                             for j in range(N_ROLLOUTS)]
            sft_share.append(to_sft / questions)
        model.train()
        width = max(len(p) + len(o) for p, o, _ in seqs)
        ids = torch.full((len(seqs), width), tok.pad_token_id)                      # (B, T)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)                     # (B, T)
        weight = torch.zeros((len(seqs), width))                                     # (B, T) per response token
        for i, (p, o, w) in enumerate(seqs):
            ids[i, : len(p) + len(o)] = torch.tensor(p + o)
            attn[i, : len(p) + len(o)] = 1
            weight[i, len(p): len(p) + len(o)] = w
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()    # (B, T-1, V)
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]    # (B, T-1)
        w = weight[:, 1:]
        loss = -(logp * w).sum() / (w != 0).sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 25 == 0 and pass_rate:
            print(f"step {step + 1}: rollout pass rate {sum(pass_rate[-25:]) / 25:.3f}  SFT share "
                  f"{sum(sft_share[-25:]) / 25:.2f}  ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    acc = level_accuracy(model, tok, test, max_new_tokens=max_new_tokens)
    print(f"{mode} lr {lr:g}, {steps} steps x {questions} questions: greedy "
          + "  ".join(f"{k} {100 * v:.1f}" for k, v in acc.items()) + f"  ({time.time() - t0:.0f}s)", flush=True)
    return {"mode": mode, "lr": lr, "steps": steps, "questions": questions, "seed": seed, "levels": list(levels),
            "greedy": acc, "test_per_level": 100, "seconds": round(time.time() - t0, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["base", "train"])
    ap.add_argument("model")
    ap.add_argument("--data", default=str(REPO / "data/arena"), help="the arena's data folder")
    ap.add_argument("--per-level", type=int, default=50, help="base: test problems per level")
    ap.add_argument("--mode", choices=["sft", "grpo", "hpt"], default="grpo")
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-levels", default="2,3,4,5", help="train: the levels questions are drawn from")
    ap.add_argument("--task", choices=sorted(TASKS), default="arith")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rows", choices=["test", "train"], default="test", help="base: the problems probed")
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what == "base":
        result = {"what": "base", "model": args.model, "rows": args.rows,
                  "levels": probe_base(args.model, Path(args.data), args.per_level, args.task, args.max_new_tokens,
                                       args.rows)}
    else:
        result = {"what": "train", "model": args.model, **train(
            args.model, Path(args.data), args.mode, args.lr, args.steps, args.questions, args.seed,
            tuple(int(x) for x in args.train_levels.split(",")), args.task, args.max_new_tokens)}
    if args.json:
        import json

        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result
