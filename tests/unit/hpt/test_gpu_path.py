"""The GPU user's first-run failures (issue 14, items 1-6), each pinned on CPU without a GPU.

1. verl's default attention (flash_attention_2) without flash_attn: a start-up error, not a crash
   inside the worker.
2. ``rollout_log_probs`` survives the merge for every row; demonstration rows get the actor's own
   log-probs (neutral for rollout correction) and the mismatch metric covers sampled rows only.
3. ``algorithm.rollout_correction.bypass_mode=true``: rejected at start-up.
4. fp16: the grad-norm guard reads the unscaled norm (a real GradScaler), overflow is the scaler's.
5. SFT-only baseline: no weight push unless something samples.
6. Padding rows are placed by verl's balancing, not appended after it.
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo.ray_trainer import RayPPOTrainer

from tests.unit.hpt.test_gate import make_rollout_batch
from tests.unit.hpt.test_reliability import _bare_trainer, _data, _mse, _snapshot, _StubEngine
from verl_ext.hpt.gate import GateConfig
from verl_ext.loss.batch_keys import HPT_ROW_KIND, HPT_ROW_WEIGHT


def _trainer(char_tok, dp=1, mini=2, n=4, gamma=0.5):
    t = _bare_trainer(char_tok, gate=GateConfig(strategy="switch", gamma=gamma))
    t.config = OmegaConf.create({
        "actor_rollout_ref": {"rollout": {"response_length": 8, "n": n, "log_prob_use_dynamic_bsz": True},
                              "actor": {"ppo_mini_batch_size": mini, "shuffle": False}},
        "trainer": {"default_local_dir": "/nonexistent"}})
    t.use_reference_policy = False
    t.actor_rollout_wg = None
    t._get_dp_size = lambda wg, role: dp
    return t


# ------------------------------------------------------------------ 2. rollout log-probs kept
def _fake_old_log_prob(monkeypatch, actor_lp):
    def compute(self, batch):
        return DataProto.from_dict(tensors={"old_log_probs": actor_lp.clone(),
                                            "entropys": torch.zeros_like(actor_lp)}), 0.0
    monkeypatch.setattr(RayPPOTrainer, "_compute_old_log_prob", compute)


def test_rollout_log_probs_survive_the_merge_and_demo_rows_become_neutral(char_tok, monkeypatch):
    from verl.utils.debug.metrics import calculate_debug_metrics

    batch = make_rollout_batch([(4, 0), (4, 1), (4, 3), (4, 4)], seed=5)  # γ = 0.5 gates q0, q1
    t = _trainer(char_tok)
    metrics = {}
    t._balance_batch(batch, metrics)
    assert "rollout_log_probs" in batch.batch.keys()  # today: popped on every step with a demo row
    demo = batch.batch[HPT_ROW_KIND] > 0
    assert int(demo.sum()) == 2 and int((~demo).sum()) >= 8
    # the actor's log-probs: close to the rollout's on sampled rows, anything on demonstrations
    g = torch.Generator().manual_seed(0)
    rollout_lp = batch.batch["rollout_log_probs"].clone()
    actor_lp = rollout_lp + 1e-3 * torch.randn(rollout_lp.shape, generator=g)
    actor_lp[demo] = -3.0 * torch.rand((int(demo.sum()), rollout_lp.shape[1]), generator=g)
    _fake_old_log_prob(monkeypatch, actor_lp)
    old, _ = t._compute_old_log_prob(batch)
    batch.union(old)
    # demonstration rows: the actor's own log-probs, i.e. log-ratio 0 ...
    assert torch.equal(batch.batch["rollout_log_probs"][demo], actor_lp[demo])
    assert torch.equal(batch.batch["rollout_log_probs"][~demo], rollout_lp[~demo])
    # ... so verl's rollout correction gives them IS weight 1 and rejects none of their tokens
    from verl.trainer.config.algorithm import RolloutCorrectionConfig
    from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch

    cfg = RolloutCorrectionConfig(rollout_is="token", rollout_is_threshold=2.0)
    batch, _ = compute_rollout_correction_and_add_to_batch(batch, cfg)
    w = batch.batch["rollout_is_weights"]
    rmask = batch.batch["response_mask"].bool()
    assert torch.allclose(w[demo][rmask[demo]], torch.ones(()))
    assert not torch.allclose(w[~demo][rmask[~demo]], torch.ones(()))  # sampled rows: real weights
    # verl's metric over all rows (what fit logs first) is diluted by the demonstrations' zeros;
    # the trainer replaces it, before the update, by the sampled rows' own.
    metrics.update(calculate_debug_metrics(batch))
    diluted = metrics["training/rollout_probs_diff_mean"]
    monkeypatch.setattr(RayPPOTrainer, "_update_actor",
                        lambda self, b: DataProto(meta_info={"metrics": {}}))
    out = t._update_actor(batch)
    from verl.utils.metric import reduce_metrics

    metrics.update(reduce_metrics(out.meta_info["metrics"]))  # what fit does after the update
    sampled = batch.select_idxs(torch.nonzero(~demo).flatten().numpy())
    expected = calculate_debug_metrics(sampled)["training/rollout_probs_diff_mean"]
    assert metrics["training/rollout_probs_diff_mean"] == pytest.approx(expected, rel=1e-12)
    assert expected > diluted * 1.05


def test_all_demonstration_step_reports_no_valid_mismatch(char_tok, monkeypatch):
    batch = make_rollout_batch([(4, 0), (4, 0)], seed=6)  # every question gated: only demo rows
    t = _trainer(char_tok, mini=1)
    metrics = {}
    t._balance_batch(batch, metrics)
    assert bool((batch.batch[HPT_ROW_KIND] > 0).all())
    _fake_old_log_prob(monkeypatch, torch.zeros_like(batch.batch["rollout_log_probs"]))
    t._compute_old_log_prob(batch)
    assert batch.meta_info["hpt_rollout_debug_metrics"]["training/rollout_probs_diff_valid"] == 0


def test_demonstration_prefix_tokens_of_rollout_rows_become_neutral(char_tok, monkeypatch):
    """A prefix-guided rollout row (staged generation, TRAPO): its demonstration-prefix tokens were not
    sampled (rollout log-prob 0): they get the actor's log-probs; its generated tokens keep theirs."""
    from verl_ext.loss.batch_keys import HPT_PREFIX_MASK

    batch = make_rollout_batch([(4, 1), (4, 3)], seed=8)
    rmask = batch.batch["response_mask"].bool()
    prefix = torch.zeros_like(rmask)
    prefix[0, :2] = True
    prefix &= rmask
    batch.batch[HPT_PREFIX_MASK] = prefix.float()
    batch.batch["rollout_log_probs"][prefix] = 0.0  # what the agent loop reports for copied tokens
    t = _trainer(char_tok, gamma=0.0)
    t._balance_batch(batch, {})
    prefix = batch.batch[HPT_PREFIX_MASK].bool()
    assert int(prefix.sum()) == 2  # the key survived the gate, the merge and the padding
    rollout_lp = batch.batch["rollout_log_probs"].clone()
    actor_lp = rollout_lp - 0.5
    _fake_old_log_prob(monkeypatch, actor_lp)
    t._compute_old_log_prob(batch)
    assert torch.equal(batch.batch["rollout_log_probs"][prefix], actor_lp[prefix])
    assert torch.equal(batch.batch["rollout_log_probs"][~prefix], rollout_lp[~prefix])
    # the mismatch metric reads the sampled rows' generated tokens only (prefix tokens' zero differences
    # would lower the mean)
    rows = batch.batch[HPT_ROW_KIND] == 0
    gen = batch.batch["response_mask"].bool() & ~prefix & rows[:, None]
    expected = (rollout_lp[gen].exp() - actor_lp[gen].exp()).abs().mean().item()
    debug = batch.meta_info["hpt_rollout_debug_metrics"]
    assert debug["training/rollout_probs_diff_mean"] == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------ 3. bypass mode
