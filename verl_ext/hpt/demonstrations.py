"""Demonstrations: which one trains, how it continues the prompt, its tokens, and its rows.

A demonstration is the text in ``extra_info[hpt.demo_field]`` (its default set in
``recipe/hpt/config/hpt_trainer.yaml``) of a question's row; the field may also hold a list of
texts, several demonstrations of the question. When one is usable is the data contract's rule
(:mod:`verl_ext.data.demonstration_field`). Everything HPT does with one before the loss lives
here, used by the step (:func:`usable_demonstrations`,
:func:`pick_demonstrations`, :func:`encode_demonstrations`, :func:`prompt_token_ids`), the merge
(:func:`build_demo_rows`) and the SFT-only stand-in (:mod:`verl_ext.hpt.demo_rollout`: :func:`left_pad_prompts` +
:func:`demo_row_tensors`, the same row layout). Scoring a demonstration with the run's reward is
:class:`verl_ext.hpt.demo_scorer.DemoScorer`.

1. Usable: a string with some non-whitespace text, or a non-empty list of such strings (several
   demonstrations of one question, e.g. one per teacher as DYPO's data has them); any bad entry makes
   the whole value unusable (:func:`demonstration_problem` says why, naming the entry's index).
2. Chosen: which entries of a list train, ``hpt.demo_choice`` (:func:`choose_entries`, the rule):
   ``uniform`` one drawn per (``data.seed``, step, question id), ``shortest``, ``first``, or ``all``
   (one demonstration row each, each weighted β/m: the question's SFT weight is shared). A string is
   its own single entry under every policy, so string data behaves exactly as before.
3. Continuing the prompt: a demonstration row is the rollout's prompt (the chat template with
   ``add_generation_prompt=True``) followed by the demonstration; a start that the prompt already
   ends with (``...assistant\\n<think>\\n`` + ``<think>\\nOkay``) is held once
   (:func:`generation_prompt_overlap`).
4. Tokens: the rest of the demonstration tokenised without special tokens, + EOS (as the release,
   so SFT teaches the model to stop), truncated to the response length (:func:`encode_demonstrations`).
5. Rows: prompt (B,P) left-padded, response (B,R) right-padded with ``response_mask`` 1 on the
   demonstration's tokens, ``input_ids``/``attention_mask``/``position_ids`` (B,P+R) in verl's
   layout (:func:`demo_row_tensors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from verl import DataProto

from verl_ext.data.demonstration_field import (
    NO_QUESTION_ID,
    demonstration_entries,
    demonstration_of,
    is_usable,
    question_key,
)

PROMPT_TAIL_TOKENS = 64  # prompt tokens decoded to find an overlap (generation prompts are far shorter)
OVERLAP_WINDOW_CHARS = 64  # the longest overlap looked for, in characters of the decoded prompt


def usable_demonstrations(extra_infos: Optional[Sequence], rows: Sequence[int], demo_field: str) -> list:
    """Per row in ``rows``: its demonstration if usable (the string, or the list of strings as a
    ``list``), else None (``extra_infos`` may be None). Which entries of a list train is
    :func:`pick_demonstrations`'."""
    out = []
    for r in rows:
        value = demonstration_of(extra_infos[int(r)], demo_field) if extra_infos is not None else None
        if not is_usable(value):
            out.append(None)
        else:
            out.append(value if isinstance(value, str) else demonstration_entries(value))
    return out


# ------------------------------------------------------------------------------------ chosen
DEMO_CHOICES = ("uniform", "shortest", "first", "all")  # hpt.demo_choice
def uniform_index(entries: Sequence[str], seed: int, step: int, question_id: Any) -> int:
    """The entry ``uniform`` draws: a hash of (``seed``, ``step``, question id) mod the number of
    entries (:func:`verl_ext.rollout.sampling.row_seed`: the same in every process and on resume).
    A question without an id (-1) is keyed by its first entry's text instead, so that such
    questions do not all draw the same position at a step."""
    from verl_ext.rollout.sampling import row_seed

    key = question_key(question_id)
    if key == NO_QUESTION_ID:
        key = "text:" + str(entries[0])
    return row_seed("hpt.demo_choice", int(seed), int(step), key) % len(entries)


