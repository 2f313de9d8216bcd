"""Cost of HPT's bookkeeping (gate + merge + padding + verl's balancing) as the batch grows.

Builds verl-shaped post-rollout batches (``DataProto`` with prompts/responses/masks/rm_scores and
uid/extra_info per row, n rollouts per question) of 128 ... 4096 rows, and times, in one run:
  gate      question_stats + gate_by_pass_rate
  merge     encode_demonstrations + merge_demonstrations (demo rows built, rollouts dropped)
  pad       pad_with_zero_weight_rows to a multiple of 8
  balance   verl's get_seqlen_balanced_partitions over 8 DP ranks + DataProto.reorder
Prints per-size medians, the time per row and the growth exponent (log t / log rows between the
smallest and largest size: 1.0 = linear). The share of a full step is read from a training run's
metrics (``timing_s/hpt_bookkeeping`` / ``timing_s/step``) with ``--metrics``.

Usage: python scripts/bench/bench_bookkeeping.py [--sizes 128,512,1024,4096] [--resp-len 512]
       [--metrics outputs/default/metrics.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import uuid

import numpy as np
import torch


def make_batch(rows: int, n: int, prompt_len: int, resp_len: int, seed: int = 0):
    from verl import DataProto

    g = torch.Generator().manual_seed(seed)
    q = rows // n
    resp_valid = torch.randint(resp_len // 8, resp_len, (rows,), generator=g)
    response_mask = (torch.arange(resp_len)[None, :] < resp_valid[:, None]).long()
    prompts = torch.randint(4, 200, (rows, prompt_len), generator=g)
    responses = torch.randint(4, 200, (rows, resp_len), generator=g) * response_mask
    attention = torch.cat([torch.ones(rows, prompt_len, dtype=torch.long), response_mask], -1)
    correct = (torch.rand(rows, generator=g) < torch.rand(q, generator=g).repeat_interleave(n) ** 2).float()
    rm = torch.zeros(rows, resp_len)
    rm[torch.arange(rows), resp_valid - 1] = correct
    uids = np.repeat(np.array([str(uuid.uuid4()) for _ in range(q)], dtype=object), n)
    infos = np.array([{"index": i // n, "target": "3+4=7. 7+5=12. \\boxed{12}" * 4} for i in range(rows)],
                     dtype=object)
    return DataProto.from_dict(
        tensors={"prompts": prompts, "responses": responses, "response_mask": response_mask,
                 "input_ids": torch.cat([prompts, responses], -1), "attention_mask": attention,
                 "position_ids": torch.clamp(attention.cumsum(-1) - 1, min=0), "rm_scores": rm},
        non_tensors={"uid": uids, "extra_info": infos,
                     "data_source": np.array(["bench"] * rows, dtype=object)})


def bookkeeping(batch, tokenizer, resp_len: int, dp: int = 8) -> dict[str, float]:
    from verl.utils.seqlen_balancing import calculate_workload, get_seqlen_balanced_partitions

    from verl_ext.hpt.gate import GateConfig, gate_by_pass_rate, question_stats
    from verl_ext.hpt.demonstrations import encode_demonstrations
    from verl_ext.hpt.merge import merge_demonstrations, pad_with_zero_weight_rows

    t0 = time.perf_counter()
    cfg = GateConfig()
    scores = batch.batch["rm_scores"].sum(-1).numpy()
    stats = question_stats(batch.non_tensor_batch["uid"], scores)
    alpha, beta = gate_by_pass_rate(stats.correct, stats.n, cfg)
    t1 = time.perf_counter()
    gated = np.flatnonzero(beta > 0)
    infos = batch.non_tensor_batch["extra_info"]
    ids, _ = encode_demonstrations(tokenizer, [infos[int(stats.first_row[q])]["target"] for q in gated], resp_len)
    demo_ids = [None] * len(stats.uids)
    for q, i in zip(gated, ids):
        demo_ids[q] = i
    merged, _ = merge_demonstrations(batch, stats, alpha, beta, demo_ids, tokenizer.pad_token_id,
                                     demo_scores=[1.0] * len(stats.uids))
    t2 = time.perf_counter()
    padded, _ = pad_with_zero_weight_rows(merged, dp)
    t3 = time.perf_counter()
    seqlen = padded.batch["attention_mask"].sum(-1)
    parts = get_seqlen_balanced_partitions(calculate_workload(seqlen).tolist(), k_partitions=dp, equal_size=True)
    padded.reorder(torch.tensor([i for p in parts for i in p]))
    t4 = time.perf_counter()
    return {"gate": t1 - t0, "merge": t2 - t1, "pad": t3 - t2, "balance": t4 - t3, "total": t4 - t0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128,512,1024,2048,4096")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--resp-len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--metrics", default=None, help="a run's metrics.jsonl for the share-of-step figure")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from verl_ext.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    print(f"{'rows':>6} {'gate ms':>9} {'merge ms':>9} {'pad ms':>8} {'balance ms':>11} {'total ms':>9} {'us/row':>7}")
    for rows in sizes:
        runs = []
        for r in range(args.repeats):
            batch = make_batch(rows, args.n, args.prompt_len, args.resp_len, seed=r)
            runs.append(bookkeeping(batch, tok, args.resp_len))
        med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
        results[rows] = med
        print(f"{rows:>6} {1e3 * med['gate']:>9.2f} {1e3 * med['merge']:>9.2f} {1e3 * med['pad']:>8.2f} "
              f"{1e3 * med['balance']:>11.2f} {1e3 * med['total']:>9.2f} {1e6 * med['total'] / rows:>7.1f}")
    lo, hi = sizes[0], sizes[-1]
    exponent = math.log(results[hi]["total"] / results[lo]["total"]) / math.log(hi / lo)
    print(f"growth {lo}->{hi} rows: x{results[hi]['total'] / results[lo]['total']:.1f} time for x{hi / lo:.0f} rows "
          f"(exponent {exponent:.2f}; 1.0 = linear)")
    if args.metrics:
        rows_ = [json.loads(line)["data"] for line in open(args.metrics) if line.strip()]
        pairs = [(r["timing_s/hpt_bookkeeping"], r["timing_s/step"]) for r in rows_
                 if "timing_s/hpt_bookkeeping" in r and "timing_s/step" in r]
        if pairs:
            share = sum(a for a, _ in pairs) / sum(b for _, b in pairs)
            print(f"bookkeeping share of the training step in {args.metrics}: {100 * share:.2f}% "
                  f"over {len(pairs)} steps (target < 2%)")
    return results


if __name__ == "__main__":
    main()