def test_bypass_mode_is_rejected_at_start_up():
    from verl_ext.checks.settings import unsupported_settings

    base = {"trainer": {"balance_batch": True}, "algorithm": {"rollout_correction": {"bypass_mode": False}}}
    assert unsupported_settings(OmegaConf.create(base)) == []
    base["algorithm"]["rollout_correction"]["bypass_mode"] = True
    problems = unsupported_settings(OmegaConf.create(base))
    assert len(problems) == 1 and "algorithm.rollout_correction.bypass_mode=true" in problems[0]
    assert "bypass_mode=false" in problems[0]


# ------------------------------------------------------------------ 4. fp16 grad-norm guard
class _Fp16Engine(_StubEngine):
    """verl's FSDPEngine under fp16: a GradScaler scales the loss before backward and is unscaled
    inside verl's own ``optimizer_step`` (called unbound, as the real engine's)."""

    def __init__(self, seed=0, init_scale=2.0 ** 16):
        super().__init__(seed)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=400)

    def forward_backward_batch(self, data, loss_function, forward_only=False):
        loss = loss_function(self.module, data)
        self.scaler.scale(loss).backward()
        return {"loss": [loss.item()], "metrics": {}}


def _fp16_guarded(threshold, inject=None):
    from tests.fault_injection import inject_nonfinite_gradients
    from verl_ext.verl_patches import SKIP_GRAD_NORM, SKIP_NONFINITE, SKIP_OVERFLOW, install_step_guard

    eng = _Fp16Engine()
    install_step_guard(eng, threshold)
    inject_nonfinite_gradients(eng, inject)
    return eng, SKIP_NONFINITE, SKIP_GRAD_NORM, SKIP_OVERFLOW