def choose_entries(entries: Sequence[str], policy: str, *, seed: int, step: int, question_id: Any,
                   token_counts: Optional[Sequence[int]] = None) -> list[int]:
    """Indices of the ``entries`` (a question's demonstrations, at least one) that train at ``step``
    under ``hpt.demo_choice`` = ``policy``:

    - ``uniform``: one, drawn uniformly and reproducibly (:func:`uniform_index`: the same run seed,
      step and question always draw the same entry, so a resumed run draws as the first did; it
      varies across steps, the question's teachers taking turns at random, as DYPO's loader does);
    - ``shortest``: the one with the fewest tokens (``token_counts``), the first among equals;
    - ``first``: entry 0;
    - ``all``: every entry (the merge builds one demonstration row each, weighted β/m).

    A single entry (a string demonstration) is chosen under every policy."""
    if policy not in DEMO_CHOICES:
        raise ValueError(f"hpt.demo_choice={policy!r} is not one of {list(DEMO_CHOICES)}")
    m = len(entries)
    if m == 0:
        raise ValueError("no demonstration to choose from")
    if m == 1 or policy == "first":
        return [0]
    if policy == "all":
        return list(range(m))
    if policy == "shortest":
        if token_counts is None or len(token_counts) != m:
            raise ValueError(f"hpt.demo_choice=shortest needs the token count of each of the {m} entries")
        return [int(np.argmin(np.asarray(token_counts)))]  # argmin: the first of equals
    return [uniform_index(entries, seed, step, question_id)]


def pick_demonstrations(values: Sequence[Any], question_ids: Sequence[Any], policy: str, *, seed: int, step: int,
                        tokenizer=None) -> tuple[list[int], list[str]]:
    """The demonstrations that train for usable ``values`` (per question: a string or a list of
    strings, :func:`usable_demonstrations`), flattened: (owner i into ``values`` per demonstration,
    its text), in ``values`` order. ``tokenizer`` counts tokens (without special tokens) for
    ``shortest``. With a string per question this is one demonstration each, whatever ``policy``."""
    owners, texts = [], []
    for i, (value, qid) in enumerate(zip(values, question_ids)):
        entries = demonstration_entries(value)
        counts = None
        if policy == "shortest" and len(entries) > 1:
            if tokenizer is None:
                raise ValueError("hpt.demo_choice=shortest needs a tokenizer to count tokens")
            counts = [len(x) for x in tokenizer(list(entries), add_special_tokens=False)["input_ids"]]
        for j in choose_entries(entries, policy, seed=seed, step=step, question_id=qid, token_counts=counts):
            owners.append(i)
            texts.append(entries[j])
    return owners, texts


def per_question(questions: Sequence[int], items: Sequence, num_questions: int, fill: Any = None) -> list:
    """``items`` (one per demonstration, owned by ``questions[k]``) regrouped per question of the batch:
    ``fill`` for a question without any, the item itself for one, a list of its items (in order) for
    several (``hpt.demo_choice=all``). The merge reads this layout (see :class:`GatedDemonstrations`)."""
    grouped: dict[int, list] = {}
    for q, item in zip(questions, items):
        grouped.setdefault(int(q), []).append(item)
    return [fill if q not in grouped else grouped[q][0] if len(grouped[q]) == 1 else grouped[q]
            for q in range(num_questions)]


