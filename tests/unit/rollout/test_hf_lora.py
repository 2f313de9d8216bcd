"""The hf rollout serves a LoRA policy in verl 0.9.1's adapter mode as vLLM applies it.

verl's FSDP worker (verl/workers/engine_workers.py:786-806) pushes LoRA's frozen base once (peft's
``.base_layer`` names, ``base_sync_done=False``) and then, after every update, the ``lora_A``/``lora_B``
tensors alone with the peft config (``base_sync_done=True``). The pushes here are produced by verl's own
``FSDPEngine.get_per_tensor_param`` (verl/workers/engine/fsdp/transformer_impl.py:977), run on CPU on a
peft model that is not FSDP-wrapped (``fsdp_version`` 0: ``collect_lora_params``'s non-FSDP branch,
verl/utils/fsdp_utils.py:776-789, with the same names), and reach the server through
``HFServerAdapter.update_weights`` with the keyword arguments the worker passes. No Ray: the server is
built in-process and the adapter's actor handle is a stand-in that calls it.
"""

from __future__ import annotations

import asyncio
import copy
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from verl_ext.checks.settings import _lora_problems
from verl_ext.rollout.hf_adapter import HFServerAdapter
from verl_ext.rollout.hf_server import HFRolloutServer, lora_scale, merged_lora_weights

RANK, ALPHA = 4, 16  # verl's default lora_alpha is 16 (verl/workers/config/model.py:125)


@pytest.fixture
def cpu_platform(monkeypatch):
    """verl's engine logs device memory through its platform; on this CPU-only machine that is
    verl_ext's cpu platform (the trainer selects it with VERL_PLATFORM=cpu)."""
    import verl.plugin.platform.platform_manager as platform_manager

    from verl_ext.cpu.platform import PlatformCPU

    monkeypatch.setattr(platform_manager, "_current_platform", PlatformCPU())


@pytest.fixture
def one_thread():
    """HFRolloutServer sets torch's thread count; give the session's back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _server(model_dir, monkeypatch, load_format="dummy") -> HFRolloutServer:
    from verl_ext.tiny import build_char_tokenizer

    monkeypatch.setenv("HPT_HF_ROLLOUT_THREADS", "1")
    config = SimpleNamespace(max_model_len=64, prompt_length=32, response_length=32, seed=0,
                             load_format=load_format)
    model_config = SimpleNamespace(local_path=str(model_dir), override_config={},
                                   tokenizer=build_char_tokenizer(), generation_config=None)
    return HFRolloutServer(config, model_config, rollout_mode=None, replica_rank=0)


def _adapter_for(server: HFRolloutServer) -> HFServerAdapter:
    """The worker-side adapter, its Ray actor handle replaced by a direct call of the server."""

    async def _call(*args, **kwargs):
        return server.load_weights(*args, **kwargs)

    adapter = object.__new__(HFServerAdapter)
    adapter.is_leader, adapter.replica_rank = True, 0
    adapter._server = SimpleNamespace(load_weights=SimpleNamespace(remote=_call))
    return adapter


def _peft_trainer(model_dir, *, perturb_base: bool, use_rslora: bool = False, seed: int = 1):
    """The actor as verl's FSDP engine builds it (transformer_impl.py:358-366), with a trained-looking
    adapter (peft initialises lora_B to zero, which would hide the adapter) and, if asked, a base other
    than the checkpoint the server read, so that the base push has to land for the logits to match."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    gen = torch.Generator().manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if perturb_base:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
    peft_model = get_peft_model(model, LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=RANK, lora_alpha=ALPHA, target_modules="all-linear",
        target_parameters=None, exclude_modules=None, bias="none", use_rslora=use_rslora))
    _randomise_adapter(peft_model, gen)
    return peft_model.eval()


def _randomise_adapter(peft_model, gen):
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def _verl_push(peft_model, base_sync_done: bool):
    """(named tensors, peft config dict) exactly as verl's FSDP engine hands them to the rollout."""
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    engine = SimpleNamespace(
        module=peft_model, _uses_fsdp2_cpu_offload_policy=True, _is_offload_param=False, _qat_enabled=False,
        model_config=SimpleNamespace(lora={"merge": False}, hf_config=peft_model.config))
    tensors, peft_config = FSDPEngine.get_per_tensor_param(engine, layered_summon=False, base_sync_done=base_sync_done)
    return list(tensors), peft_config


