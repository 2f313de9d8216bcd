"""Warm-up SFT that turns the random tiny Qwen2 into the embedded default's "base model".

Plain PyTorch next-token training on (chat-templated prompt, demonstration) pairs of the easy
arithmetic levels, with the loss on the response tokens only. It plays the role pre-training plays
for Qwen2.5-Math: the base model knows the answer format and solves easy problems sometimes, hard
ones never, so HPT's gate has questions on both sides.
"""

from __future__ import annotations

import math
import random
import time

import torch


def encode_pair(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """Token ids of chat(prompt) + response + EOS, and the index where the response starts."""
    p = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      tokenize=True)
    p = list(p["input_ids"] if hasattr(p, "keys") else p)
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p + r, len(p)


def sft_train(model, tokenizer, pairs: list[tuple[str, str]], steps: int, batch_size: int = 32, lr: float = 3e-3,
              seed: int = 0, log_every: int = 100, threads: int | None = None) -> list[float]:
    """Minimise the response-token NLL over ``pairs`` for ``steps`` AdamW steps; returns the losses."""
    if threads:
        torch.set_num_threads(threads)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    encoded = [encode_pair(tokenizer, p, r) for p, r in pairs]
    pad = tokenizer.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    losses, t0 = [], time.time()
    for step in range(steps):
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(batch_size)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((batch_size, width), pad, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        attn = torch.zeros((batch_size, width), dtype=torch.long)
        for i, (seq, start) in enumerate(batch):
            ids[i, : len(seq)] = torch.tensor(seq)
            attn[i, : len(seq)] = 1
            labels[i, start: len(seq)] = torch.tensor(seq[start:])
        out = model(input_ids=ids, attention_mask=attn, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(out.loss))
        if log_every and (step + 1) % log_every == 0:
            print(f"  warm-up step {step + 1}/{steps}  loss {sum(losses[-log_every:]) / log_every:.3f}  "
                  f"({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    return losses
