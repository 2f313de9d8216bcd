"""Build HPT's training batch: gated questions' demonstrations merged with the kept rollouts.

Operates on verl ``DataProto`` batches as they are inside ``RayPPOTrainer.fit`` after
``batch.repeat(n).union(gen_batch_output)``: tensors ``prompts`` (B,P) left-padded, ``responses``
(B,R) right-padded, ``response_mask`` (B,R), ``input_ids``/``attention_mask``/``position_ids``
(B,P+R), ``rm_scores`` (B,R) with the score on the last valid response token, optionally
``rollout_log_probs`` (B,R); non-tensors ``uid``, ``extra_info`` ... per row.

Per question q with weights (α_q, β_q) from :mod:`verl_ext.hpt.gate`, the merged batch holds, in
question order: q's rollout rows if α_q > 0 (``hpt_row_weight`` = α_q, ``hpt_row_kind`` =
``RowKind.ROLLOUT``), then, if β_q > 0, one demonstration row per entry of ``demo_arms``
(``hpt.gate.demo_arms``), each the question's prompt with the demonstration tokens (+EOS) as the
response and ``hpt_row_weight`` = β_q (β_q / m for each of m demonstrations, below;
:class:`verl_ext.loss.batch_keys.RowKind` names the kinds):

- ``demo``: ``hpt_row_kind`` = ``RowKind.SFT_DEMO`` (the loss's ``demo`` arm). With
  ``placement=replace`` it gets its own uid (``<uid>::demo``) so GRPO's group statistics of the
  rollouts are unchanged; with ``placement=add`` it keeps the question's uid and joins the group
  (LUFFY/SRFT).
- ``demo_off``: ``hpt_row_kind`` = ``RowKind.OFF_POLICY_DEMO`` (the loss's ``demo_off`` arm),
  always the question's uid: it joins the group, so verl's GRPO advantage is over rollouts ∪
  demonstration (Table 5 Mix/ON, OFF/ON).

With both, the ``demo`` row comes first. Both rows carry the same tokens, score and extras.

Several demonstrations of one question (``hpt.demo_choice=all`` with a list in the demonstration
field; ``demo_ids[q]`` is then a list of m token-id lists): each gets its rows as above, in order
(demonstration 1's ``demo`` and ``demo_off`` rows, then demonstration 2's, ...), and each row is
weighted β_q / m. The question's SFT weight is shared, not multiplied: its demonstration rows sum
to β_q whatever the number of teachers, as one demonstration's row does, so a question with more
teachers is not trained harder than one with a single demonstration (the m rows still add m
demonstrations' tokens to the arm's token totals). Under ``placement=replace`` demonstration k ≥ 1's
``demo`` row gets the uid ``<uid>::demo<k>``: each demonstration stays a group of its own, as a
single one is (a shared uid would make GRPO centre the demonstrations on each other).

Demonstration rows themselves (usable, tokens, layout) are :mod:`verl_ext.hpt.demonstrations`;
this module chooses the rows per question, flags them and pads the batch.

Padding rows (:func:`pad_with_zero_weight_rows`) keep verl's divisibility requirements without
changing what is learned or costing tokens: each has a real row's shapes but a one-token sequence
(the attention mask keeps only the last prompt position), ``response_mask`` = 0 (no loss token, not
counted in any token total), ``hpt_row_weight`` = 0 and a uid of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from verl import DataProto

from verl_ext.hpt.demonstrations import build_demo_rows
from verl_ext.hpt.gate import PLACEMENTS, QuestionStats
from verl_ext.loss.batch_keys import HPT_PREFIX_MASK, HPT_ROW_KIND, HPT_ROW_WEIGHT, RowKind
from verl_ext.loss.config import DEMO_ARMS

DEMO_UID_SUFFIX = "::demo"
PAD_UID_PREFIX = "__hpt_pad__"


def _kinds(kind: RowKind, n: int) -> torch.Tensor:
    """(n,) int64 ``hpt_row_kind`` values, all ``kind``."""
    return torch.full((n,), int(kind), dtype=torch.int64)


@dataclass
class MergeStats:
    num_questions: int
    num_gated: int  # questions with demonstration rows (β > 0)
    num_rl: int  # questions whose rollouts are kept (α > 0)
    rollout_rows: int
    demo_rows: int  # all demonstration rows (SFT_DEMO and OFF_POLICY_DEMO; per demonstration with several)
    demo_truncated: int = 0
    demo_off_rows: int = 0  # of which demo_off rows (OFF_POLICY_DEMO)


def _is_demo_list(ids) -> bool:
    """Whether ``ids`` (a gated question's ``demo_ids`` entry) is a list of demonstrations rather than
    one demonstration's token ids (a demonstration always has a token: its EOS)."""
    return len(ids) > 0 and not isinstance(ids[0], (int, np.integer)) and not (
        isinstance(ids[0], torch.Tensor) and ids[0].dim() == 0)


def _per_demo(value, m: int, what: str, q: int) -> list:
    """A per-question ``value`` as one value per demonstration of a question with a list of ``m``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != m:
        raise ValueError(f"question {q} has {m} demonstrations: its {what} must be a list of {m} values, "
                         f"got {value!r}")
    return list(value)


def merge_demonstrations(batch: DataProto, stats: QuestionStats, alpha: np.ndarray, beta: np.ndarray,
                         demo_ids: Sequence[Optional[Sequence[int]]], pad_token_id: int, placement: str = "replace",
                         demo_scores: Optional[Sequence[float]] = None,
                         demo_extra: Optional[dict[str, Sequence]] = None,
                         demo_arms: Sequence[str] = ("demo",)) -> tuple[DataProto, MergeStats]:
    """Return the merged batch (see module docstring) and counts.

    demo_ids[q] must be given for every question with β_q > 0 (None elsewhere): one demonstration's
    token ids, or a list of several (then demo_scores[q] and each demo_extra[key][q] are lists of the
    same length). demo_scores[q] is the verifier's score of the demonstration (placed in
    ``rm_scores``); demo_extra maps reward extra keys (e.g. ``acc``) to per-question values for the
    demo rows. demo_arms: which demonstration rows a gated question gets (``GateConfig.demo_arms``).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r} is not one of {list(PLACEMENTS)}")
    if isinstance(demo_arms, str) or not demo_arms or any(a not in DEMO_ARMS for a in demo_arms) \
            or len(set(demo_arms)) != len(demo_arms):
        raise ValueError(f"demo_arms={demo_arms!r} must be a non-empty list of distinct values from {list(DEMO_ARMS)}")
    arms = [a for a in DEMO_ARMS if a in demo_arms]  # demo row before demo_off row
    q = len(stats.uids)
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.shape != (q,) or beta.shape != (q,):
        raise ValueError(f"alpha/beta must have shape ({q},), got {alpha.shape}/{beta.shape}")
    gated = np.flatnonzero(beta > 0)
    missing = [int(i) for i in gated if demo_ids[i] is None]
    if missing:
        raise ValueError(f"question(s) {missing[:5]} gated to SFT but have no demonstration")

    # One unit per demonstration to build: (question, k-th of its demonstrations, of m).
    units: list[tuple[int, int, int]] = []
    unit_ids, unit_scores, unit_extra = [], [], {key: [] for key in (demo_extra or {})}
    first_unit = {}
    for qi in (int(i) for i in gated):
        if len(demo_ids[qi]) == 0:
            raise ValueError(f"question {qi} gated to SFT has an empty demonstration (no token ids, or an empty "
                             f"list of demonstrations)")
        several = _is_demo_list(demo_ids[qi])
        ids_q = list(demo_ids[qi]) if several else [demo_ids[qi]]
        m = len(ids_q)
        scores_q = None if demo_scores is None else (
            _per_demo(demo_scores[qi], m, "demo_scores", qi) if several else [demo_scores[qi]])
        first_unit[qi] = len(units)
        for k in range(m):
            units.append((qi, k, m))
            unit_ids.append(ids_q[k])
            if scores_q is not None:
                unit_scores.append(scores_q[k])
        for key, values in (demo_extra or {}).items():
            unit_extra[key] += _per_demo(values[qi], m, f"demo_extra[{key!r}]", qi) if several else [values[qi]]
    n_units = len(units)

    pieces: list[tuple[str, int]] = []  # ("roll", row) or (demo arm, index into units)
    for qi in range(q):
        if alpha[qi] > 0:
            pieces.extend(("roll", int(r)) for r in stats.rows[qi])
        if beta[qi] > 0:
            u0 = first_unit[qi]
            for u in range(u0, u0 + units[u0][2]):
                pieces.extend((arm, u) for arm in arms)

    roll_rows = np.asarray([i for kind, i in pieces if kind == "roll"], dtype=np.int64)
    parts = []
    if len(roll_rows):
        roll = batch.select_idxs(roll_rows)
        row_q = np.empty(len(batch), dtype=np.int64)
        for qi, rows in enumerate(stats.rows):
            row_q[rows] = qi
        roll.batch[HPT_ROW_WEIGHT] = torch.as_tensor(alpha[row_q[roll_rows]], dtype=torch.float32)
        roll.batch[HPT_ROW_KIND] = _kinds(RowKind.ROLLOUT, len(roll_rows))
        parts.append(roll)
    if n_units:
        unit_q = np.asarray([u[0] for u in units], dtype=np.int64)
        template = batch.select_idxs(stats.first_row[unit_q])
        demos = build_demo_rows(template, unit_ids, pad_token_id, scores=unit_scores if demo_scores is not None
                                else None)
        demos.batch[HPT_ROW_WEIGHT] = torch.as_tensor(beta[unit_q] / np.asarray([u[2] for u in units]),
                                                      dtype=torch.float32)  # β / m: the question's β shared
        for key, values in unit_extra.items():
            if key in demos.non_tensor_batch:
                demos.non_tensor_batch[key] = np.asarray(values, dtype=demos.non_tensor_batch[key].dtype)
        for k, arm in enumerate(arms):
            rows = demos if k == len(arms) - 1 else demos.select_idxs(np.arange(n_units))  # a copy
            rows.batch[HPT_ROW_KIND] = _kinds(RowKind.of_arm(arm), n_units)
            if arm == "demo" and placement == "replace":
                uids = rows.non_tensor_batch["uid"]
                rows.non_tensor_batch["uid"] = np.asarray(
                    [f"{uid}{DEMO_UID_SUFFIX}{unit[1] or ''}" for uid, unit in zip(uids, units)], dtype=object)
            parts.append(rows)
    if not parts:
        raise ValueError("HPT gate kept no rows (every question has alpha = beta = 0)")
    merged = DataProto.concat(parts) if len(parts) > 1 else parts[0]
    # Restore question order: rollouts of q, then q's demonstration rows (per demonstration: demo, demo_off).
    n_roll = len(roll_rows)
    roll_index = {int(r): k for k, r in enumerate(roll_rows)}
    offset = {arm: n_roll + k * n_units for k, arm in enumerate(arms)}
    order = [roll_index[i] if kind == "roll" else offset[kind] + i for kind, i in pieces]
    merged.reorder(torch.as_tensor(order, dtype=torch.long))
    return merged, MergeStats(
        num_questions=q,
        num_gated=int(len(gated)),
        num_rl=int((alpha > 0).sum()),
        rollout_rows=int(n_roll),
        demo_rows=n_units * len(arms),
        demo_off_rows=n_units if "demo_off" in arms else 0,
    )


