"""Verify demonstrations with the run's own reward function (driver side).

The release scores its demonstration rows too (their reward is logged and, with ``placement=add``
as in LUFFY/SRFT, it enters the group's advantage statistics). verl computes rollout rewards in
its reward-loop workers; a demonstration never passes through them, so it is scored here with the
same function: ``reward.custom_reward_function`` if set, else verl's ``default_compute_score``.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Sequence

import asyncio

logger = logging.getLogger(__name__)


class DemoScorer:
    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    @classmethod
    def from_config(cls, config) -> "DemoScorer":
        from verl.trainer.ppo.reward import get_custom_reward_fn

        fn = get_custom_reward_fn(config)
        if fn is None:
            from verl.utils.reward_score import default_compute_score

            fn = default_compute_score
        return cls(fn)

    def score(self, batch, rows: Sequence[int], texts: Sequence[str]) -> list[dict]:
        """Score ``texts[i]`` as the response of batch row ``rows[i]``; dicts with at least ``score``."""
        nt = batch.non_tensor_batch
        out = []
        for row, text in zip(rows, texts):
            row = int(row)
            rm = nt["reward_model"][row] if "reward_model" in nt else {}
            res = self.fn(
                data_source=nt["data_source"][row] if "data_source" in nt else None,
                solution_str=text,
                ground_truth=(rm or {}).get("ground_truth"),
                extra_info=nt["extra_info"][row] if "extra_info" in nt else None,
            )
            if inspect.isawaitable(res):
                res = asyncio.run(res) if not _loop_running() else _run_in_thread(res)
            out.append(dict(res) if isinstance(res, dict) else {"score": float(res)})
        return out


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _run_in_thread(coro):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()
