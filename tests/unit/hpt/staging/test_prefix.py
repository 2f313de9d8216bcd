"""Staged generation's ``continue_with_prefix`` (TRAPO's demonstration-prefix rows): the schema, the prefix
cut, the stage decisions, the manager's rows and mask, the agent loop, and its registration. Crafted
inputs; the real rollout is exercised in tests/e2e/test_trapo.py and tests/e2e/test_vllm_cpu.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from verl import DataProto

from verl_ext.hpt.demonstrations import build_demo_rows
from verl_ext.hpt.staging.prefix import DemonstrationPrefixer, prefix_cut_length
from verl_ext.hpt.staging.manager import StagedRolloutManager
from verl_ext.hpt.staging.stages import PREFIX_AGENT, PREFIX_IDS_KEY
from verl_ext.hpt.step import drop_placeholders
from verl_ext.hpt.staging.stages import SAMPLED_KEY, Stage, StagesConfigError, load_stages, run_stages
from verl_ext.loss.batch_keys import HPT_PREFIX_MASK

TRAPO = [{"rollouts": 4},
         {"rollouts": 2, "max_correct": 1, "action": "continue_with_prefix", "prefix": 0.25},
         {"rollouts": 1, "max_correct": 3, "action": "continue_with_prefix", "prefix": 0.5},
         {"rollouts": 1, "max_correct": 6, "action": "continue_with_prefix", "prefix": 1}]


# ------------------------------------------------------------------ schema


def test_trapo_stages_load_and_prefix_is_validated():
    stages = load_stages(TRAPO, n=8)
    assert stages[1] == Stage(2, 1, "continue_with_prefix", 0.25)
    assert stages[3].prefix == 1.0 and isinstance(stages[3].prefix, float)
    base = [{"rollouts": 4}]
    for bad in (0, 0.0, 1.5, -0.1, True, "half"):
        with pytest.raises(StagesConfigError, match=r"hpt\.stages\[1\]\.prefix=.* must be a number in \(0, 1\]"):
            load_stages(base + [{"rollouts": 4, "max_correct": 1, "action": "continue_with_prefix", "prefix": bad}],
                        n=8)
    with pytest.raises(StagesConfigError, match=r"hpt\.stages\[1\]\.prefix is not set"):
        load_stages(base + [{"rollouts": 4, "max_correct": 1, "action": "continue_with_prefix"}], n=8)
    with pytest.raises(StagesConfigError, match=r"hpt\.stages\[1\]\.action='continue_with_prefix' needs"):
        load_stages(base + [{"rollouts": 4, "action": "continue_with_prefix", "prefix": 0.5}], n=8)
    with pytest.raises(StagesConfigError, match=r"hpt\.stages\[1\]\.prefix=0.5 is only read with"):
        load_stages(base + [{"rollouts": 4, "max_correct": 0, "action": "stop_to_sft", "prefix": 0.5}], n=8)
    with pytest.raises(StagesConfigError, match=r"hpt\.stages\[0\]\.max_correct"):
        load_stages([{"rollouts": 8, "max_correct": 0, "action": "continue_with_prefix", "prefix": 0.5}], n=8)


# ------------------------------------------------------------------ the cut


class TableTokenizer:
    """decode([i]) -> texts[i]; eos 99."""

    eos_token_id = 99

    def __init__(self, texts: dict):
        self.texts = texts

    def decode(self, ids, **_):
        return "".join(self.texts.get(int(i), "w") for i in ids)


def _demo(length: int, blank_at: list[int]) -> tuple[list[int], TableTokenizer]:
    ids = list(range(length - 1)) + [99]
    return ids, TableTokenizer({i: ("x.\n\n" if i in blank_at else " w") for i in range(length - 1)} | {99: "</s>"})


@pytest.mark.parametrize("blank_at, expected", [
    ([7], 8),          # after the nominal cut (5), before the limit (0.55*20 = 11): just after it
    ([5], 6),          # at the nominal cut itself
    ([10], 11),        # the last index before the limit
    ([11], 5),         # at the limit: not before it, nominal cut
    ([14], 5),         # after the limit: nominal cut
    ([3], 5),          # only before the nominal cut: nominal cut
    ([3, 9, 10], 10),  # the first one at or after the nominal cut
    ([], 5),
])
def test_prefix_cut_quarter(blank_at, expected):
    ids, tok = _demo(20, blank_at)
    assert prefix_cut_length(ids, tok, 0.25) == expected


def test_prefix_cut_half_full_and_edges():
    ids, tok = _demo(20, [15])  # 0.5: nominal 10, limit 16
    assert prefix_cut_length(ids, tok, 0.5) == 16
    ids, tok = _demo(20, [16])
    assert prefix_cut_length(ids, tok, 0.5) == 10
    ids, tok = _demo(20, [18])  # 0.9: limit min(1, 1.2)·L = L: any blank line up to the end snaps
    assert prefix_cut_length(ids, tok, 0.9) == 19
    assert prefix_cut_length(ids, tok, 1.0) == 20  # the whole demonstration + EOS
    assert prefix_cut_length([5, 99], TableTokenizer({}), 0.25) == 1  # at least one token
    assert prefix_cut_length([], TableTokenizer({}), 0.5) == 0
    with pytest.raises(ValueError, match="must be in"):
        prefix_cut_length(ids, tok, 0.0)


# ------------------------------------------------------------------ decisions


def test_run_stages_prefix_decisions_around_the_thresholds():
    stages = load_stages(TRAPO, n=8)
    # per question: correct rows in each stage (stage sizes 4, 2, 1, 1)
    script = {0: [0, 0, 0, 0],   # C = 0, 0, 0: prefix in stages 2 (0.25), 3 (0.5), 4 (1.0)
              1: [1, 2, 0, 0],   # C1 = 1 ≤ 1: prefix 0.25; C2 = 3 ≤ 3: prefix 0.5; C3 = 3 ≤ 6: full
              2: [2, 1, 1, 0],   # C1 = 2 > 1: plain; C2 = 3 ≤ 3: 0.5; C3 = 4 ≤ 6: full
              3: [2, 2, 1, 1],   # plain, C2 = 4 > 3 plain, C3 = 5 ≤ 6: full
              4: [4, 2, 1, 1]}   # C3 = 7 > 6: all plain
    calls = []

    def draw(s, questions, k, prefix):
        calls.append((s, questions.tolist(), prefix.tolist()))
        return np.array([[j < script[int(q)][s] for j in range(k)] for q in questions])

    plan = run_stages(stages, 5, draw)
    assert [c[2] for c in calls] == [[0.0] * 5, [0.25, 0.25, 0, 0, 0], [0.5, 0.5, 0.5, 0, 0], [1, 1, 1, 1, 0]]
    assert plan.stage_prefix[1].tolist() == [0.25, 0.25, 0, 0, 0]
    assert plan.drawn.tolist() == [8] * 5 and not plan.stopped.any()
    assert plan.correct.tolist() == [sum(v) for v in script.values()]


# ------------------------------------------------------------------ the manager


class PrefixRollout:
    """Like verl's agent loop on a crafted model: a row with ``hpt_prefix_ids`` answers prefix + [7]*3
    (or the prefix alone when it ends with EOS 99), a plain row [5]*4; every row is correct only
    when its question index (uid) is in ``good``. Records each request's agent names and prefixes."""

    def __init__(self, good, width=12):
        self.good, self.width, self.requests = set(good), width, []

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        nt = prompts.non_tensor_batch
        b = len(prompts)
        agents = nt.get("agent_name", np.array(["single_turn_agent"] * b, dtype=object))
        prefixes = nt.get(PREFIX_IDS_KEY, np.array([None] * b, dtype=object))
        self.requests.append((list(agents), list(prefixes), list(nt["uid"])))
        responses = torch.zeros(b, self.width, dtype=torch.long)
        mask = torch.zeros(b, self.width, dtype=torch.long)
        rm = torch.zeros(b, self.width)
        plen = np.empty(b, dtype=object)
        for i in range(b):
            pre = list(prefixes[i]) if agents[i] == PREFIX_AGENT else []
            seq = pre + ([] if pre and pre[-1] == 99 else [7] * 3) if pre else [5] * 4
            responses[i, :len(seq)] = torch.tensor(seq)
            mask[i, :len(seq)] = 1
            rm[i, len(seq) - 1] = float(nt["uid"][i] in self.good)
            plen[i] = len(pre)
        non_tensors = {"uid": nt["uid"], "priority": nt["priority"], "agent_name": agents}
        if any(a == PREFIX_AGENT for a in agents):
            non_tensors["hpt_prefix_len"] = plen  # the agent loop's extra field (popped by the manager)
            non_tensors["only_here"] = plen  # an extra field one stage's answer lacks
        return DataProto.from_dict(tensors={"prompts": prompts.batch["input_ids"], "responses": responses,
                                            "response_mask": mask, "rm_scores": rm}, non_tensors=non_tensors)


