"""Score many responses in parallel worker processes, with progress and a timeout count.

Answers that the in-process fast path decides (equal normalised strings, distinct integers, no
box, multiple choice) never reach a worker; the rest are spread over ``num_workers`` grading
processes by as many dispatcher threads (the threads only wait on pipes, so the GIL is not a
bottleneck).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Sequence

from verl_ext.reward.pool import GraderPool
from verl_ext.reward.score import DEFAULT_TIMEOUT_S, is_gpqa, score_choice, score_math

logger = logging.getLogger(__name__)


@dataclass
class BatchScores:
    results: list[dict]  # one compute_score-style dict per input, in input order
    num_timeouts: int  # answers whose grading hit a time limit (scored 0, flagged "timeout")
    num_errors: int  # worker crashes / grader exceptions (scored 0)
    seconds: float
    pool_stats: dict = field(default_factory=dict)

    @property
    def scores(self) -> list[float]:
        return [r["score"] for r in self.results]

    @property
    def throughput(self) -> float:
        """Answers per second."""
        return len(self.results) / self.seconds if self.seconds > 0 else float("inf")


def score_batch(
    solutions: Sequence[str],
    ground_truths: Sequence[Any],
    data_sources: Sequence[str] | str | None = None,
    num_workers: int = 2,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: bool = True,
    desc: str = "scoring",
    pool: GraderPool | None = None,
    grader: str | None = None,
) -> BatchScores:
    """Score ``solutions[i]`` against ``ground_truths[i]`` (``data_sources[i]`` selects math vs
    multiple choice; a single string applies to all). ``timeout`` is the hard per-answer limit.

    Uses its own pool of ``num_workers`` processes unless ``pool`` is given (then it is reused
    and left open). Timeouts and errors are logged and counted in the returned object. ``grader``
    selects the grader mode (see :func:`verl_ext.reward.score.compute_score`).
    """
    n = len(solutions)
    if len(ground_truths) != n:
        raise ValueError(f"{n} solutions but {len(ground_truths)} ground truths")
    if data_sources is None or isinstance(data_sources, str):
        data_sources = [data_sources or "math"] * n
    elif len(data_sources) != n:
        raise ValueError(f"{n} solutions but {len(data_sources)} data sources")

    own_pool = pool is None
    pool = pool or GraderPool(num_workers=num_workers)
    errors_before = pool.stats["errors"]
    t0 = time.monotonic()
    results: list[dict | None] = [None] * n

    def _one(i: int) -> None:
        if is_gpqa(data_sources[i]):
            results[i] = score_choice(solutions[i], ground_truths[i])
        else:
            results[i] = score_math(solutions[i], ground_truths[i], timeout=timeout, pool=pool, grader=grader)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=desc, unit="ans", dynamic_ncols=True)
    try:
        with ThreadPoolExecutor(max_workers=max(1, pool.num_workers)) as ex:
            futures = [ex.submit(_one, i) for i in range(n)]
            for fut in as_completed(futures):
                fut.result()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(timeouts=sum(1 for r in results if r and r["timeout"]), refresh=False)
    finally:
        if bar is not None:
            bar.close()
        stats = dict(pool.stats)
        if own_pool:
            pool.close()
    seconds = time.monotonic() - t0
    num_timeouts = sum(1 for r in results if r["timeout"])
    num_errors = stats["errors"] - errors_before
    if num_timeouts or num_errors:
        logger.warning("score_batch: %d/%d answers timed out, %d grader errors (scored 0)", num_timeouts, n, num_errors)
    return BatchScores(results=results, num_timeouts=num_timeouts, num_errors=num_errors, seconds=seconds,
                       pool_stats=stats)
