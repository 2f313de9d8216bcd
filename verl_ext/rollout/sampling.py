"""Batched autoregressive sampling with a KV cache, returning the sampled tokens' log-probs.

Pure PyTorch over any Hugging Face causal LM; no Ray, no verl. This is what the ``hf`` rollout
server runs for each batch of requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingSpec:
    """Sampling parameters shared by one batch (verl's agent loop sends these per request).

    temperature 0 means greedy; top_k <= 0 means no top-k filter; top_p 1 means no nucleus.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 64

    @classmethod
    def from_request(cls, params: dict, max_new_tokens: int) -> "SamplingSpec":
        return cls(
            temperature=float(params.get("temperature", 1.0)),
            top_p=float(params.get("top_p", 1.0)),
            top_k=int(params.get("top_k", -1) or -1),
            max_new_tokens=int(min(params.get("max_tokens", max_new_tokens) or max_new_tokens, max_new_tokens)),
        )


@dataclass
class SampleResult:
    token_ids: list[int]
    log_probs: list[float]
    stop_reason: str  # "completed" (stop token) or "length"


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits (B, V) outside the top-k set and outside the smallest nucleus with mass >= top_p."""
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token).
        mass_before = probs.cumsum(-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def sample_batch(
    model: torch.nn.Module,
    prompts: list[list[int]],
    spec: SamplingSpec,
    stop_token_ids: set[int],
    pad_token_id: int,
    generator: torch.Generator | None = None,
) -> list[SampleResult]:
    """Sample a continuation for each prompt (left-padded into one batch).

    Log-probs are those of the sampled token under the model's *unmodified* distribution
    log softmax(z_t) (what vLLM returns by default), not the temperature/top-p-filtered one.
    A row stops at its first stop token (included in the output) or after ``max_new_tokens``.
    """
    device = next(model.parameters()).device
    bsz = len(prompts)
    width = max(len(p) for p in prompts)
    input_ids = torch.full((bsz, width), pad_token_id, dtype=torch.long, device=device)
    attention = torch.zeros((bsz, width), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        attention[i, width - len(p):] = 1

    out_tokens: list[list[int]] = [[] for _ in range(bsz)]
    out_logps: list[list[float]] = [[] for _ in range(bsz)]
    done = torch.zeros(bsz, dtype=torch.bool, device=device)
    stopped = [False] * bsz
    stop_ids = torch.tensor(sorted(stop_token_ids), dtype=torch.long, device=device)

    past = None
    step_ids = input_ids
    for _ in range(spec.max_new_tokens):
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.size(1):]
        out = model(input_ids=step_ids, attention_mask=attention, position_ids=position_ids,
                    past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[:, -1, :].float()
        logp = torch.log_softmax(logits, dim=-1)
        if spec.temperature <= 0:
            nxt = logits.argmax(-1)
        else:
            filt = filter_logits(logits / spec.temperature, spec.top_k, spec.top_p)
            nxt = torch.multinomial(torch.softmax(filt, dim=-1), 1, generator=generator).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        chosen = logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
        for i in torch.nonzero(~done).flatten().tolist():
            out_tokens[i].append(int(nxt[i]))
            out_logps[i].append(float(chosen[i]))
        is_stop = torch.isin(nxt, stop_ids) & ~done
        for i in torch.nonzero(is_stop).flatten().tolist():
            stopped[i] = True
        # Finished rows keep feeding pad with attention 0 so the batch stays rectangular.
        attention = torch.cat([attention, (~done).long().unsqueeze(-1)], dim=-1)
        done = done | is_stop
        if bool(done.all()):
            break
        step_ids = nxt.unsqueeze(-1)

    return [
        SampleResult(out_tokens[i], out_logps[i], "completed" if stopped[i] else "length") for i in range(bsz)
    ]
