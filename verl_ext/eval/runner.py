"""Benchmark evaluation: n samples per question through the evaluator (``verl_ext.eval.evaluator``:
template, sample with vLLM or HF, grade in a pool of worker processes), samples and summary written.

Outputs in ``out_dir``:
* ``samples/<benchmark>.jsonl``: one line per sample ``{benchmark, data_source, question_id,
  sample_idx, response, pred, score, timeout, ground_truth}``;
* ``summary.json``: settings and, per benchmark, ``avg@n`` (mean correctness: the paper's
  "pass@1 with n samples"), ``pass@k`` for k = 1, 2, 4, ... <= n (unbiased estimator), the
  number of questions and of grading timeouts; plus the in-distribution / OOD averages of
  avg@n over the benchmarks evaluated.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from functools import partial

from verl_ext.data.benchmarks import IN_DISTRIBUTION, Benchmark, clean_ground_truth, get_benchmark, load_questions
from verl_ext.data.prompts import build_messages
from verl_ext.eval.evaluator import Question, evaluate
from verl_ext.eval.generate import HFGenerator, SamplingConfig, VLLMGenerator, resolve_backend
from verl_ext.eval.passk import aggregate_benchmark

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    model: str
    benchmarks: list[str]
    out_dir: str
    backend: str = "auto"
    n: dict[str, int] = field(default_factory=dict)  # per-benchmark override of the default n
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 8192
    limit: int | None = None
    prompt_style: str = "simplerl"
    seed: int = 0
    batch_size: int = 8  # HF backend
    tensor_parallel_size: int = 1  # vLLM backend
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    hf_overrides: dict | None = None
    reward_workers: int = 2
    reward_timeout: float = 5.0
    benchmark_dir: str | None = None
    progress: bool = True


def _make_generator(cfg: EvalConfig):
    backend = resolve_backend(cfg.backend)
    if backend == "vllm":
        return backend, VLLMGenerator(cfg.model, cfg.tensor_parallel_size, cfg.gpu_memory_utilization,
                                      cfg.max_model_len, cfg.seed, hf_overrides=cfg.hf_overrides)
    return backend, HFGenerator(cfg.model, batch_size=cfg.batch_size)


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def run_evaluation(cfg: EvalConfig) -> dict:
    from verl_ext.reward.batch import score_batch
    from verl_ext.reward.pool import GraderPool

    os.makedirs(os.path.join(cfg.out_dir, "samples"), exist_ok=True)
    backend, gen = _make_generator(cfg)
    benches: list[Benchmark] = [get_benchmark(b) for b in cfg.benchmarks]
    summary = {"model": cfg.model, "backend": backend, "settings": asdict(cfg), "benchmarks": {}}
    pool = GraderPool(num_workers=cfg.reward_workers)
    try:
        for bench in benches:
            n = cfg.n.get(bench.key, bench.default_n)
            questions = load_questions(bench, cfg.benchmark_dir, cfg.limit)
            scfg = SamplingConfig(n=n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                                  seed=cfg.seed)
            grader = partial(score_batch, timeout=cfg.reward_timeout, progress=cfg.progress,
                             desc=f"{bench.key} score", pool=pool)
            asked = [Question(build_messages(q["question"], cfg.prompt_style), clean_ground_truth(q["answer"]),
                              bench.data_source) for q in questions]
            ev = evaluate(gen, asked, scfg, grader,
                          progress_desc=f"{bench.key} generate (n={n})" if cfg.progress else None)
            scored = ev.grading
            path = os.path.join(cfg.out_dir, "samples", f"{bench.key}.jsonl")
            per_question: dict[str, list[float]] = {q["id"]: [] for q in questions}
            with open(path, "w") as f:
                for q, a, texts, results in zip(questions, asked, ev.texts, ev.results):
                    for i, (text, res) in enumerate(zip(texts, results)):
                        per_question[q["id"]].append(res["score"])
                        f.write(json.dumps({"benchmark": bench.key, "data_source": bench.data_source,
                                            "question_id": q["id"], "sample_idx": i, "response": text,
                                            "pred": res["pred"], "score": res["score"], "timeout": res["timeout"],
                                            "ground_truth": a.ground_truth}) + "\n")
            agg = aggregate_benchmark(per_question)
            agg.update(timeouts=scored.num_timeouts, grader_errors=scored.num_errors,
                       seconds_generate=round(ev.seconds_generate, 2), seconds_score=round(scored.seconds, 2),
                       samples_file=os.path.relpath(path, cfg.out_dir))
            summary["benchmarks"][bench.key] = agg
            logger.info("%s: avg@%d = %.4f over %d questions", bench.key, agg["n"], agg["avg"], agg["num_questions"])
            print(f"{bench.key}: avg@{agg['n']} = {100 * agg['avg']:.2f}  "
                  + "  ".join(f"pass@{k}={100 * v:.1f}" for k, v in agg["pass@k"].items())
                  + (f"  [{scored.num_timeouts} grading timeouts]" if scored.num_timeouts else ""), flush=True)
    finally:
        pool.close()

    b = summary["benchmarks"]
    summary["averages"] = {
        "id_avg": _mean([b[k]["avg"] for k in b if k in IN_DISTRIBUTION]),
        "ood_avg": _mean([b[k]["avg"] for k in b if k not in IN_DISTRIBUTION]),
    }
    with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