def test_fp16_guard_reads_the_unscaled_grad_norm():
    eng, NF, GN, OV = _fp16_guarded(threshold=80.0)
    before = _snapshot(eng)
    out = eng.train_batch(_data(), _mse)
    # the true norm is O(1); scaled by 2^16 it is far above 80 and every step used to be skipped
    assert out["metrics"][GN] == [0.0] and out["metrics"][NF] == [0.0] and out["metrics"][OV] == [0.0]
    assert 0 < float(out["metrics"]["grad_norm"]) < 80
    after = _snapshot(eng)
    assert not torch.equal(before[0]["0.weight"], after[0]["0.weight"])  # it trained
    assert int(eng.optimizer.state_dict()["state"][0]["step"]) == 1


def test_fp16_guard_still_skips_a_truly_large_norm():
    eng, NF, GN, _ = _fp16_guarded(threshold=1e-3)
    before = _snapshot(eng)
    out = eng.train_batch(_data(scale=100.0), _mse)
    assert out["metrics"][GN] == [1.0] and out["metrics"][NF] == [0.0]
    assert _snapshot(eng)[0]["0.weight"].equal(before[0]["0.weight"])


def test_fp16_overflow_is_left_to_the_scaler_and_not_counted_as_a_failure():
    eng, NF, GN, OV = _fp16_guarded(threshold=80.0, inject={1})  # inf/NaN gradients at step 1
    scale0 = float(eng.scaler.get_scale())
    out = eng.train_batch(_data(), _mse)
    assert out["metrics"][OV] == [1.0] and out["metrics"][NF] == [0.0] and out["metrics"][GN] == [0.0]
    assert float(eng.scaler.get_scale()) == scale0 / 2  # the scaler backed off, as in any fp16 run
    out = eng.train_batch(_data(2), _mse)  # next step trains normally
    assert out["metrics"][OV] == [0.0] and math.isfinite(float(out["metrics"]["grad_norm"]))


def test_grad_norm_skips_count_towards_the_stop(char_tok):
    t = _bare_trainer(char_tok, max_skips=3)
    metrics = {"actor/hpt/skip_nonfinite": [0.0, 0.0, 0.0], "actor/hpt/skip_grad_norm": [1.0, 1.0, 1.0]}
    t._account_skips(metrics, 1)
    assert metrics["hpt/consecutive_skips"] == [3] and t._stop_reason is not None
    assert "hpt.skip_grad_norm_above" in t._stop_reason
    t2 = _bare_trainer(char_tok, max_skips=3)  # fp16 overflows neither count nor reset
    m = {"actor/hpt/skip_nonfinite": [1.0, 0.0, 1.0], "actor/hpt/skip_grad_norm": [0.0] * 3,
         "actor/hpt/fp16_overflow": [0.0, 1.0, 0.0]}
    t2._account_skips(m, 1)
    assert m["hpt/consecutive_skips"] == [2] and m["hpt/fp16_overflows"] == [1]


