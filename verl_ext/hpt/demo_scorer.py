"""Demonstrations scored with the run's reward function, as verl's reward workers score rollouts.

A demonstration never passes through verl's reward-loop workers, but its score is logged and, with
``placement=add`` (LUFFY/SRFT), it enters its group's advantage statistics: the step scores it here
with the same function, ``reward.custom_reward_function`` if set, else verl's ``default_compute_score``.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Callable, Sequence


class DemoScorer:
    """Demonstrations scored with the run's reward function (``reward.custom_reward_function``, else
    verl's ``default_compute_score``): a demonstration never passes through verl's reward workers,
    but its score is logged and, with ``placement=add``, enters its group's advantage statistics."""

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
            res = call_sync(self.fn, data_source=nt["data_source"][row] if "data_source" in nt else None,
                            solution_str=text, ground_truth=(rm or {}).get("ground_truth"),
                            extra_info=nt["extra_info"][row] if "extra_info" in nt else None)
            out.append(dict(res) if isinstance(res, dict) else {"score": float(res)})
        return out


def call_sync(fn: Callable[..., Any], **kwargs) -> Any:
    """``fn(**kwargs)``, awaited when it returns an awaitable (verl's reward functions may be async),
    also from inside a running event loop (then in a thread of its own)."""
    res = fn(**kwargs)
    if inspect.isawaitable(res):
        res = asyncio.run(res) if not _loop_running() else _run_in_thread(res)
    return res


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
