"""A rollout manager that returns demonstrations instead of generating (the SFT-only baseline).

With ``hpt.gate.strategy=always`` every question is trained on its demonstration and no rollout
is ever used, so generating them would be pure waste. This wrapper answers training-time
``generate_sequences`` calls with the demonstrations as the "responses" (prompt tokenised with the
chat template, as verl's single-turn agent loop does), and forwards validation calls to the real
rollout manager, so evaluation still samples from the policy.

A question with several demonstrations (a list in the demonstration field) answers with the one
``hpt.demo_choice`` picks, as the trainer does (:func:`verl_ext.hpt.demonstrations.pick_demonstrations`
with the same run seed, the step from ``meta_info["global_steps"]`` and the question's
``extra_info.index``). ``all`` answers with entry 0: this manager returns exactly one row per input
row (``fit`` unions its output with the repeated prompts). What trains is unaffected: with
``strategy=always`` the trainer's merge drops these rows and builds the demonstration rows itself,
every listed demonstration under ``all``.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np
import torch
from verl import DataProto

from verl_ext.data.demonstration_field import demonstration_of, demonstration_problem
from verl_ext.hpt.demonstrations import (
    demo_row_tensors,
    encode_demonstrations,
    left_pad_prompts,
    pick_demonstrations,
)


class DeferredWeightSync:
    """verl's ``CheckpointEngineManager`` with weight pushes deferred until a rollout needs them.

    ``RayPPOTrainer.fit`` pushes the actor's weights to the rollout engine after every update
    (``checkpoint_manager.update_weights``) and puts it to sleep after every generation
    (``sleep_replicas``). The SFT-only baseline generates nothing during training, so each of those
    pushes (on GPU: waking vLLM, moving every weight, releasing and re-allocating the KV cache) is
    pure cost. Here ``update_weights`` only records that the rollout is stale; :meth:`flush` (called
    by :class:`DemonstrationRolloutManager` before it forwards a validation batch to the real
    rollout) makes the one push that generation needs, and ``sleep_replicas`` is forwarded only
    when a push woke the replicas. ``pushes`` / ``deferred`` count both, for the step metrics.
    """

    def __init__(self, inner):
        self.inner = inner
        self.pending_step: Optional[int] = None
        self.stale = False
        self.awake = False
        self.pushes = 0
        self.deferred = 0

    def __getattr__(self, name):  # everything else is verl's manager's
        return getattr(self.inner, name)

    def update_weights(self, global_steps: Optional[int] = None):
        self.pending_step, self.stale = global_steps, True
        self.deferred += 1
        return {}

    def flush(self) -> None:
        if self.stale:
            self.inner.update_weights(self.pending_step)
            self.stale, self.awake = False, True
            self.pushes += 1

    def sleep_replicas(self):
        if self.awake:
            self.inner.sleep_replicas()
            self.awake = False


class DemonstrationRolloutManager:
    def __init__(self, inner, tokenizer, config, demo_field: str, demo_choice: str, seed: int,
                 before_rollout: Optional[Callable[[], None]] = None):
        self.inner = inner
        self.tokenizer = tokenizer
        self.config = config
        self.demo_field = demo_field
        # hpt.demo_choice and its seed (verl_ext.hpt.config.choice_seed); "all" answers with entry 0
        self.demo_choice = "first" if demo_choice == "all" else demo_choice
        self.seed = seed
        self.before_rollout = before_rollout  # e.g. DeferredWeightSync.flush

    def __getattr__(self, name):  # everything else (sleep, wake_up, ...) is the real manager's
        return getattr(self.inner, name)

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        if prompts.meta_info.get("validate", False):
            if self.before_rollout is not None:
                self.before_rollout()  # the policy samples here: its weights must be current
            return self.inner.generate_sequences(prompts)
        t0 = time.perf_counter()
        rollout = self.config.actor_rollout_ref.rollout
        p_len, r_len = int(rollout.prompt_length), int(rollout.response_length)
        nt = prompts.non_tensor_batch
        tmpl_kwargs = dict(self.config.data.get("apply_chat_template_kwargs", {}) or {})
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        step = int(prompts.meta_info.get("global_steps", 0) or 0)
        targets, prompt_ids = [], []
        for i in range(len(prompts)):
            info = nt["extra_info"][i] or {}
            demo = demonstration_of(info, self.demo_field)
            problem = demonstration_problem(demo)
            if problem:
                raise KeyError(f"row {i} (index {info.get('index')!r}): extra_info['{self.demo_field}'] {problem[1]}")
            _, picked = pick_demonstrations([demo], [info.get("index")], self.demo_choice, seed=self.seed, step=step,
                                            tokenizer=self.tokenizer)
            targets.append(picked[0])
            ids = self.tokenizer.apply_chat_template(list(nt["raw_prompt"][i]), add_generation_prompt=True,
                                                     tokenize=True, **tmpl_kwargs)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            prompt_ids.append(list(ids))
        # As the merge encodes and lays them out (a start the generation prompt already ends with
        # is held once); only the prompt comes from the chat template here, not from a rollout row.
        demo_ids, _ = encode_demonstrations(self.tokenizer, targets, r_len, prompt_ids=prompt_ids)
        b = len(prompts)
        prompts_t, p_mask = left_pad_prompts(prompt_ids, p_len, pad)
        batch = {"prompts": prompts_t, **demo_row_tensors(prompts_t, p_mask, demo_ids, pad, r_len),
                 "rm_scores": torch.zeros((b, r_len), dtype=torch.float32)}
        # The keys verl's agent loop always returns for text rows (RayPPOTrainer.fit reads
        # multi_modal_inputs for every batch).
        mm = np.empty(b, dtype=object)
        mm[:] = [{} for _ in range(b)]
        non_tensors = {"__num_turns__": np.full(b, 2, dtype=np.int32), "multi_modal_inputs": mm}
        elapsed = time.perf_counter() - t0
        return DataProto.from_dict(tensors=batch, non_tensors=non_tensors,
                                   meta_info={"timing": {"hpt/demo_rollout_s": elapsed}, "reward_extra_keys": []})