# ------------------------------------------------------------------ 5. SFT-only: no pushes
class _CountingManager:
    def __init__(self):
        self.calls = []

    def update_weights(self, global_steps=None):
        self.calls.append(("update_weights", global_steps))

    def sleep_replicas(self):
        self.calls.append(("sleep_replicas",))


def test_sft_only_baseline_defers_weight_pushes_until_validation(char_tok):
    from verl_ext.hpt.demo_rollout import DeferredWeightSync, DemonstrationRolloutManager

    inner = _CountingManager()
    sync = DeferredWeightSync(inner)

    class _Rollout:
        def generate_sequences(self, prompts):
            return "sampled"

    mgr = DemonstrationRolloutManager(_Rollout(), char_tok, None, demo_field="target", demo_choice="uniform", seed=0,
                                      before_rollout=sync.flush)
    for step in range(1, 4):  # what fit does around three training steps
        sync.sleep_replicas()  # after (stand-in) generation
        sync.update_weights(step)  # after each update
    assert inner.calls == [] and sync.deferred == 3 and sync.pushes == 0
    assert mgr.generate_sequences(DataProto(meta_info={"validate": True})) == "sampled"
    assert inner.calls == [("update_weights", 3)] and sync.pushes == 1  # one push, the latest weights
    mgr.generate_sequences(DataProto(meta_info={"validate": True}))
    assert sync.pushes == 1  # nothing changed since: no second push
    sync.sleep_replicas()
    sync.sleep_replicas()
    assert inner.calls[-1] == ("sleep_replicas",) and len(inner.calls) == 2


# ------------------------------------------------------------------ 6. padding before balance
def _rank_tokens(batch, dp):
    tokens = batch.batch["attention_mask"].sum(-1).float()
    return [float(c.sum()) for c in tokens.chunk(dp)]


def test_padding_rows_are_placed_by_the_balancer(char_tok, monkeypatch):
    # 6 questions x 4 rollouts; γ = 0.5 gates q0..q2 to one SFT row each: 3 + 12 = 15 rows;
    # mini-batch = 5 x 4 = 20 rows, dp = 2: 5 inert rows, all of them before verl balances.
    spec = [(4, 0), (4, 1), (4, 2), (4, 3), (4, 4), (4, 3)]
    batch = make_rollout_batch(spec, seed=11, prompt_len=6, response_len=24)
    t = _trainer(char_tok, dp=2, mini=5)
    metrics = {}
    t._balance_batch(batch, metrics)
    assert len(batch) == 20 and metrics["hpt/pad_rows"] == 5
    balanced_order = batch.batch["input_ids"].clone()
    seen = {}

    def update(self, b):
        seen["batch"] = b
        return DataProto(meta_info={"metrics": {}})

    monkeypatch.setattr(RayPPOTrainer, "_update_actor", update)
    batch.batch["advantages"] = torch.zeros_like(batch.batch["response_mask"], dtype=torch.float32)
    t._update_actor(batch)
    updated = seen["batch"]
    assert len(updated) == 20 and torch.equal(updated.batch["input_ids"], balanced_order)  # nothing appended
    ranks = _rank_tokens(updated, 2)
    longest = float(batch.batch["attention_mask"].sum(-1).max())
    assert abs(ranks[0] - ranks[1]) <= longest  # verl's balance survives to the update
    assert (updated.batch[HPT_ROW_WEIGHT] == 0).sum() == 5


# ------------------------------------------------------------------ 1. attention implementation
FLASH_ATTN_NAMES = ("flash_attn", "flash_attn_2_cuda")


@pytest.fixture
def fake_flash_attn(tmp_path, monkeypatch):
    """make(init=..., ext=...): a flash_attn package (and its top-level compiled extension
    ``flash_attn_2_cuda``, as the wheel installs it) written to a folder put first on sys.path; the
    modules are dropped from sys.modules before and after, so each test imports its own."""
    import sys

    def drop():
        return {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in FLASH_ATTN_NAMES}

    saved = drop()

    def make(init: str = "from flash_attn_2_cuda import fwd  # noqa\n", ext: str = "def fwd():\n    pass\n"):
        root = tmp_path / "site"
        (root / "flash_attn").mkdir(parents=True)
        (root / "flash_attn" / "__init__.py").write_text(init)
        (root / "flash_attn" / "bert_padding.py").write_text("def unpad_input():\n    pass\n")
        (root / "flash_attn_2_cuda.py").write_text(ext)
        monkeypatch.syspath_prepend(str(root))
        return root

    yield make
    drop()
    sys.modules.update(saved)