def _push(server, tensors, peft_config, base_sync_done, global_steps=1):
    """One ``rollout.update_weights`` call as verl's worker makes it (engine_workers.py:800-806)."""
    asyncio.run(_adapter_for(server).update_weights(
        iter(tensors), peft_config=peft_config, base_sync_done=base_sync_done, global_steps=global_steps))


IDS = torch.tensor([[5, 40, 77, 120, 9, 200, 33, 64, 101, 2, 15, 250],
                    [7, 7, 90, 14, 180, 66, 3, 222, 45, 130, 11, 99]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_verl_pushes_the_names_the_server_maps(tiny_model_dir, cpu_platform):
    """(d) The names as verl produces them: the base under HF names with peft's ``.base_layer`` infix on
    every Linear peft wraps, no ``base_model.model.`` prefix; the adapter only lora_A/lora_B under the
    prefix; the peft config carries r, lora_alpha and the expanded target modules."""
    peft_model = _peft_trainer(tiny_model_dir, perturb_base=False)
    base, base_config = _verl_push(peft_model, base_sync_done=False)
    adapter, peft_config = _verl_push(peft_model, base_sync_done=True)
    base_names, adapter_names = [n for n, _ in base], [n for n, _ in adapter]

    assert "model.embed_tokens.weight" in base_names and "lm_head.weight" in base_names
    assert "model.layers.0.self_attn.q_proj.base_layer.weight" in base_names
    assert "model.layers.0.self_attn.q_proj.base_layer.bias" in base_names
    assert "model.layers.1.mlp.down_proj.base_layer.weight" in base_names
    assert "model.layers.0.input_layernorm.weight" in base_names
    assert not any("lora_" in n or n.startswith("base_model.") for n in base_names)

    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in adapter_names
    assert all(n.startswith("base_model.model.") and n.endswith((".lora_A.weight", ".lora_B.weight"))
               for n in adapter_names)
    assert len(adapter_names) == 2 * 7 * 2  # q k v o gate up down, 2 layers, A and B
    shapes = dict(adapter)
    assert tuple(shapes["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape) == (RANK, 256)
    assert tuple(shapes["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"].shape) == (128, RANK)

    assert base_config == peft_config
    assert peft_config["r"] == RANK and peft_config["lora_alpha"] == ALPHA and not peft_config["use_rslora"]
    assert "model.layers.0.mlp.up_proj" in peft_config["target_modules"]


@pytest.mark.parametrize("use_rslora", [False, True])
def test_base_then_adapter_push_serves_the_peft_policy(tiny_model_dir, cpu_platform, one_thread, monkeypatch,
                                                      use_rslora):
    """(a) After verl's base push and adapter push the served model's logits are the peft model's and
    those of peft's own merge, to 1e-5; a second update (new adapter) is merged into the base again,
    not into the previous merge."""
    peft_model = _peft_trainer(tiny_model_dir, perturb_base=True, use_rslora=use_rslora)
    server = _server(tiny_model_dir, monkeypatch)
    _push(server, *_verl_push(peft_model, base_sync_done=False), base_sync_done=False)
    _push(server, *_verl_push(peft_model, base_sync_done=True), base_sync_done=True)

    expected = _logits(peft_model)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    torch.testing.assert_close(_logits(server.model), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(_logits(server.model), _logits(merged), rtol=0, atol=1e-5)
    assert server.weights_version() == 2 and server.global_steps == 1

    _randomise_adapter(peft_model, torch.Generator().manual_seed(7))  # the next step's adapter
    _push(server, *_verl_push(peft_model, base_sync_done=True), base_sync_done=True, global_steps=2)
    torch.testing.assert_close(_logits(server.model), _logits(peft_model), rtol=0, atol=1e-5)
    assert server.global_steps == 2


def test_base_push_alone_serves_the_base_not_the_policy(tiny_model_dir, cpu_platform, one_thread, monkeypatch):
    """(b) Without the adapter push the served model is the base (the peft model with its adapter
    disabled), whose logits are far from the policy's: (a) is not passed by the base alone."""
    peft_model = _peft_trainer(tiny_model_dir, perturb_base=True)
    server = _server(tiny_model_dir, monkeypatch)
    _push(server, *_verl_push(peft_model, base_sync_done=False), base_sync_done=False)

    with peft_model.disable_adapter():
        base_logits = _logits(peft_model)
    torch.testing.assert_close(_logits(server.model), base_logits, rtol=0, atol=1e-5)
    assert (_logits(server.model) - _logits(peft_model)).abs().max() > 1e-2


def test_adapter_before_base_push_is_refused(tiny_model_dir, cpu_platform, one_thread, monkeypatch):
    """(c) With rollout.load_format=dummy (verl's default) verl pushes the base first; an adapter that
    arrives before it would be merged into weights that are not the trained base."""
    peft_model = _peft_trainer(tiny_model_dir, perturb_base=True)
    server = _server(tiny_model_dir, monkeypatch)
    with pytest.raises(RuntimeError, match="LoRA adapter pushed before the base weights.*load_format"):
        _push(server, *_verl_push(peft_model, base_sync_done=True), base_sync_done=True)
    assert server.weights_version() == 0

    # after full weights (peft_config=None) the served weights are no LoRA base either
    full = {n: t.clone() for n, t in server.model.state_dict().items()}
    server.load_weights(full)
    with pytest.raises(RuntimeError, match="last push was full weights"):
        _push(server, *_verl_push(peft_model, base_sync_done=True), base_sync_done=True)


def test_without_a_base_push_the_checkpoint_read_at_start_is_the_base(tiny_model_dir, cpu_platform, one_thread,
                                                                      monkeypatch):
    """With a load_format other than dummy verl never pushes the base (engine_workers.py:673): vLLM
    serves the checkpoint it loaded, and so does the hf server, which read model.path at start."""
    peft_model = _peft_trainer(tiny_model_dir, perturb_base=False)
    server = _server(tiny_model_dir, monkeypatch, load_format="auto")
    _push(server, *_verl_push(peft_model, base_sync_done=True), base_sync_done=True)
    torch.testing.assert_close(_logits(server.model), _logits(peft_model), rtol=0, atol=1e-5)


def test_an_adapter_replaces_the_previous_one(tiny_model_dir, one_thread, monkeypatch):
    """vLLM removes the old adapter before it adds the new one: a Linear the new adapter leaves out
    serves its base again, one it targets is base + its own delta."""
    server = _server(tiny_model_dir, monkeypatch)
    own = server.model.state_dict()
    q, v = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight"
    base = {n: own[n].clone() for n in (q, v)}
    server.load_weights({n: t.clone() for n, t in own.items()}, peft_config={"r": 2, "lora_alpha": 2},
                        base_sync_done=False)

    def adapter(*modules, seed):
        gen, out = torch.Generator().manual_seed(seed), {}
        for m in modules:
            w = base[f"{m}.weight"]
            out[f"base_model.model.{m}.lora_A.weight"] = torch.randn(2, w.shape[1], generator=gen)
            out[f"base_model.model.{m}.lora_B.weight"] = torch.randn(w.shape[0], 2, generator=gen)
        return out

    first = adapter(q[:-7], v[:-7], seed=0)
    server.load_weights(first, peft_config={"r": 2, "lora_alpha": 2}, base_sync_done=True)
    assert not torch.equal(own[v], base[v])
    second = adapter(q[:-7], seed=1)
    server.load_weights(second, peft_config={"r": 2, "lora_alpha": 2}, base_sync_done=True)
    torch.testing.assert_close(own[v], base[v], rtol=0, atol=0)
    a, b = second[f"base_model.model.{q[:-7]}.lora_A.weight"], second[f"base_model.model.{q[:-7]}.lora_B.weight"]
    torch.testing.assert_close(own[q], base[q] + b @ a, rtol=0, atol=1e-6)


def test_merged_lora_weights_is_peft_merge_of_one_linear():
    """The pure merge against peft's own merge of a single Linear (alpha/r and rsLoRA's alpha/sqrt(r))."""
    from peft import LoraConfig, get_peft_model

    for use_rslora in (False, True):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(6, 5))
        base = {"0.weight": net[0].weight.detach().clone()}
        config = LoraConfig(r=3, lora_alpha=5, target_modules=["0"], use_rslora=use_rslora)
        peft_net = get_peft_model(net, config)
        _randomise_adapter(peft_net, torch.Generator().manual_seed(3))
        adapter = {"0.lora_A.weight": peft_net.base_model.model[0].lora_A["default"].weight.detach(),
                   "0.lora_B.weight": peft_net.base_model.model[0].lora_B["default"].weight.detach()}
        merged = merged_lora_weights(base, adapter, lora_scale(config.to_dict()))
        assert set(merged) == {"0.weight"}
        expected = peft_net.merge_and_unload()[0].weight.detach()
        torch.testing.assert_close(merged["0.weight"], expected, rtol=0, atol=1e-6)


def test_what_the_server_cannot_apply_is_named():
    """Settings under which W + scale · B @ A is not the trained policy, malformed tensors, shapes."""
    for setting, fragment in [({"use_dora": True}, "use_dora"), ({"rank_pattern": {"q_proj": 8}}, "rank_pattern"),
                              ({"modules_to_save": ["lm_head"]}, "modules_to_save"), ({"bias": "all"}, "bias"),
                              ({"target_parameters": ["experts.gate_up_proj"]}, "target_parameters")]:
        with pytest.raises(ValueError, match=fragment):
            lora_scale({"r": 4, "lora_alpha": 8, **setting})
    assert lora_scale({"r": 4, "lora_alpha": 8}) == 2.0
    assert lora_scale({"r": 4, "lora_alpha": 8, "use_rslora": True}) == 4.0

    w = {"m.weight": torch.zeros(5, 6)}
    with pytest.raises(KeyError, match="m.lora_embedding_A"):
        merged_lora_weights(w, {"m.lora_embedding_A": torch.zeros(2, 6)}, 1.0)
    with pytest.raises(KeyError, match="lora_A without lora_B"):
        merged_lora_weights(w, {"m.lora_A.weight": torch.zeros(2, 6)}, 1.0)
    with pytest.raises(KeyError, match="x.weight is not in the served model"):
        merged_lora_weights(w, {"x.lora_A.weight": torch.zeros(2, 6), "x.lora_B.weight": torch.zeros(5, 2)}, 1.0)
    with pytest.raises(ValueError, match="do not fit"):
        merged_lora_weights(w, {"m.lora_A.weight": torch.zeros(2, 5), "m.lora_B.weight": torch.zeros(6, 2)}, 1.0)


def test_unknown_and_tied_targets_are_refused(tiny_model_dir, one_thread, monkeypatch):
    """A target the served model lacks keeps the clear KeyError; LoRA on lm_head, which the tiny model
    ties to the embedding, is refused: merged, it would change the embedding too."""
    server = _server(tiny_model_dir, monkeypatch)
    own = server.model.state_dict()
    server.load_weights({n: t.clone() for n, t in own.items()}, peft_config={"r": 2, "lora_alpha": 2},
                        base_sync_done=False)
    hidden, vocab = own["lm_head.weight"].shape[1], own["lm_head.weight"].shape[0]
    with pytest.raises(KeyError, match="not in the served model.*model.nowhere.weight"):
        server.load_weights({"base_model.model.model.nowhere.lora_A.weight": torch.zeros(2, hidden),
                             "base_model.model.model.nowhere.lora_B.weight": torch.zeros(hidden, 2)},
                            peft_config={"r": 2, "lora_alpha": 2}, base_sync_done=True)
    with pytest.raises(ValueError, match="lm_head.weight.*model.embed_tokens.weight"):
        server.load_weights({"base_model.model.lm_head.lora_A.weight": torch.zeros(2, hidden),
                             "base_model.model.lm_head.lora_B.weight": torch.zeros(vocab, 2)},
                            peft_config={"r": 2, "lora_alpha": 2}, base_sync_done=True)
    with pytest.raises(KeyError, match="weights not in the served model"):
        server.load_weights({"model.nowhere.base_layer.weight": torch.zeros(1)}, peft_config={"r": 2, "lora_alpha": 2})


def _config(**overrides):
    cfg = OmegaConf.create({"actor_rollout_ref": {"model": {"lora_rank": 8}, "rollout": {"name": "hf"}}})
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def test_start_up_check_accepts_hf_in_adapter_mode():
    """The hf rollout now applies what verl pushes in adapter mode; what it cannot is still refused."""
    assert _lora_problems(_config()) == []
    assert _lora_problems(_config(**{"actor_rollout_ref.rollout.load_format": "auto"})) == []
    problems = _lora_problems(_config(**{"actor_rollout_ref.model.target_parameters": ["experts.gate_up_proj"]}))
    assert len(problems) == 1 and "target_parameters" in problems[0] and "lora.merge=true" in problems[0]
    assert _lora_problems(_config(**{"actor_rollout_ref.model.target_parameters": ["experts.gate_up_proj"],
                                     "actor_rollout_ref.model.lora.merge": True})) == []
    problems = _lora_problems(_config(**{"actor_rollout_ref.rollout.checkpoint_engine.backend": "nccl"}))
    assert len(problems) == 1 and "#7495" in problems[0]
