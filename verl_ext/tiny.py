"""A tiny Qwen2-architecture model and a character-level tokenizer, built locally.

Nothing is downloaded: the tokenizer's vocabulary is the printable ASCII set plus the ChatML
special tokens, and the model is a randomly initialised ``Qwen2ForCausalLM``. Both are saved as an
ordinary Hugging Face folder, so verl loads them exactly as it loads a hub checkpoint
(``actor_rollout_ref.model.path=<folder>``).

Sizes: head_dim 64 (hidden 128, 2 heads) because vLLM's CPU attention rejects smaller heads, so
the same folder can also be served by vLLM.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"

# ChatML, as Qwen2 models use; `add_generation_prompt` opens the assistant turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def char_vocabulary() -> list[str]:
    """Special tokens first, then the 256 byte-level symbols (one per byte), sorted by byte."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return SPECIAL_TOKENS + [table[b] for b in range(256)]


def build_char_tokenizer(out_dir: str | os.PathLike | None = None):
    """Build (and optionally save) a byte-level tokenizer with no merges, plus ChatML.

    It is a Qwen2 BPE tokenizer whose merge table is empty, so every UTF-8 byte is one token:
    any text round-trips exactly, and transformers loads it as the same ``Qwen2Tokenizer`` class
    that real Qwen2 checkpoints use (transformers 5 picks the class from the model type, so a
    tokenizer of another class would be silently rebuilt as a Qwen2 one).
    """
    from transformers import Qwen2Tokenizer

    vocab = {tok: i for i, tok in enumerate(char_vocabulary())}
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token="<|endoftext|>",
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def tiny_qwen2_config(vocab_size: int, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 2,
                      intermediate_size: int = 256, max_position_embeddings: int = 1024, eos_token_id: int = 2,
                      pad_token_id: int = 3):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        torch_dtype="float32",
        rope_theta=10000.0,
        use_sliding_window=False,
    )


def build_tiny_model(out_dir: str | os.PathLike, seed: int = 0, **config_kwargs) -> Path:
    """Write tokenizer + randomly initialised tiny Qwen2 to ``out_dir``; return the folder.

    ``config_kwargs`` go to :func:`tiny_qwen2_config` (hidden_size, num_layers, ...).
    """
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_char_tokenizer(out)
    cfg = tiny_qwen2_config(
        vocab_size=len(tok),
        eos_token_id=tok.convert_tokens_to_ids(EOS_TOKEN),
        pad_token_id=tok.convert_tokens_to_ids(PAD_TOKEN),
        **config_kwargs,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, do_sample=True
    )
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "hpt_tiny.json").write_text(json.dumps({"seed": seed, **config_kwargs}, indent=2))
    return out