def _gpu_cfg(**model):
    return OmegaConf.create({"actor_rollout_ref": {"model": {"path": "m", **model}, "actor": {}},
                             "trainer": {"device": "cuda"}})


def test_flash_attention_without_flash_attn_is_a_start_up_error(monkeypatch, fake_flash_attn):
    from verl_ext.checks.environment import check_attention_implementation

    cfg = _gpu_cfg()
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "flash_attn" else object())
    with pytest.raises(ValueError) as err:
        check_attention_implementation(cfg)  # verl's default: flash_attention_2
    msg = str(err.value)
    assert "flash_attn package is not installed" in msg and "pip install flash-attn" in msg
    assert "+actor_rollout_ref.model.override_config.attn_implementation=sdpa" in msg
    ok = _gpu_cfg(override_config={"attn_implementation": "sdpa"})
    check_attention_implementation(ok)
    ok.actor_rollout_ref.model.use_remove_padding = True  # remove padding unpads with flash_attn on GPU
    with pytest.raises(ValueError, match="use_remove_padding=true"):
        check_attention_implementation(ok)
    cpu = OmegaConf.create({"actor_rollout_ref": {"model": {"path": "m"}}, "trainer": {"device": "cpu"}})
    check_attention_implementation(cpu)  # the CPU platform never uses flash_attn
    monkeypatch.undo()
    fake_flash_attn()  # a flash_attn that imports, extension and bert_padding included
    check_attention_implementation(cfg)  # verl's default works
    check_attention_implementation(ok)


def test_a_flash_attn_built_for_another_torch_is_a_start_up_error_quoting_the_import(fake_flash_attn):
    """Installed but not importable (a wheel for another torch/CUDA: its extension has an undefined
    symbol). A presence check passed this, and the workers then died on the ImportError."""
    from verl_ext.checks.environment import check_attention_implementation

    symbol = "flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so: undefined symbol: _ZN3c104cuda9SetDeviceEi"
    fake_flash_attn(init=f"raise ImportError({symbol!r})\n")
    with pytest.raises(ValueError) as err:
        check_attention_implementation(_gpu_cfg())
    msg = str(err.value)
    assert symbol in msg and "`import flash_attn` raised ImportError" in msg
    assert "--force-reinstall" in msg and "attn_implementation=sdpa" in msg
    with pytest.raises(ValueError, match="undefined symbol"):
        check_attention_implementation(_gpu_cfg(override_config={"attn_implementation": "sdpa"},
                                                use_remove_padding=True))


def test_a_broken_compiled_extension_is_caught_even_when_the_package_imports(fake_flash_attn):
    """A lazily importing flash_attn/__init__ passes `import flash_attn`; the extension itself must load."""
    from verl_ext.checks.environment import flash_attn_import_error

    fake_flash_attn(init="", ext="raise ImportError('libcudart.so.11.0: cannot open shared object file')\n")
    err = flash_attn_import_error()
    assert "`import flash_attn_2_cuda` raised ImportError: libcudart.so.11.0" in err


@pytest.mark.parametrize("key", ["ulysses_sequence_parallel_size", "fsdp_config.ulysses_sequence_parallel_size"])
def test_ulysses_sequence_parallel_gets_a_fix_verl_accepts(monkeypatch, key):
    """verl refuses use_remove_padding=false with Ulysses > 1 (FSDPActorConfig.validate, the FSDP engine),
    so the usual fallback cannot be the advice there: it must also say to drop sequence parallelism."""
    from verl.workers.config.actor import FSDPActorConfig

    from verl_ext.checks.environment import check_attention_implementation

    cfg = _gpu_cfg()
    OmegaConf.update(cfg, f"actor_rollout_ref.actor.{key}", 2)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "flash_attn" else object())
    with pytest.raises(ValueError) as err:
        check_attention_implementation(cfg)
    msg = str(err.value)
    full_key = f"actor_rollout_ref.actor.{key}"
    assert f"{full_key}=2" in msg and f"`{full_key}=1` together with" in msg
    assert "actor_rollout_ref.model.use_remove_padding=false" in msg and "pip install flash-attn" in msg
    # what verl says about the plain fallback with sequence parallelism (the reason for the advice)
    actor = FSDPActorConfig(strategy="fsdp", ulysses_sequence_parallel_size=2, ppo_mini_batch_size=2,
                            ppo_micro_batch_size_per_gpu=1, rollout_n=1)
    with pytest.raises(ValueError, match="use_remove_padding"):
        actor.validate(n_gpus=2, train_batch_size=2, model_config={"use_remove_padding": False})
    # SDPA with sequence parallelism would attend within each rank's slice: refused, whatever is installed
    sdpa = _gpu_cfg(override_config={"attn_implementation": "sdpa"}, use_remove_padding=True)
    OmegaConf.update(sdpa, f"actor_rollout_ref.actor.{key}", 2)
    with pytest.raises(ValueError, match=f"{full_key}=1"):
        check_attention_implementation(sdpa)