def pad_with_zero_weight_rows(batch: DataProto, multiple: int) -> tuple[DataProto, int]:
    """(a new batch: ``batch`` + inert rows until the length is a multiple of ``multiple``; the
    number of rows added). ``batch`` itself is left unchanged; with nothing to add it is returned as
    is (n = 0).

    A padding row has the last row's shapes and keys, but its ``attention_mask`` keeps one token
    (the last prompt position, where a left-padded prompt ends) and its response is empty: under
    ``use_remove_padding`` (every GPU config) and dynamic batch sizes the old-log-prob pass and the
    update see one token per padding row instead of a full copy of a real row, and verl's balancing
    (which weighs rows by their attention-mask sum, equal row counts per rank) places them as the
    near-empty rows they are. Without remove-padding the forward is over the padded width anyway."""
    if multiple <= 1 or len(batch) % multiple == 0:
        return batch, 0
    n_pad = multiple - len(batch) % multiple
    if HPT_ROW_WEIGHT not in batch.batch.keys() or HPT_ROW_KIND not in batch.batch.keys():
        # The rows' own HPT keys are added to a copy: the caller's batch keeps its keys.
        batch = batch.select_idxs(np.arange(len(batch)))
    idx = np.full(n_pad, len(batch) - 1, dtype=np.int64)
    pad = batch.select_idxs(idx)
    pad.batch["response_mask"] = torch.zeros_like(pad.batch["response_mask"])
    prompt_len = pad.batch["prompts"].shape[1] if "prompts" in pad.batch.keys() else None
    if prompt_len:
        attention = torch.zeros_like(pad.batch["attention_mask"])  # (n_pad, P+R)
        attention[:, prompt_len - 1] = 1  # one token: the sequence a padding row costs
        pad.batch["attention_mask"] = attention
    if HPT_PREFIX_MASK in pad.batch.keys():
        pad.batch[HPT_PREFIX_MASK] = torch.zeros_like(pad.batch[HPT_PREFIX_MASK])
    if "rm_scores" in pad.batch.keys():
        pad.batch["rm_scores"] = torch.zeros_like(pad.batch["rm_scores"])
    for key in ("advantages", "returns", "token_level_scores", "token_level_rewards"):
        if key in pad.batch.keys():
            pad.batch[key] = torch.zeros_like(pad.batch[key])
    pad.batch[HPT_ROW_WEIGHT] = torch.zeros(n_pad, dtype=torch.float32)
    if HPT_ROW_KIND not in pad.batch.keys():
        pad.batch[HPT_ROW_KIND] = _kinds(RowKind.ROLLOUT, n_pad)
    if HPT_ROW_WEIGHT not in batch.batch.keys():
        batch.batch[HPT_ROW_WEIGHT] = torch.ones(len(batch), dtype=torch.float32)
    if HPT_ROW_KIND not in batch.batch.keys():
        batch.batch[HPT_ROW_KIND] = _kinds(RowKind.ROLLOUT, len(batch))
    # Own uid per pad row (position-based, so the trainer's two padding passes never collide).
    pad.non_tensor_batch["uid"] = np.asarray([f"{PAD_UID_PREFIX}{len(batch) + i}" for i in range(n_pad)],
                                             dtype=object)
    return DataProto.concat([batch, pad]), n_pad


