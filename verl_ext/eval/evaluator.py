"""The project's one evaluation loop: template -> sample -> grade.

Every evaluation of a model goes through :func:`evaluate`: the benchmark runner
(``verl_ext.eval.runner``: vLLM or HF ``generate``, graded in a pool of worker processes with hard
timeouts), the arithmetic task's per-level accuracy (``verl_ext.tasks.evaluate``) and the arena's
per-problem counts (``verl_ext.arena.evaluate``; both through :func:`evaluate_rows`: an in-memory
model sampled by the ``hf`` rollout's sampler, graded in-process). What differs between them is only
the backend (a :class:`~verl_ext.eval.generate.Generator`), the grader and what the caller sums up,
so a change to how prompts are templated, sampled or graded is made once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from verl_ext.eval.generate import Generator, SamplingConfig, TorchSampler
from verl_ext.reward.batch import BatchScores

# (responses, ground truths, data sources) -> one compute_score-style dict per response, in order
Grader = Callable[[list[str], list[Any], list[str]], BatchScores]


@dataclass(frozen=True)
class Question:
    messages: list[dict]  # the chat prompt (the backend's ``render`` templates it)
    ground_truth: Any
    data_source: str  # selects the grader (math or multiple choice)


@dataclass
class Evaluation:
    texts: list[list[str]]  # per question, its samples' responses
    results: list[list[dict]]  # per question, the grader's dict per sample ({"score": ..., ...})
    grading: BatchScores  # all samples' grading: timeouts, errors, seconds
    seconds_generate: float  # templating and sampling

    def scores(self) -> list[list[float]]:
        return [[float(r["score"]) for r in rs] for rs in self.results]

    def correct(self, threshold: float = 1.0) -> list[list[bool]]:
        """Per question and sample: graded at least ``threshold`` (the math reward gives 1 for a
        correct answer)."""
        return [[s >= threshold for s in ss] for ss in self.scores()]


def grade_in_process(responses: Sequence[str], ground_truths: Sequence[Any], data_sources: Sequence[str],
                     score_fn: Optional[Callable[..., Any]] = None) -> BatchScores:
    """Grade one response after the other in this process with ``score_fn(data_source, response,
    ground_truth)`` (verl's reward signature; default: the project's math reward), which returns a
    dict with ``score`` or a bare number. No worker processes: for short answers (the arithmetic
    task) starting a pool costs more than the grading."""
    if score_fn is None:
        from verl_ext.reward import compute_score as score_fn

    t0 = time.monotonic()
    results = []
    for response, gt, source in zip(responses, ground_truths, data_sources, strict=True):
        res = score_fn(source, response, gt)
        results.append(dict(res) if isinstance(res, dict) else {"score": float(res)})
    timeouts = sum(1 for r in results if r.get("timeout"))
    return BatchScores(results=results, num_timeouts=timeouts, num_errors=0, seconds=time.monotonic() - t0)


def evaluate(generator: Generator, questions: Sequence[Question], sampling: SamplingConfig,
             grader: Grader = grade_in_process, progress_desc: str | None = None) -> Evaluation:
    """``sampling.n`` samples of every question's templated prompt, each graded against the
    question's ground truth. ``progress_desc``: show a progress bar over the questions' sampling."""
    t0 = time.monotonic()
    prompts = generator.render([q.messages for q in questions])
    bar = None
    if progress_desc is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc=progress_desc, unit="q", dynamic_ncols=True)
    try:
        texts = generator.generate(prompts, sampling, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    seconds_generate = time.monotonic() - t0
    if len(texts) != len(questions):
        raise RuntimeError(f"{type(generator).__name__}.generate returned completions for {len(texts)} prompts, "
                           f"not {len(questions)}: a backend returns one list of samples per prompt")
    owner = [i for i, samples in enumerate(texts) for _ in samples]
    flat = [t for samples in texts for t in samples]
    graded = grader(flat, [questions[i].ground_truth for i in owner], [questions[i].data_source for i in owner])
    results: list[list[dict]] = [[] for _ in questions]
    for i, res in zip(owner, graded.results, strict=True):
        results[i].append(res)
    return Evaluation(texts=[list(t) for t in texts], results=results, grading=graded,
                      seconds_generate=seconds_generate)


def questions_from_rows(rows, prompt_key: str = "prompt") -> list[Question]:
    """The questions of a verl RL DataFrame (``prompt`` messages, ``reward_model.ground_truth``,
    ``data_source``), in row order."""
    return [Question(messages=list(r[prompt_key]), ground_truth=r["reward_model"]["ground_truth"],
                     data_source=r["data_source"]) for r in rows.to_dict("records")]


def evaluate_rows(model, tokenizer, rows, *, temperature: float = 0.0, samples: int = 1, max_new_tokens: int = 48,
                  seed: int = 0, batch_size: int = 128, score_fn: Optional[Callable[..., Any]] = None,
                  prompt_key: str = "prompt") -> Evaluation:
    """A verl RL DataFrame through an in-memory ``model``: greedy (``temperature`` 0) or temperature
    sampling without top-p/top-k, as the ``hf`` rollout samples (:class:`TorchSampler`), graded
    in-process by ``score_fn`` (default: the project's math reward)."""
    sampling = SamplingConfig(n=samples, temperature=temperature, top_p=1.0, max_tokens=max_new_tokens, seed=seed)
    return evaluate(TorchSampler(model, tokenizer, batch_size=batch_size), questions_from_rows(rows, prompt_key),
                    sampling, grader=lambda r, g, d: grade_in_process(r, g, d, score_fn=score_fn))