# ------------------------------------------------------------------ verl's data metrics: the rollouts'
def test_verls_score_and_length_metrics_describe_the_sampled_rollouts_not_the_trained_batch(char_tok):
    """16 rollouts, 8 of them correct (4 questions: 0, 1, 3, 4 of 4); γ = 0.5 gates q0 and q1 to SFT.
    verl's ``critic/score/mean`` etc. as ``fit`` computes them after the update must be the rollouts'
    (pass rate 0.5), not the trained batch's (q2, q3's 7 of 8 correct rollouts + 2 demonstrations
    scored 1 + padding), which goes under ``hpt/trained/``."""
    from verl.trainer.ppo import ray_trainer

    from verl_ext.verl_patches import install_rollout_data_metrics

    install_rollout_data_metrics()
    batch = make_rollout_batch([(4, 0), (4, 1), (4, 3), (4, 4)], seed=5)
    lengths = batch.batch["response_mask"].sum(-1).float()  # (16,)
    prompt_lengths = batch.batch["attention_mask"][:, :batch.batch["prompts"].shape[1]].sum(-1).float()
    t = _trainer(char_tok, mini=2)
    metrics = {}
    t._balance_batch(batch, metrics)
    demo = batch.batch[HPT_ROW_KIND] > 0
    live = batch.batch[HPT_ROW_WEIGHT] > 0
    assert int(demo.sum()) == 2 and int((~live).sum()) > 0  # both arms and padding rows
    # what fit has by the time it logs: rewards, advantages, returns of the trained batch
    scores = batch.batch["rm_scores"]
    batch.batch["token_level_scores"] = scores
    batch.batch["token_level_rewards"] = scores
    batch.batch["advantages"] = torch.zeros_like(scores)
    batch.batch["returns"] = torch.zeros_like(scores)
    logged = ray_trainer.compute_data_metrics(batch=batch, use_critic=False)

    assert logged["critic/score/mean"] == pytest.approx(0.5)  # 8 / 16 rollouts
    assert logged["critic/rewards/mean"] == pytest.approx(0.5)
    assert logged["critic/score/min"] == 0.0 and logged["critic/score/max"] == 1.0
    assert logged["response_length/mean"] == pytest.approx(float(lengths.mean()))
    assert logged["response_length/max"] == pytest.approx(float(lengths.max()))
    assert logged["prompt_length/mean"] == pytest.approx(float(prompt_lengths.mean()))
    # the trained batch under hpt/trained/: 7 of 8 kept rollouts and the 2 demonstrations, padding left out
    demo_score = float(scores[demo].sum(-1).mean())
    assert metrics["hpt/trained/critic/score/mean"] == pytest.approx((7 + 2 * demo_score) / 10)
    assert metrics["hpt/trained/response_length/mean"] == pytest.approx(
        float(batch.batch["response_mask"][live].sum(-1).float().mean()))
    # what verl alone logs under critic/score/mean is the trained batch's value (its empty padding
    # rows count as aborted and drop out): now hpt/trained/critic/score/mean, 0.9 against the rollouts' 0.5
    from verl.trainer.ppo.metric_utils import compute_data_metrics as verl_metrics

    unpatched = verl_metrics(batch=batch, use_critic=False)["critic/score/mean"]
    assert unpatched == pytest.approx(metrics["hpt/trained/critic/score/mean"]) == pytest.approx(0.9)
