"""Tokens a training step sends through old log-probs and the update, before and after padding.

HPT's merge shrinks the batch (a question gated to SFT keeps one demonstration row instead of its n
rollouts) and the trainer pads it back to whole mini-batches with inert rows. What those rows cost
is their attention-mask sum: remove-padding and dynamic batch sizes (every GPU config) process
exactly those tokens. This bench builds the release's shapes (128 questions x n = 8, 1,024 rows,
mini-batch 64 questions = 512 rows, prompt <= 1,024, response <= 8,192; synthetic lengths below), gates
g questions to SFT (γ = 0: g questions with no correct rollout), merges and pads with the project's own
functions, and reports per g, in one run:

  real      tokens of the merged batch's rows (kept rollouts + demonstrations)
  pad now   tokens of the padding rows as built today (one token each)
  pad full  tokens the same padding rows cost as full copies of the last row (the padding of
            earlier versions, for comparison: same batch, same row count)

Synthetic lengths (seeded): prompts 100-300 tokens, rollouts 512-8,192, demonstrations 1,024-8,192.

    python scripts/bench/bench_padding.py [--gated 0,10,20,40,60] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

Q, N, P, R, MINI_ROWS = 128, 8, 1024, 8192, 512


def release_batch(gated: int, seed: int):
    """(rollout batch, question stats, α, β, demonstration ids): g questions with no correct rollout."""
    from verl import DataProto

    from verl_ext.hpt.gate import GateConfig, gate_by_pass_rate, question_stats

    rng = np.random.default_rng(seed)
    rows = Q * N
    prompt_valid = np.repeat(rng.integers(100, 301, Q), N)  # (rows,)
    resp_valid = rng.integers(512, R + 1, rows)  # (rows,)
    prompt_mask = torch.as_tensor(np.arange(P)[None, :] >= P - prompt_valid[:, None]).long()  # left-padded
    resp_mask = torch.as_tensor(np.arange(R)[None, :] < resp_valid[:, None]).long()  # right-padded
    correct = np.zeros((Q, N))
    correct[gated:, 0] = 1.0  # questions 0..g-1: none correct -> SFT under γ = 0; the rest RL
    rm = torch.zeros(rows, R)
    rm[torch.arange(rows), torch.as_tensor(resp_valid - 1)] = torch.as_tensor(correct.reshape(-1), dtype=torch.float32)
    ids = torch.zeros(rows, P + R, dtype=torch.long)  # token ids do not matter for a token count
    attention = torch.cat([prompt_mask, resp_mask], -1)
    batch = DataProto.from_dict(
        tensors={"prompts": ids[:, :P], "responses": ids[:, P:], "response_mask": resp_mask, "input_ids": ids,
                 "attention_mask": attention, "position_ids": torch.clamp(attention.cumsum(-1) - 1, min=0),
                 "rm_scores": rm},
        non_tensors={"uid": np.repeat(np.asarray([f"q{i}" for i in range(Q)], dtype=object), N)})
    stats = question_stats(batch.non_tensor_batch["uid"], rm.sum(-1).numpy())
    alpha, beta = gate_by_pass_rate(stats.correct, stats.n, GateConfig(gamma=0.0))
    demo_ids = [list(range(1, int(rng.integers(1024, R + 1)))) if b > 0 else None for b in beta]
    return batch, stats, alpha, beta, demo_ids


def measure(gated: int, seed: int) -> dict:
    from verl_ext.hpt.merge import merge_demonstrations, pad_with_zero_weight_rows

    batch, stats, alpha, beta, demo_ids = release_batch(gated, seed)
    merged, _ = merge_demonstrations(batch, stats, alpha, beta, demo_ids, pad_token_id=0,
                                     demo_scores=[1.0] * len(stats.uids))
    padded, n_pad = pad_with_zero_weight_rows(merged, MINI_ROWS)
    real = int(merged.batch["attention_mask"].sum())
    pad_now = int(padded.batch["attention_mask"].sum()) - real
    pad_full = n_pad * int(merged.batch["attention_mask"][-1].sum())
    return {"gated": gated, "rows": len(merged), "pad_rows": n_pad, "real": real, "pad_now": pad_now,
            "pad_full": pad_full}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gated", default="0,10,20,40,60")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = [measure(int(g), args.seed) for g in args.gated.split(",")]
    print(f"{'gated':>5} {'rows':>5} {'pad rows':>8} {'real tokens':>12} {'pad now':>8} {'pad full':>10} "
          f"{'step tokens now':>15} {'full copies':>11}")
    for r in out:
        now, full = r["real"] + r["pad_now"], r["real"] + r["pad_full"]
        print(f"{r['gated']:>5} {r['rows']:>5} {r['pad_rows']:>8} {r['real']:>12,} {r['pad_now']:>8,} "
              f"{r['pad_full']:>10,} {now:>15,} {full:>11,} (+{100 * (full / now - 1):.1f} %)")
    return out


if __name__ == "__main__":
    main()