def route_to_rl(alpha: np.ndarray, beta: np.ndarray, questions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """New (α, β) with ``questions`` (gated, but without a usable demonstration) trained with RL
    instead: α = 1, β = 0. The inputs are left unchanged."""
    alpha, beta = np.array(alpha, copy=True), np.array(beta, copy=True)
    alpha[list(questions)], beta[list(questions)] = 1.0, 0.0
    return alpha, beta


@dataclass
class GatedDemonstrations:
    """One step's demonstrations, per question of the batch (``None``/0 where a question has none).

    A question with several demonstrations (``hpt.demo_choice=all`` and a list) holds a list where it
    would hold one: its ``ids`` a list of token-id lists, its ``scores`` and ``extra`` values lists of
    the same length (:func:`per_question`); the merge builds one row per demonstration."""

    ids: list  # token ids (+EOS) of each gated question's demonstration (or a list of them), None elsewhere
    scores: list  # the run's reward of each demonstration (0.0 where none)
    extra: dict = field(default_factory=dict)  # reward extra key -> per-question values
    missing: list = field(default_factory=list)  # gated questions without a usable demonstration
    truncated: int = 0  # demonstrations cut to the response length
    overlaps: list = field(default_factory=list)  # characters dropped per encoded demonstration

    @classmethod
    def empty(cls, num_questions: int) -> "GatedDemonstrations":
        return cls(ids=[None] * num_questions, scores=[0.0] * num_questions)


# ------------------------------------------------------------------ continuing the prompt
def _overlap_boundary(text: str, i: int) -> bool:
    """May an overlap start at ``text[i]``: the text's start, a ``<`` (a tag or special token), or
    right after whitespace or a ``>`` (never inside a word or a tag)."""
    return i == 0 or text[i] == "<" or text[i - 1].isspace() or text[i - 1] == ">"


def generation_prompt_overlap(prompt_text: str, demonstration: str, window: int = OVERLAP_WINDOW_CHARS) -> int:
    """How many leading characters of ``demonstration`` the prompt already ends with (0: none).

    A demonstration row is the rollout's prompt (the chat template applied with
    ``add_generation_prompt=True``) followed by the demonstration's tokens. When the template's
    generation prompt ends with text the demonstration also starts with (``...assistant\n<think>\n``
    and a DeepSeek-R1 demonstration ``<think>\nOkay, ...``), that text would appear twice in the
    row; dropping the returned number of characters from the demonstration keeps it once, so the
    row reads as if the policy had written the demonstration after its own prompt.

    The overlap is the longest end of the prompt (within its last ``window`` characters, trailing
    whitespace aside) that the demonstration starts with, provided that it starts at a boundary
    (see :func:`_overlap_boundary`; ``>`` alone never matches the end of ``<think>``), holds
    something other than whitespace, and leaves some non-whitespace demonstration text. The prompt's
    trailing whitespace is matched too: exactly when the demonstration repeats it
    (``<think>\n`` + ``<think>\n\nOkay`` keeps ``\nOkay``), otherwise the demonstration's whitespace
    after the overlap is dropped (``<think>\n`` + ``<think>Okay`` keeps ``Okay``); a prompt that
    ends without whitespace (``<think>``) keeps the demonstration's (``\nOkay``).

    Pure: depends only on the two strings. A demonstration that does not start with the prompt's
    end (no reasoning tag in the template, or none in the demonstration) gives 0.
    """
    start = max(0, len(prompt_text) - window)
    core = prompt_text.rstrip()
    ws = prompt_text[len(core):]
    for i in range(start, len(core)):
        if not _overlap_boundary(core, i):
            continue
        piece = core[i:]  # ends with a non-whitespace character
        if not demonstration.startswith(piece):
            continue
        rest = demonstration[len(piece):]
        if ws and rest.startswith(ws):
            n = len(piece) + len(ws)
        elif ws:
            n = len(demonstration) - len(rest.lstrip())
        else:
            n = len(piece)
        return n if demonstration[n:].strip() else 0
    return 0


def prompt_token_ids(data: DataProto, rows: Sequence[int]) -> list[list[int]]:
    """The prompt tokens (left padding removed) of ``data``'s rows ``rows``: what the policy is
    conditioned on, for :func:`encode_demonstrations`' ``prompt_ids``."""
    prompts = data.batch["prompts"]
    mask = data.batch["attention_mask"][:, : prompts.shape[1]].bool()
    return [prompts[int(r)][mask[int(r)]].tolist() for r in rows]


# ------------------------------------------------------------------------------------ tokens
def encode_demonstrations(tokenizer, targets: Sequence[str], response_length: int,
                          prompt_ids: Optional[Sequence[Sequence[int]]] = None,
                          overlaps: Optional[list] = None) -> tuple[list[list[int]], int]:
    """Token ids of each demonstration + EOS, truncated to ``response_length``.

    Returns (ids per target, number truncated). EOS is appended as the release does, so SFT teaches
    the model to stop; a truncated demonstration keeps its first ``response_length`` tokens.

    prompt_ids[i]: the prompt tokens demonstration i will follow (the template's generation prompt
    included). With them, the part of the demonstration's start that the prompt already ends with
    (:func:`generation_prompt_overlap` on the decoded end of the prompt, e.g. a ``<think>\n`` that
    both the template and the demonstration hold) is dropped before tokenising, so the row holds it
    once. Both the merge (the trainer's ``_gate_and_merge``) and the SFT-only stand-in
    (:mod:`verl_ext.hpt.demo_rollout`) encode here. ``overlaps``: if a list, the number of
    characters dropped from each demonstration is appended to it.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; demonstrations need one appended")
    if prompt_ids is not None and len(prompt_ids) != len(targets):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(targets)} demonstrations")
    out, truncated = [], 0
    for i, text in enumerate(targets):
        if not isinstance(text, str) or not text:
            raise ValueError(f"demonstration of question {i} is empty or not a string: {text!r}")
        drop = 0
        if prompt_ids is not None:
            tail = tokenizer.decode(list(prompt_ids[i])[-PROMPT_TAIL_TOKENS:], skip_special_tokens=False)
            drop = generation_prompt_overlap(tail, text)
        if overlaps is not None:
            overlaps.append(drop)
        ids = tokenizer(text[drop:], add_special_tokens=False)["input_ids"] + [eos]
        if len(ids) > response_length:
            truncated += 1
            ids = ids[:response_length]
        out.append(ids)
    return out, truncated


# -------------------------------------------------------------------------------------- rows
def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """verl's convention: position = (number of attended tokens before this one), 0 on padding."""
    return torch.clamp(attention_mask.long().cumsum(-1) - 1, min=0)


def left_pad_prompts(prompt_ids: Sequence[Sequence[int]], prompt_length: int,
                     pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompts (B,P), their attention mask (B,P)), left-padded to ``prompt_length`` (verl's layout)."""
    b = len(prompt_ids)
    prompts = torch.full((b, prompt_length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((b, prompt_length), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        if len(p) > prompt_length:
            raise ValueError(f"row {i}: prompt of {len(p)} tokens exceeds prompt_length {prompt_length}")
        if len(p):
            prompts[i, prompt_length - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, prompt_length - len(p):] = 1
    return prompts, mask


def demo_row_tensors(prompts: torch.Tensor, prompt_mask: torch.Tensor, demo_ids: Sequence[Sequence[int]],
                     pad_token_id: int, response_length: int, response_dtype=torch.long, mask_dtype=torch.long,
                     position_dtype=torch.long) -> dict[str, torch.Tensor]:
    """The tensors of demonstration rows: ``prompts`` (B,P) left-padded with ``prompt_mask`` (B,P),
    followed by ``demo_ids[i]`` as the response. Returns ``responses``/``response_mask`` (B,R) and
    ``input_ids``/``attention_mask``/``position_ids`` (B,P+R)."""
    b = prompts.shape[0]
    if len(demo_ids) != b:
        raise ValueError(f"{len(demo_ids)} demonstrations for {b} template rows")
    responses = torch.full((b, response_length), pad_token_id, dtype=response_dtype)
    response_mask = torch.zeros((b, response_length), dtype=mask_dtype)
    for i, ids in enumerate(demo_ids):
        if len(ids) > response_length:
            raise ValueError(f"demonstration {i} has {len(ids)} tokens > response_length {response_length}")
        responses[i, : len(ids)] = torch.as_tensor(list(ids), dtype=responses.dtype)
        response_mask[i, : len(ids)] = 1
    attention_mask = torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], dim=-1)
    return {
        "responses": responses,
        "response_mask": response_mask,
        "input_ids": torch.cat([prompts, responses], dim=-1),
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask).to(position_dtype),
    }


def build_demo_rows(template: DataProto, demo_ids: Sequence[Sequence[int]], pad_token_id: int,
                    scores: Optional[Sequence[float]] = None) -> DataProto:
    """One demonstration row per template row: the template's prompt, ``demo_ids`` as response.

    template: (Q,) rows whose prompt part is reused (every tensor key is copied, then the
    response-side keys are rebuilt by :func:`demo_row_tensors`). Response-shaped keys other than
    the rebuilt ones are zeroed; ``rm_scores`` holds ``scores`` on each row's last response token.
    """
    t = template.batch
    if "position_ids" in t.keys() and t["position_ids"].dim() != 2:
        raise NotImplementedError("HPT demonstration rows support text models (2-D position_ids) only")
    q = len(template)
    if len(demo_ids) != q:
        raise ValueError(f"{len(demo_ids)} demonstrations for {q} template rows")
    prompts = t["prompts"]
    p_len, r_len = prompts.shape[1], t["responses"].shape[1]
    rebuilt = demo_row_tensors(prompts, t["attention_mask"][:, :p_len], demo_ids, pad_token_id, r_len,
                               response_dtype=t["responses"].dtype, mask_dtype=t["response_mask"].dtype,
                               position_dtype=t["position_ids"].dtype)
    if "rm_scores" in t.keys():
        rm = torch.zeros_like(t["rm_scores"])
        if scores is not None:
            last = rebuilt["response_mask"].long().sum(-1) - 1
            rm[torch.arange(q), last.clamp(min=0)] = torch.as_tensor(list(scores), dtype=rm.dtype)
        rebuilt["rm_scores"] = rm
    tensors = {}
    for key in t.keys():
        if key in rebuilt:
            tensors[key] = rebuilt[key]
        elif t[key].dim() >= 2 and t[key].shape[1] == r_len and key != "prompts":
            tensors[key] = torch.zeros_like(t[key])  # response-aligned data of the discarded rollout
        else:
            tensors[key] = t[key].clone()
    non_tensors = {k: v.copy() for k, v in template.non_tensor_batch.items()}
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors, meta_info=dict(template.meta_info))