def neutralise_demo_rollout_log_probs(batch: DataProto, actor_log_probs: torch.Tensor) -> Optional[dict]:
    """Demonstration rows' ``rollout_log_probs`` := the actor's own old log-probs, in place; returns
    verl's rollout-vs-actor mismatch metrics over the sampled rows alone (None when nothing changed).

    A demonstration was never sampled by the rollout engine, so it has no rollout log-prob. Setting
    it to the actor's own log-prob makes it neutral for everything verl derives from the pair, on
    every step and for every row, instead of dropping the key for the whole step: rollout correction
    (decoupled mode) sees log-ratio 0 there, i.e. IS weight 1 and never a rejection, and the HPT loss
    applies IS weights to rollout rows only anyway. Demonstration-prefix tokens inside rollout rows
    (staged prefix stages, ``hpt_prefix_mask``) were not sampled either. verl's mismatch metrics
    (``training/rollout_probs_diff_*``) over every row would be diluted by those zero differences,
    so they are recomputed here over the sampled tokens.
    """
    from verl.utils.debug.metrics import calculate_debug_metrics

    keys = batch.batch.keys()
    if "rollout_log_probs" not in keys or HPT_ROW_KIND not in keys:
        return None
    demo = batch.batch[HPT_ROW_KIND] != RowKind.ROLLOUT  # (B,) demonstration rows (any kind)
    prefix = batch.batch[HPT_PREFIX_MASK].bool() if HPT_PREFIX_MASK in keys else None  # (B, T)
    if not bool(demo.any()) and not (prefix is not None and bool(prefix.any())):
        return None
    rollout_lp = batch.batch["rollout_log_probs"]  # (B, T)
    rollout_lp[demo] = actor_log_probs[demo].to(rollout_lp.dtype)
    mask = batch.batch["response_mask"]
    if prefix is not None:
        rollout_lp[prefix] = actor_log_probs[prefix].to(rollout_lp.dtype)
        mask = mask * (~prefix).to(mask.dtype)  # the metric over sampled tokens only
    # Only the four tensors the metric reads, for the sampled rows (not a copy of the whole batch).
    # No sampled row: verl's own "no valid token" answer (valid 0, NaN).
    sampled = ~demo
    view = DataProto.from_dict(tensors={
        "rollout_log_probs": rollout_lp[sampled], "old_log_probs": actor_log_probs[sampled],
        "response_mask": mask[sampled], "responses": batch.batch["responses"][sampled]})
    return calculate_debug_metrics(view)
