"""Demonstration prefixes for staged generation's ``continue_with_prefix`` stages (TRAPO, arXiv 2512.17636).

A prefix row's response is the first part of the question's demonstration followed by what the policy
generates after it. The demonstration is tokenised exactly as a demonstration row's response
(:func:`verl_ext.hpt.demonstrations.encode_demonstrations`: after the row's prompt, a start the prompt
already ends with held once, + EOS, truncated to the response length), so a prefix row and a
demonstration row of the question lay the same tokens after the same prompt.

The cut (:func:`prefix_cut_length`, TRAPO's rule): with L the demonstration's tokens including its EOS
and a fraction f,

- f = 1: all L tokens (the whole demonstration + EOS; nothing is generated after it);
- f < 1: from ⌊f·L⌋ on, the first token whose text contains a blank line ``"\\n\\n"``; the cut is just
  after it when that token's index is below the limit min(1, f + 0.3)·L (TRAPO's code has 0.55·L for
  f = 0.25 and 0.8·L for f = 0.5: f + 0.3 reproduces both and is our rule for other fractions),
  otherwise at ⌊f·L⌋. The cut is at least 1 token.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from verl import DataProto

from verl_ext.data.demonstration_field import demonstration_of, is_usable
from verl_ext.hpt.demonstrations import encode_demonstrations, pick_demonstrations, prompt_token_ids

BLANK_LINE = "\n\n"
SNAP_WINDOW = 0.3  # the snapping limit is min(1, f + SNAP_WINDOW)·L


def snap_limit(fraction: float) -> float:
    """The fraction of L below which a blank-line token may end the prefix."""
    return min(1.0, float(fraction) + SNAP_WINDOW)


def prefix_cut_length(ids: Sequence[int], tokenizer, fraction: float) -> int:
    """How many leading tokens of ``ids`` (a demonstration's token ids, EOS included) a prefix of
    ``fraction`` keeps (module docstring). Pure: reads ``tokenizer.decode`` of single tokens only."""
    f = float(fraction)
    if not 0.0 < f <= 1.0:
        raise ValueError(f"prefix fraction {fraction!r} must be in (0, 1]")
    total = len(ids)
    if total == 0:
        return 0
    if f >= 1.0:
        return total
    nominal = int(math.floor(f * total))
    limit = snap_limit(f) * total
    for i in range(nominal, total):
        if i >= limit:
            break
        if BLANK_LINE in tokenizer.decode([int(ids[i])]):
            return i + 1
    return max(1, nominal)


class DemonstrationPrefixer:
    """Prefix token ids for rows of a prompt batch (``fit``'s generation batch: ``raw_prompt`` and
    ``extra_info`` per row; verl 0.9's agent loop builds the prompt from ``raw_prompt`` with the chat
    template, as done here, or left-padded ``input_ids``/``attention_mask`` when the batch has them).

    The demonstration is the row's ``extra_info[demo_field]``; of a list, ``demo_choice`` picks one
    (``all`` uses the first), with the run's seed and the step in ``meta_info["global_steps"]``, as
    the trainer picks a demonstration row's. A row without a usable demonstration gets no prefix
    (None): it is drawn as a plain rollout.
    """

    def __init__(self, tokenizer, response_length: int, demo_field: str, demo_choice: str = "first",
                 seed: int = 0, chat_template_kwargs: Optional[dict] = None):
        self.tokenizer = tokenizer
        self.chat_template_kwargs = dict(chat_template_kwargs or {})  # data.apply_chat_template_kwargs
        self.response_length = int(response_length)
        self.demo_field = demo_field
        self.demo_choice = "first" if demo_choice == "all" else demo_choice
        self.seed = int(seed)

    def demonstration_ids(self, prompts: DataProto, rows: Sequence[int]) -> list[Optional[list[int]]]:
        """Per row: its demonstration's token ids (+EOS) after its prompt, or None."""
        nt = prompts.non_tensor_batch
        infos = nt.get("extra_info")
        step = int(prompts.meta_info.get("global_steps", 0) or 0)
        out: list[Optional[list[int]]] = [None] * len(rows)
        usable, texts = [], []
        for j, r in enumerate(rows):
            info = infos[int(r)] if infos is not None else None
            value = demonstration_of(info, self.demo_field)
            if not is_usable(value):
                continue
            qid = info.get("index") if isinstance(info, dict) else None
            _, picked = pick_demonstrations([value], [qid], self.demo_choice, seed=self.seed, step=step,
                                            tokenizer=self.tokenizer)
            usable.append(j)
            texts.append(picked[0])
        if usable:
            prompt_ids = self.prompt_ids(prompts, [int(rows[j]) for j in usable])
            ids, _ = encode_demonstrations(self.tokenizer, texts, self.response_length, prompt_ids=prompt_ids)
            for j, seq in zip(usable, ids):
                out[j] = list(seq)
        return out

    def prompt_ids(self, prompts: DataProto, rows: Sequence[int]) -> list[list[int]]:
        """The prompt tokens of ``rows``, as the agent loop builds them (the chat template applied to
        ``raw_prompt`` with ``add_generation_prompt=True``), or from the batch's left-padded tensors."""
        batch = prompts.batch
        if batch is not None and "input_ids" in batch.keys() and "attention_mask" in batch.keys():
            view = DataProto.from_dict(tensors={"prompts": batch["input_ids"],
                                                "attention_mask": batch["attention_mask"]})
            return prompt_token_ids(view, rows)
        raw = prompts.non_tensor_batch["raw_prompt"]
        out = []
        for r in rows:
            ids = self.tokenizer.apply_chat_template(list(raw[int(r)]), add_generation_prompt=True, tokenize=True,
                                                     **self.chat_template_kwargs)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            out.append([int(t) for t in ids])
        return out

    def prefix_ids(self, prompts: DataProto, rows: Sequence[int], fractions: Sequence[float]) -> list:
        """Per row: the prefix token ids for ``fractions[j]`` (> 0), or None (no usable demonstration)."""
        demos = self.demonstration_ids(prompts, rows)
        out = []
        for ids, f in zip(demos, np.asarray(fractions, dtype=np.float64)):
            out.append(None if ids is None else ids[: prefix_cut_length(ids, self.tokenizer, f)])
        return out
