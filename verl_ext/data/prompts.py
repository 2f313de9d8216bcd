"""Prompt formats used by the HPT release and its evaluation protocol.

* ``user``: the question as the only (user) message; the model's chat template supplies any
  system prompt. This is how the release builds its training prompts (OpenR1 with the LUFFY
  system prompt stripped) and its in-training validation sets.
* ``simplerl``: the evaluation protocol of the paper (DeepMath ``uni_eval``,
  ``system_prompt_name="simplerl"``): system message :data:`SIMPLERL_SYSTEM` + the question.
* ``zero``: the LLaMA base-model template of ``train_llama.sh``: the suffix
  :data:`ZERO_SUFFIX` is appended to the question, which is placed into :data:`ZERO_TEMPLATE`.
  The whole text is stored as the single user message; the trainer must then render it verbatim
  with ``actor_rollout_ref.model.custom_chat_template`` = :data:`ZERO_CHAT_TEMPLATE`.
"""

from __future__ import annotations

SIMPLERL_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
ZERO_TEMPLATE = "Question:\n{prompt}\nAnswer:\nLet's think step by step."
ZERO_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
# Renders the last message verbatim (plus BOS when the tokenizer has one, as the release's
# plain `tokenizer(prompt)` call added it).
ZERO_CHAT_TEMPLATE = "{% if bos_token %}{{ bos_token }}{% endif %}{{ messages[-1]['content'] }}"

PROMPT_STYLES = ("user", "simplerl", "zero")


def build_messages(question: str, style: str = "user") -> list[dict]:
    """The chat list for one question in the given style (see module docstring)."""
    if style == "user":
        return [{"role": "user", "content": question}]
    if style == "simplerl":
        return [{"role": "system", "content": SIMPLERL_SYSTEM}, {"role": "user", "content": question}]
    if style == "zero":
        return [{"role": "user", "content": ZERO_TEMPLATE.format(prompt=question + ZERO_SUFFIX)}]
    raise ValueError(f"unknown prompt style {style!r}; choose from {PROMPT_STYLES}")