class FixedPrefixer:
    """Question q's demonstration is [100+q]*L + [99]; the cut is prefix_cut_length's with no blank line.
    Question 'q2' has no usable demonstration."""

    L = 7

    def prefix_ids(self, prompts, rows, fractions):
        out = []
        for r, f in zip(rows, fractions):
            uid = prompts.non_tensor_batch["uid"][int(r)]
            if uid == "q2":
                out.append(None)
                continue
            ids = [100 + int(uid[1:])] * self.L + [99]
            out.append(ids[:prefix_cut_length(ids, TableTokenizer({}), f)])
        return out


def _prompts(questions: int, n: int) -> DataProto:
    uids = np.array([f"q{q}" for q in range(questions) for _ in range(n)], dtype=object)
    ids = torch.arange(questions).repeat_interleave(n)[:, None].repeat(1, 3)
    return DataProto.from_dict(tensors={"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                               non_tensors={"uid": uids})


@pytest.mark.parametrize("fraction, plen", [(0.5, 4), (1.0, 8)])
def test_manager_prefix_rows_and_mask(fraction, plen):
    n = 4
    stages = load_stages([{"rollouts": 2}, {"rollouts": 2, "max_correct": 0, "action": "continue_with_prefix",
                                            "prefix": fraction}], n=n)
    inner = PrefixRollout(good={"q1"})
    mgr = StagedRolloutManager(inner, stages, n=n, correct_threshold=1.0, prefixer=FixedPrefixer(),
                               default_agent="single_turn_agent")
    out = mgr.generate_sequences(_prompts(3, n))
    # stage 1: all plain; stage 2: q0 (0 correct) prefixed, q1 (correct) plain, q2 (no demonstration) plain
    agents1, _, _ = inner.requests[0]
    assert agents1 == ["single_turn_agent"] * 6
    agents2, prefixes2, uids2 = inner.requests[1]
    assert uids2 == ["q0", "q0", "q1", "q1", "q2", "q2"]
    assert agents2 == [PREFIX_AGENT] * 2 + ["single_turn_agent"] * 4
    expected = ([100] * 7 + [99])[:plen]
    assert [list(p) for p in prefixes2[:2]] == [expected] * 2 and prefixes2[2:] == [None] * 4
    assert len(out) == 3 * n and out.non_tensor_batch[SAMPLED_KEY].all()
    assert "hpt_prefix_len" not in out.non_tensor_batch and PREFIX_IDS_KEY not in out.non_tensor_batch
    mask = out.batch[HPT_PREFIX_MASK]
    assert mask.shape == out.batch["responses"].shape and mask.dtype == torch.float32
    rows = torch.tensor([0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)  # q0's slots 2, 3
    assert mask[~rows].sum() == 0
    for r in torch.nonzero(rows).flatten().tolist():
        assert mask[r].tolist() == [1.0] * plen + [0.0] * (12 - plen)
        assert out.batch["responses"][r, :plen].tolist() == expected  # the response starts with the prefix
    kept, _ = drop_placeholders(out)
    assert HPT_PREFIX_MASK in kept.batch.keys()


def test_manager_without_prefix_stages_adds_no_mask_and_needs_a_prefixer():
    stages = load_stages([{"rollouts": 2}, {"rollouts": 2, "max_correct": 0, "action": "stop_to_sft"}], n=4)
    out = StagedRolloutManager(PrefixRollout(good=set()), stages, n=4, correct_threshold=1.0).generate_sequences(
        _prompts(2, 4))
    assert HPT_PREFIX_MASK not in out.batch.keys()
    with pytest.raises(ValueError, match="prefixer"):
        StagedRolloutManager(PrefixRollout(good=set()), load_stages(TRAPO, n=8), n=8, correct_threshold=1.0)


def test_demonstration_rows_get_a_zero_prefix_mask():
    p, r = 3, 5
    template = DataProto.from_dict(tensors={
        "prompts": torch.ones(1, p, dtype=torch.long), "responses": torch.ones(1, r, dtype=torch.long),
        "response_mask": torch.ones(1, r, dtype=torch.long), "input_ids": torch.ones(1, p + r, dtype=torch.long),
        "attention_mask": torch.ones(1, p + r, dtype=torch.long),
        "position_ids": torch.arange(p + r)[None], HPT_PREFIX_MASK: torch.ones(1, r)})
    rows = build_demo_rows(template, [[4, 5, 99]], pad_token_id=0)
    assert rows.batch[HPT_PREFIX_MASK].sum() == 0


def test_demonstration_prefixer_lays_the_demo_out_as_a_demonstration_row():
    class Tok(TableTokenizer):
        def __call__(self, texts, add_special_tokens=False):
            if isinstance(texts, str):
                return {"input_ids": [ord(c) for c in texts]}
            return {"input_ids": [[ord(c) for c in t] for t in texts]}

        def decode(self, ids, **_):
            return "".join(chr(i) if i != 99 else "</s>" for i in ids)

    tok = Tok({})
    prompt = [ord(c) for c in "Q?<think>\n"]
    ids = torch.tensor([[0, 0] + prompt])
    mask = torch.tensor([[0, 0] + [1] * len(prompt)])
    batch = DataProto.from_dict(tensors={"input_ids": ids, "attention_mask": mask},
                                non_tensors={"uid": np.array(["a"], dtype=object),
                                             "extra_info": np.array([{"target": "<think>\nab\n\ncd", "index": 3}],
                                                                    dtype=object)})
    pre = DemonstrationPrefixer(tok, response_length=64, demo_field="target")
    demo = [ord(c) for c in "ab\n\ncd"] + [99]  # the <think>\n the prompt ends with is held once
    assert pre.demonstration_ids(batch, [0]) == [demo]
    assert pre.prefix_ids(batch, [0], [1.0]) == [demo]
    # nominal ⌊0.25·7⌋ = 1; no single token holds "\n\n" here (one character each): no snap
    assert pre.prefix_ids(batch, [0], [0.25]) == [demo[:1]]
    batch.non_tensor_batch["extra_info"][0] = {"index": 3}
    assert pre.prefix_ids(batch, [0], [0.5]) == [None]
    # verl 0.9's generation batch has no prompt tensors: the prompt is the chat template on raw_prompt
    tok.apply_chat_template = lambda messages, add_generation_prompt, tokenize, **kw: (
        [ord(c) for c in messages[0]["content"] + kw.get("tail", "")])
    pre = DemonstrationPrefixer(tok, response_length=64, demo_field="target",
                                chat_template_kwargs={"tail": "<think>\n"})
    raw = np.empty(1, dtype=object)
    raw[0] = [{"role": "user", "content": "Q?"}]
    bare = DataProto.from_dict(non_tensors={"uid": np.array(["a"], dtype=object), "raw_prompt": raw,
                                            "extra_info": np.array([{"target": "<think>\nab\n\ncd"}], dtype=object)})
    assert pre.prompt_ids(bare, [0]) == [prompt]
    assert pre.prefix_ids(bare, [0], [1.0]) == [demo]


# ------------------------------------------------------------------ the agent loop


class FakeServer:
    def __init__(self, reply):
        self.reply, self.calls = reply, []

    async def generate(self, **kw):
        self.calls.append(kw)
        return SimpleNamespace(token_ids=list(self.reply), log_probs=[-0.5] * len(self.reply),
                               num_preempted=None, extra_fields={"global_steps": 3})


def _agent(server, response_length=10):
    from verl.utils.tokenizer.continuous_token import ContinuousTokenBuilder

    from verl_ext.hpt.staging.prefix_agent_loop import PrefixAgentLoop

    agent = object.__new__(PrefixAgentLoop)
    agent.rollout_config = SimpleNamespace(full_determinism=False)
    agent.response_length = response_length
    agent.tokenizer = SimpleNamespace(eos_token_id=99)
    agent.server_manager = server
    agent.continuous_token_builder = ContinuousTokenBuilder(agent.tokenizer)

    async def mm(messages):
        return {}

    async def build(messages, **kw):
        return [1, 2, 3]

    agent.process_multi_modal_info = mm
    agent.ct_build_initial_tokens = build
    return agent


def _run_agent(agent, prefix, logprobs=True):
    async def go():
        agent.loop = asyncio.get_running_loop()
        return await agent.run({"temperature": 1.0, "logprobs": logprobs}, priority=4,
                               raw_prompt=[{"role": "user", "content": "q"}], hpt_prefix_ids=prefix)

    return asyncio.run(go())


def test_prefix_agent_continues_the_prefix():
    server = FakeServer([7, 8, 99])
    out = _run_agent(_agent(server), [40, 41, 42])
    assert server.calls[0]["prompt_ids"] == [1, 2, 3, 40, 41, 42]
    assert server.calls[0]["sampling_params"]["max_tokens"] == 7  # 10 - 3 prefix tokens
    assert out.prompt_ids == [1, 2, 3] and out.response_ids == [40, 41, 42, 7, 8, 99]
    assert out.response_mask == [1] * 6 and out.response_logprobs == [0.0] * 3 + [-0.5] * 3
    assert out.extra_fields["hpt_prefix_len"] == 3 and out.extra_fields["global_steps"] == 3


def test_prefix_agent_full_demonstration_calls_no_server():
    server = FakeServer([7])
    out = _run_agent(_agent(server), [40, 41, 99])
    assert server.calls == [] and out.response_ids == [40, 41, 99] and out.response_logprobs == [0.0] * 3
    out = _run_agent(_agent(server, response_length=2), [40, 41, 42], logprobs=False)
    assert server.calls == [] and out.response_ids == [40, 41] and out.response_logprobs is None
    assert out.extra_fields["hpt_prefix_len"] == 2


def test_prefix_agent_is_registered_in_a_fresh_verl_import():
    env = dict(os.environ, VERL_USE_EXTERNAL_MODULES="verl_ext.plugins", OMP_NUM_THREADS="1")
    code = ("import verl\nfrom verl.experimental.agent_loop.agent_loop import _agent_loop_registry as r\n"
            "print(r['hpt_prefix_agent']['_target_'])")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().endswith("verl_ext.hpt.staging.prefix_agent_loop.PrefixAgentLoop")


def test_manager_refuses_a_response_that_lost_its_prefix():
    class Dropping(PrefixRollout):
        def generate_sequences(self, prompts):
            out = super().generate_sequences(prompts)
            out.batch["responses"][:, 0] = 1  # a boundary edit: the prefix no longer starts the response
            return out

    stages = load_stages([{"rollouts": 2}, {"rollouts": 2, "max_correct": 0, "action": "continue_with_prefix",
                                            "prefix": 0.5}], n=4)
    mgr = StagedRolloutManager(Dropping(good=set()), stages, n=4, correct_threshold=1.0, prefixer=FixedPrefixer(),
                               default_agent="single_turn_agent")
    with pytest.raises(RuntimeError, match="does not start with its demonstration prefix"):
        mgr.generate_sequences(_prompts(1, 4))
