"""Per-problem evaluation of one model for the arena: greedy correctness, sampled pass counts, texts.

Same sampler as the ``hf`` rollout (``verl_ext.rollout.sampling``) and the same grader as training
(the project's math reward); per-problem results so that intervals and paired tests can resample
problems.
"""

from __future__ import annotations

import pandas as pd
import torch

from verl_ext.rollout.sampling import SamplingSpec, sample_batch


def level_of(row) -> int:
    return int(row["extra_info"]["level"])


def correct_counts(model, tokenizer, rows: pd.DataFrame, temperature: float = 0.0, samples: int = 1,
                   max_new_tokens: int = 48, seed: int = 0, batch_size: int = 256,
                   keep_text: int = 0) -> tuple[list[int], list[dict]]:
    """For each row, how many of ``samples`` responses are correct (score >= 1), and the first
    response of the first ``keep_text`` rows as {"question", "answer", "response"}."""
    from verl_ext.reward import compute_score

    gen = torch.Generator().manual_seed(seed)
    spec = SamplingSpec(temperature=temperature, top_p=1.0, top_k=-1, max_new_tokens=max_new_tokens)
    stop = {tokenizer.eos_token_id}
    prompts, owner = [], []
    records = list(rows.to_dict("records"))
    for i, row in enumerate(records):
        ids = tokenizer.apply_chat_template(list(row["prompt"]), add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        for _ in range(samples):
            prompts.append(ids)
            owner.append(i)
    counts, texts = [0] * len(records), []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            outs = sample_batch(model, prompts[start: start + batch_size], spec, stop, tokenizer.pad_token_id, gen)
            for j, out in enumerate(outs):
                i = owner[start + j]
                row = records[i]
                text = tokenizer.decode(out.token_ids, skip_special_tokens=True)
                res = compute_score(row["data_source"], text, row["reward_model"]["ground_truth"])
                ok = float(res["score"] if isinstance(res, dict) else res) >= 1.0
                counts[i] += int(ok)
                if i < keep_text and (start + j) % samples == 0:
                    texts.append({"question": row["extra_info"]["question"],
                                  "answer": row["reward_model"]["ground_truth"], "response": text, "correct": ok})
    return counts, texts
