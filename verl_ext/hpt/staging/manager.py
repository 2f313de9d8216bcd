"""A rollout manager that draws each question's n rollouts in stages (``hpt.stages``).

It wraps verl's own rollout manager (``AgentLoopManager``: the ``hf`` or vLLM rollout, unchanged)
and answers ``fit``'s one training-time ``generate_sequences`` call (B·n rows, n per question, the
verified score ``rm_scores`` in each) with one inner call per stage, each for the questions still
drawing (:func:`verl_ext.hpt.staging.stages.run_stages` decides). Validation calls go straight through.

The answer has ``fit``'s B·n rows in its order. A row never drawn is a placeholder: a copy of a
drawn row of the same question with ``rm_scores`` zeroed, flagged ``hpt_sampled = False``; the
trainer drops placeholders before its gate (:func:`drop_placeholders`). Each row keeps its
position in the full batch as verl's ``priority``, which seeds the ``hf`` rollout per row: a staged
run draws exactly the rows a plain run draws in the same slots.

A ``continue_with_prefix`` stage (:mod:`verl_ext.hpt.staging.stages`) sends the rows of the questions whose
condition holds to verl's agent loop under ``agent_name = "hpt_prefix_agent"``
(:mod:`verl_ext.hpt.staging.prefix_agent_loop`) with ``hpt_prefix_ids``, the question's demonstration cut
by :mod:`verl_ext.hpt.staging.prefix` (``prefixer``); the stage's other rows keep verl's default agent loop.
When the stages have such an action, the answer carries ``hpt_prefix_mask`` (B, R) float: 1 on the
prefix tokens at the start of a prefix row's response, 0 elsewhere (plain rows, placeholders). A
question without a usable demonstration draws that stage's rows plainly.

verl contract relied on (0.9.1): ``AgentLoopManager.generate_sequences`` splits its batch into
``len(agent_loop_workers)`` equal chunks, one per worker, so each stage's request is padded to a
multiple of that with verl's ``pad_dataproto_to_divisor`` (those rows are generated and dropped,
counted as ``rows_padding``). With several workers this manager dispatches the chunks itself, as
verl does, and aligns the rows' extra fields across them (:meth:`StagedRolloutManager._generate`:
verl aligns them within a chunk only, and a stage mixes agent loops with different fields); the
agent loop fills ``rm_scores`` when the reward runs in it (the HPT trainer needs that anyway, see
``unsupported_settings``). ``tests/unit/test_verl_patches.py`` checks that dispatch against verl's source.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from verl import DataProto
from verl.protocol import pad_dataproto_to_divisor, unpad_dataproto

from verl_ext.hpt.staging.stages import (
    PREFIX_ACTION,
    PREFIX_AGENT,
    PREFIX_IDS_KEY,
    PREFIX_LEN_KEY,
    SAMPLED_KEY,
    STOPPED_KEY,
    Stage,
    StagePlan,
    run_stages,
)
from verl_ext.loss.batch_keys import HPT_PREFIX_MASK



def question_rows(uids: np.ndarray, n: int) -> np.ndarray:
    """(Q, n) row indices per question, questions in order of first appearance.

    ``fit`` repeats each prompt n times (interleaved) under one uid; anything else is an error
    here rather than a wrong grouping.
    """
    order: dict = {}
    for i, u in enumerate(uids):
        order.setdefault(u, []).append(i)
    bad = [u for u, rows in order.items() if len(rows) != n]
    if bad:
        raise RuntimeError(f"staged generation: uid {bad[0]!r} has {len(order[bad[0]])} rows, expected "
                           f"actor_rollout_ref.rollout.n={n}")
    return np.asarray(list(order.values()), dtype=np.int64)


class StagedRolloutManager:
    def __init__(self, inner, stages: Sequence[Stage], n: int, correct_threshold: float,
                 before_rollout: Optional[Callable[[], None]] = None, prefixer=None,
                 default_agent: Optional[str] = None):
        self.inner = inner
        self.stages = tuple(stages)
        self.n = int(n)
        self.correct_threshold = float(correct_threshold)
        self.before_rollout = before_rollout
        self.last_plan: Optional[StagePlan] = None
        self.last_padding_rows = 0
        self.prefixer = prefixer  # verl_ext.hpt.staging.prefix.DemonstrationPrefixer (needed by prefix stages)
        self.default_agent = default_agent  # verl's agent.default_agent_loop (None: read from the inner config)
        self.has_prefix = any(s.action == PREFIX_ACTION for s in self.stages)
        if self.has_prefix and prefixer is None:
            raise ValueError("hpt.stages has a continue_with_prefix stage but no demonstration prefixer was given")

    def _default_agent(self) -> str:
        if self.default_agent is None:
            try:
                self.default_agent = str(self.inner.config.actor_rollout_ref.rollout.agent.default_agent_loop)
            except AttributeError:
                self.default_agent = "single_turn_agent"
        return self.default_agent

    def __getattr__(self, name):  # everything else is verl's manager's
        return getattr(self.inner, name)

    def _workers(self) -> int:
        return max(1, len(getattr(self.inner, "agent_loop_workers", None) or []))

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        if prompts.meta_info.get("validate", False):
            return self.inner.generate_sequences(prompts)
        if self.before_rollout is not None:
            self.before_rollout()
        total = len(prompts)
        if "priority" not in prompts.non_tensor_batch:
            prompts.non_tensor_batch["priority"] = np.arange(total, dtype=np.int64)
        groups = question_rows(prompts.non_tensor_batch["uid"], self.n)  # (Q, n)
        offsets = np.cumsum([0] + [s.rollouts for s in self.stages])
        drawn_rows: list[np.ndarray] = []
        prefix_lens: list[np.ndarray] = []  # per stage: (m*k,) prefix tokens of each drawn row
        outputs: list[DataProto] = []
        timing: dict[str, float] = {}
        self.last_padding_rows = 0

        def draw(s: int, questions: np.ndarray, k: int, prefix: np.ndarray) -> np.ndarray:
            rows = groups[questions, offsets[s]:offsets[s] + k].reshape(-1)  # (m*k,)
            request = prompts.select_idxs(rows)
            lens = np.zeros(rows.size, dtype=np.int64)
            if self.has_prefix:
                lens = self._attach_prefixes(request, rows, np.repeat(np.asarray(prefix, dtype=np.float64), k))
                sent = request.non_tensor_batch[PREFIX_IDS_KEY]
            request, pad = pad_dataproto_to_divisor(request, self._workers())
            if pad:
                # verl's padding repeats the first rows, priorities included; under
                # rollout.full_determinism a priority becomes the request id ("det-<priority>"), so
                # each padding row gets its own, past every real row's (its output is dropped below).
                prio = np.array(request.non_tensor_batch["priority"], dtype=np.int64)
                prio[-pad:] = total + self.last_padding_rows + np.arange(pad)
                request.non_tensor_batch["priority"] = prio
            out = unpad_dataproto(self._generate(request), pad)
            for key in (PREFIX_IDS_KEY, PREFIX_LEN_KEY):
                out.non_tensor_batch.pop(key, None)
            if lens.any():
                _check_prefixes(out.batch["responses"], sent, lens)
            prefix_lens.append(lens)
            self.last_padding_rows += pad
            if "rm_scores" not in out.batch.keys():
                raise RuntimeError("staged generation needs each rollout's score from the agent loop (rm_scores) to "
                                   "decide the next stage; this rollout returned none")
            for key, value in (out.meta_info.pop("timing", None) or {}).items():
                if isinstance(value, (int, float)):
                    timing[key] = timing.get(key, 0.0) + float(value)
            drawn_rows.append(rows)
            outputs.append(out)
            score = out.batch["rm_scores"].sum(-1).float().numpy()  # (m*k,)
            return (score >= self.correct_threshold).reshape(len(questions), k)

        plan = run_stages(self.stages, groups.shape[0], draw)
        self.last_plan = plan
        drawn = np.concatenate(drawn_rows)  # (D,) positions in the full batch
        _align_non_tensor_keys(outputs)
        cat = DataProto.concat(outputs) if len(outputs) > 1 else outputs[0]
        position = np.full(total, -1, dtype=np.int64)
        position[drawn] = np.arange(drawn.size)
        sampled = position >= 0  # (N,)
        question = np.empty(total, dtype=np.int64)
        question[groups.reshape(-1)] = np.repeat(np.arange(groups.shape[0]), self.n)
        # A placeholder copies the first drawn row of its question (every question draws in stage 1).
        first = position[groups[:, 0]]  # (Q,)
        source = np.where(sampled, position, first[question])
        full = cat.select_idxs(source)
        full.batch["rm_scores"][~sampled] = 0.0
        full.non_tensor_batch[SAMPLED_KEY] = sampled
        full.non_tensor_batch[STOPPED_KEY] = plan.stopped[question]
        if self.has_prefix:
            width = full.batch["responses"].shape[1]
            lens = np.zeros(total, dtype=np.int64)
            lens[drawn] = np.concatenate(prefix_lens)
            full.batch[HPT_PREFIX_MASK] = (torch.arange(width)[None, :] < torch.as_tensor(lens)[:, None]).float()
        full.meta_info["timing"] = timing
        return full


    def _generate(self, request: DataProto) -> DataProto:
        """One generation call: verl's ``AgentLoopManager.generate_sequences`` (0.9.1), with the rows'
        extra fields made equal across the agent-loop workers' chunks.

        verl hands each worker a contiguous chunk, makes the extra fields equal *within* the chunk
        (``AgentLoopWorker._postprocess`` fills a key some rows lack with None) and then concatenates
        the chunks, asserting equal keys. A stage mixes rows whose agent loops return different
        fields: plain rows (verl's single-turn loop, no ``hpt_prefix_len``), prefix rows, and
        whole-demonstration rows that make no server call (so none of the server's fields such as
        ``global_steps``). With more than one worker a chunk can hold one kind only, and verl's
        concatenation fails. Here the chunks are dispatched as verl does and their keys aligned
        (:func:`_align_non_tensor_keys`) before the concatenation; the timing metrics are verl's own.
        """
        workers = list(getattr(self.inner, "agent_loop_workers", None) or [])
        if len(workers) <= 1 or not hasattr(self.inner, "_performance_metrics"):
            return self.inner.generate_sequences(request)
        import ray

        chunks = request.chunk(len(workers))
        outputs = ray.get([w.generate_sequences.remote(c) for w, c in zip(workers, chunks, strict=True)])
        metrics = [o.meta_info.pop("metrics") for o in outputs]  # per chunk: one dict per row
        _align_non_tensor_keys(outputs)
        output = DataProto.concat(outputs)
        output.meta_info = {"timing": self.inner._performance_metrics(metrics, output), **outputs[0].meta_info}
        return output

    def _attach_prefixes(self, request: DataProto, rows: np.ndarray, fractions: np.ndarray) -> np.ndarray:
        """Give ``request``'s rows with a prefix fraction > 0 the prefix agent loop and their prefix ids
        (in place); the others verl's default agent. Returns (len(request),) prefix lengths (0: plain)."""
        lens = np.zeros(len(request), dtype=np.int64)
        ids = np.empty(len(request), dtype=object)
        ids[:] = [None] * len(request)
        given = request.non_tensor_batch.get("agent_name")  # a dataset's own per-row agent loops stay
        agents = (np.array(given, dtype=object) if given is not None
                  else np.array([self._default_agent()] * len(request), dtype=object))
        want = np.flatnonzero(fractions > 0)
        if want.size:
            prefixes = self.prefixer.prefix_ids(request, want, fractions[want])
            for j, pre in zip(want, prefixes):
                if pre:  # None: no usable demonstration, drawn plainly
                    ids[j], lens[j], agents[j] = list(pre), len(pre), PREFIX_AGENT
        request.non_tensor_batch["agent_name"] = agents
        request.non_tensor_batch[PREFIX_IDS_KEY] = ids
        return lens


def _check_prefixes(responses: torch.Tensor, sent: np.ndarray, lens: np.ndarray) -> None:
    """Every prefix row's response starts with the prefix it was sent (the agent loop's contract; a
    tokenizer-specific merge that edited the boundary would break the hpt_prefix_mask)."""
    width = responses.shape[1]
    for j in np.flatnonzero(lens):
        want = list(sent[j])[:width]
        got = responses[j, :len(want)].tolist()
        if got != want:
            raise RuntimeError(f"staged generation: prefix row {j}'s response does not start with its demonstration "
                               f"prefix ({len(want)} tokens; first mismatch at token "
                               f"{next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)})")
        lens[j] = len(want)


def _align_non_tensor_keys(outputs: list) -> None:
    """Stages' outputs with the same non-tensor keys (``DataProto.concat`` needs them): a key some
    stage's answer lacks (e.g. an extra field only one agent loop returns) is filled with None there."""
    keys = set().union(*(o.non_tensor_batch.keys() for o in outputs))
    for o in outputs:
        for key in keys - set(o.non_tensor_batch):
            filler = np.empty(len(o), dtype=object)
            filler[:] = [None] * len(o)
            o.non_tensor_batch[key] = filler
