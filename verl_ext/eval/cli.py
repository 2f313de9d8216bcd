"""Evaluate a model on the math benchmarks (paper protocol) and write samples + summary.

    python scripts/eval/evaluate.py --model <hf id or local dir> --out-dir results/hpt_7b \
        [--benchmarks aime24 aime25 amc23 math500 minerva olympiad gpqa] [--backend auto|vllm|hf] \
        [--n 4 | --n-map aime24=32,math500=1] [--limit 20] [--temperature 0.6 --top-p 0.95 --max-tokens 8192]

Defaults follow the paper (DeepMath uni_eval): temperature 0.6, top-p 0.95, 8192 new tokens,
the "simplerl" system prompt with the model's chat template, n=32 on AIME24/AIME25/AMC and n=1
elsewhere. Writes <out-dir>/samples/<benchmark>.jsonl (one line per sample) and
<out-dir>/summary.json (avg@n and pass@k for k = 1, 2, 4, ... <= n, per benchmark).
"""

from __future__ import annotations

import argparse
import json
import os

from verl_ext.data.benchmarks import BENCHMARKS, get_benchmark
from verl_ext.data.prompts import PROMPT_STYLES
from verl_ext.eval.runner import EvalConfig, run_evaluation


def _n_map(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        k, v = part.split("=")
        out[k.strip()] = int(v)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS))
    ap.add_argument("--backend", default="auto", choices=("auto", "vllm", "hf"))
    ap.add_argument("--n", type=int, default=None, help="samples per question for every benchmark")
    ap.add_argument("--n-map", type=_n_map, default={}, help="per-benchmark n, e.g. aime24=32,math500=4")
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--limit", type=int, default=None, help="first N questions of each benchmark")
    ap.add_argument("--prompt-style", default="simplerl", choices=PROMPT_STYLES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per HF generate call")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--hf-overrides", type=json.loads, default=None,
                    help='vLLM config overrides, e.g. \'{"max_position_embeddings": 16384, "rope_theta": 40000}\'')
    ap.add_argument("--reward-workers", type=int, default=2)
    ap.add_argument("--reward-timeout", type=float, default=5.0, help="hard per-answer grading timeout (s)")
    ap.add_argument("--benchmark-dir", default=None)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    keys = [get_benchmark(b).key for b in args.benchmarks]  # accept "AIME24", "math-500", ...
    n = {k: args.n for k in keys} if args.n is not None else {}
    n.update({get_benchmark(k).key: v for k, v in args.n_map.items()})
    cfg = EvalConfig(model=args.model, benchmarks=keys, out_dir=args.out_dir, backend=args.backend, n=n,
                     temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, limit=args.limit,
                     prompt_style=args.prompt_style, seed=args.seed, batch_size=args.batch_size,
                     tensor_parallel_size=args.tensor_parallel_size,
                     gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len,
                     hf_overrides=args.hf_overrides, reward_workers=args.reward_workers,
                     reward_timeout=args.reward_timeout, benchmark_dir=args.benchmark_dir,
                     progress=not args.no_progress)
    summary = run_evaluation(cfg)
    print(f"summary -> {os.path.join(args.out_dir, 'summary.json')}")
    return summary

