"""Chat templates whose generation prompt ends with a reasoning tag (issue 15).

A demonstration row is the question's templated prompt (``apply_chat_template`` with
``add_generation_prompt=True``, ending e.g. ``<|im_start|>assistant\\n<think>\\n``) followed by the
demonstration's tokens. DeepSeek-R1 demonstrations start with ``<think>\\n`` themselves, so without
care the row reads ``...assistant\\n<think>\\n<think>\\n...``. Pinned here, on the byte-level
tokenizer with such a template: the merge (the trainer's ``_gate_and_merge``) and the SFT-only
stand-in (``DemonstrationRolloutManager``) build the same rows, holding the tag once; demonstrations
without the tag, and templates without it, leave the demonstration's tokens as they are.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl import DataProto

from tests.unit.hpt.test_reliability import _bare_trainer, _step
from verl_ext.hpt.demo_rollout import DemonstrationRolloutManager
from verl_ext.hpt.gate import GateConfig
from verl_ext.hpt.demonstrations import encode_demonstrations, generation_prompt_overlap, prompt_token_ids
from verl_ext.loss.batch_keys import HPT_ROW_KIND
from verl_ext.tiny import CHATML_TEMPLATE, build_char_tokenizer

TAG = "<think>\n"
THINK_TEMPLATE = CHATML_TEMPLATE.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\n<think>\n'")
P_LEN, R_LEN = 96, 64
TAGGED = TAG + "2+3=5.\n</think>\n\\boxed{5}"
PLAIN = "4+4=8. \\boxed{8}"
QUESTIONS = ["What is 2+3?", "What is 4+4?"]


@pytest.fixture(scope="module")
def think_tok():
    tok = build_char_tokenizer()
    tok.chat_template = THINK_TEMPLATE
    return tok


def test_the_think_template_opens_the_assistant_turn_with_the_tag(think_tok):
    text = think_tok.apply_chat_template([{"role": "user", "content": "q"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n" + TAG)


@pytest.mark.parametrize("prompt, demo, drop", [
    ("<|im_start|>assistant\n<think>\n", "<think>\nOkay", 8),  # the tag and its newline
    ("<|im_start|>assistant\n<think>\n", "<think>\n\nOkay", 8),  # the demonstration's extra newline kept
    ("<|im_start|>assistant\n<think>\n", "<think>Okay", 7),  # the prompt's newline stands in
    ("<|im_start|>assistant\n<think>", "<think>\nOkay", 7),  # the demonstration's newline kept
    ("<｜User｜>q<｜Assistant｜><think>\n", "<think>\nOkay", 8),  # DeepSeek-R1-Distill's template
    ("<|im_start|>assistant\n", "<think>\nOkay", 0),  # template without the tag
    ("<|im_start|>assistant\n<think>\n", "Okay <think>", 0),  # demonstration without it
    ("<|im_start|>assistant\n<think>\n\n</think>\n\n", "<think>\nOkay", 0),  # Qwen3, thinking off
    ("Answer:\nLet's think step by step.", "<think>\nOkay", 0),  # the release's LLaMA zero template
    ("<|im_start|>assistant\n<think>\n", ">\nquoted", 0),  # never from inside a tag
    ("<|im_start|>assistant\n<think>\n", "\nOkay", 0),  # whitespace alone is not an overlap
    ("<|im_start|>assistant\n<think>\n", "<think>\n", 0),  # nothing would be left
])
def test_generation_prompt_overlap(prompt, demo, drop):
    assert generation_prompt_overlap(prompt, demo) == drop
    if drop:  # what the row reads: the tag once, the demonstration otherwise verbatim
        row = prompt + demo[drop:]
        assert row.count("<think>") == 1 and row.endswith("Okay")


def _config():
    return OmegaConf.create({
        "actor_rollout_ref": {"rollout": {"prompt_length": P_LEN, "response_length": R_LEN}},
        "data": {"apply_chat_template_kwargs": {}}})


def _sft_only_batch(tok, demos):
    """What the SFT-only stand-in returns for the questions, with the non-tensors verl keeps."""
    messages = [[{"role": "user", "content": q}] for q in QUESTIONS]
    infos = [{"index": i, "target": d} for i, d in enumerate(demos)]
    raw = np.empty(len(messages), dtype=object)  # one chat (a list of messages) per row, as verl keeps it
    for i, m in enumerate(messages):
        raw[i] = m
    prompts = DataProto(non_tensor_batch={"raw_prompt": raw, "extra_info": np.asarray(infos, dtype=object)})
    mgr = DemonstrationRolloutManager(None, tok, _config(), demo_field="target", demo_choice="uniform", seed=0)
    out = mgr.generate_sequences(prompts)
    out.non_tensor_batch["uid"] = np.asarray([f"uid-{i}" for i in range(len(demos))], dtype=object)
    out.non_tensor_batch["extra_info"] = np.asarray(infos, dtype=object)
    return out


def _merged(tok, demos):
    """The stand-in's batch, then the trainer's gate + merge on it (every question gated: score 0)."""
    batch = _sft_only_batch(tok, demos)
    stand_in = batch.batch["responses"].clone(), batch.batch["response_mask"].clone()
    t = _bare_trainer(tok, gate=GateConfig(strategy="always"))
    t.step.response_length = R_LEN
    metrics = {}
    batch = _step(t, batch, metrics)
    assert int((batch.batch[HPT_ROW_KIND] > 0).sum()) == len(demos) == len(batch)
    return batch, stand_in, metrics


def _texts(tok, batch, i):
    """(prompt text, response text) of row i, padding removed, special tokens kept."""
    p_len = batch.batch["prompts"].shape[1]
    attn = batch.batch["attention_mask"][i].bool()
    prompt = tok.decode(batch.batch["prompts"][i][attn[:p_len]].tolist())
    response = tok.decode(batch.batch["responses"][i][attn[p_len:]].tolist())
    return prompt, response


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_demonstration_row_holds_the_tag_once(think_tok):
    tok = think_tok
    batch, (stand_in, stand_in_mask), metrics = _merged(tok, [TAGGED, PLAIN])
    prompt, response = _texts(tok, batch, 0)
    assert prompt.endswith("assistant\n" + TAG)
    assert not response.startswith("<think>")
    assert (prompt + response).count("<think>") == 1
    assert response == TAGGED[len(TAG):] + tok.eos_token
    n = int(batch.batch["response_mask"][0].sum())
    assert batch.batch["responses"][0][:n].tolist() == _ids(tok, TAGGED[len(TAG):])
    # the demonstration without the tag: its tokens unchanged
    prompt, response = _texts(tok, batch, 1)
    n = int(batch.batch["response_mask"][1].sum())
    assert batch.batch["responses"][1][:n].tolist() == _ids(tok, PLAIN)
    assert (prompt + response).count("<think>") == 1  # the template's
    assert metrics["hpt/demo_prefix_overlap"] == 1
    # the SFT-only stand-in built the same response tokens
    assert torch.equal(stand_in, batch.batch["responses"]) and torch.equal(stand_in_mask, batch.batch["response_mask"])


def test_template_without_the_tag_leaves_a_tagged_demonstration_unchanged(char_tok):
    tok = char_tok  # verl_ext.tiny's ChatML: the generation prompt is "<|im_start|>assistant\n"
    batch, (stand_in, stand_in_mask), metrics = _merged(tok, [TAGGED, PLAIN])
    for i, demo in enumerate([TAGGED, PLAIN]):
        n = int(batch.batch["response_mask"][i].sum())
        assert batch.batch["responses"][i][:n].tolist() == _ids(tok, demo)
    prompt, response = _texts(tok, batch, 0)
    assert response.startswith(TAG) and (prompt + response).count("<think>") == 1
    assert metrics["hpt/demo_prefix_overlap"] == 0
    assert torch.equal(stand_in, batch.batch["responses"]) and torch.equal(stand_in_mask, batch.batch["response_mask"])


def test_encode_demonstrations_decides_per_prompt(think_tok):
    """One batch, two templates' prompts: only the row whose prompt ends with the tag is stripped."""
    tok = think_tok
    msgs = [{"role": "user", "content": "q"}]
    with_tag = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    with_tag = list(with_tag["input_ids"] if hasattr(with_tag, "keys") else with_tag)
    without = with_tag[: -len(TAG)]  # "...assistant\n"
    assert tok.decode(without).endswith("assistant\n")
    overlaps = []
    ids, truncated = encode_demonstrations(tok, [TAGGED, TAGGED, TAGGED], R_LEN, prompt_ids=[with_tag, without, []],
                                           overlaps=overlaps)
    assert overlaps == [len(TAG), 0, 0] and truncated == 0
    assert ids[0] == _ids(tok, TAGGED[len(TAG):]) and ids[1] == ids[2] == _ids(tok, TAGGED)
    assert encode_demonstrations(tok, [TAGGED], R_LEN)[0][0] == _ids(tok, TAGGED)  # no prompts: as before
    with pytest.raises(ValueError, match="1 prompts for 2 demonstrations"):
        encode_demonstrations(tok, [TAGGED, PLAIN], R_LEN, prompt_ids=[with_tag])


def test_prompt_token_ids_drop_the_left_padding(think_tok):
    batch = _sft_only_batch(think_tok, [TAGGED, PLAIN])
    for i, ids in enumerate(prompt_token_ids(batch, [0, 1])):
        want = think_tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i]}], add_generation_prompt=True,
                                             tokenize=True)
        assert ids == list(want["input_ids"] if hasattr(want, "keys") else want)


# --------------------------------------------------------------------------- one usable-check
@pytest.mark.parametrize("value,reason", [
    ("x", None), ("  <think>\nok", None), (None, "demo_missing"), ("", "demo_missing"), (" \n\t", "demo_missing"),
    (["a"], None), (["a", "b"], None), ([], "demo_missing"), (["a", " "], "demo_missing"),
    (["a", None], "demo_missing"),
    ([{"role": "assistant", "content": "a"}], "demo_not_string"), (3, "demo_not_string")])
def test_one_usable_check_for_validation_trainer_and_stand_in(value, reason):
    """Start-up validation (contract.check_demo), the trainer's fallback (usable_demonstrations)
    and the SFT-only stand-in all judge a demonstration by demonstration_field.demonstration_problem."""
    from verl_ext.data.contract import check_demo
    from verl_ext.data.demonstration_field import demonstration_problem
    from verl_ext.hpt.demonstrations import usable_demonstrations

    problem = demonstration_problem(value)
    assert (problem[0] if problem else None) == reason
    assert check_demo({"extra_info": {"target": value}}, "target") == problem
    assert usable_demonstrations([{"target": value}], [0], "target") == [value if reason is None else None]
