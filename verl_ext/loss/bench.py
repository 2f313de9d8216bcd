"""Forward+backward time and peak memory of the UPGE loss against verl's vanilla PPO loss.

Three comparisons on the same batch, each the same math on both sides:

    core     upge_arm_loss (ppo_clip, ref=old, c=3, token-mean)  vs  verl get_policy_loss_fn("vanilla")
    loss_fn  hpt_actor_loss with the ppo preset                  vs  verl.workers.utils.losses.ppo_loss
             (the whole per-micro-batch loss_fn: nested → padded, metrics, entropy bonus)
    mixed    hpt_actor_loss, hpt_paper preset, 1/8 demo rows      vs  ppo_loss on the same rows (different
             math: what a two-arm batch costs)

The inputs are what the loss sees: log-prob tensors requiring grad, or, with ``--with-logits V``,
logits (B, T, V) followed by a log-softmax and a gather. Time: median (and minimum) over ``--repeats``
runs of forward+backward, the two sides alternating run by run. Peak memory: the largest total of
live tensor storages allocated during one forward+backward (inputs excluded), tracked through a
TorchDispatchMode, so the figure is exact and independent of the allocator.

    .venv/bin/python scripts/bench/bench_loss.py                      # 64 x 2048, float32, 1 thread
    .venv/bin/python scripts/bench/bench_loss.py --with-logits 512
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import time
import weakref

import torch
import verl
from omegaconf import OmegaConf
from tensordict import TensorDict
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.utils.losses import ppo_loss

from verl_ext.loss import UPGEArmConfig, annotate_arm_token_counts, hpt_actor_loss, load_upge_config
from verl_ext.loss.upge import upge_arm_loss

PRESETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "recipe", "hpt", "config", "upge")


class PeakMemory(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the mode and still alive (views counted once)."""

    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak = {}, 0, 0

    def _release(self, key):
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_nested and t.layout == torch.strided:
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._release, key)
        return out


def actor_config(**overrides):
    path = os.path.join(os.path.dirname(verl.__file__), "trainer", "config", "_generated_ppo_trainer.yaml")
    node = copy.deepcopy(OmegaConf.load(path).actor_rollout_ref.actor)
    node.ppo_micro_batch_size_per_gpu = 1
    for key, value in overrides.items():
        OmegaConf.update(node, key, value, merge=False)
    return omega_conf_to_dataclass(node)


def make_inputs(B, T, V, dtype, seed=0, prompt_len=16):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(T // 4, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = torch.arange(T)[None, :] < lengths[:, None]
    if V:
        leaf = torch.randn(B, T, V, generator=g, dtype=dtype).requires_grad_(True)
        tokens = torch.randint(0, V, (B, T), generator=g)
    else:
        leaf = (-torch.rand(B, T, generator=g, dtype=dtype) * 3).requires_grad_(True)
        tokens = None
    old = (-torch.rand(B, T, generator=g, dtype=dtype) * 3).detach()
    adv = torch.randn(B, 1, generator=g, dtype=dtype).expand(B, T).contiguous() * mask
    return dict(leaf=leaf, tokens=tokens, mask=mask, old=old, adv=adv, lengths=lengths, prompt_len=prompt_len)


def log_prob_of(inp):
    if inp["tokens"] is None:
        return inp["leaf"]
    return torch.log_softmax(inp["leaf"], dim=-1).gather(-1, inp["tokens"].unsqueeze(-1)).squeeze(-1)


def core_vanilla(inp, cfg):
    cfg.global_batch_info.update(dp_size=1, batch_num_tokens=int(inp["mask"].sum()), global_batch_size=None)
    loss, _ = get_policy_loss_fn("vanilla")(
        old_log_prob=inp["old"], log_prob=log_prob_of(inp), advantages=inp["adv"], response_mask=inp["mask"],
        loss_agg_mode="token-mean", config=cfg,
    )  # fmt: skip
    return loss


def core_upge(inp, arm):
    loss, _ = upge_arm_loss(
        log_prob_of(inp), inp["old"], inp["adv"], inp["mask"], arm, num_tokens=int(inp["mask"].sum())
    )
    return loss


def micro_batch(inp, is_demo=None):
    """A V0 micro-batch TensorDict (padded prompts/responses, after left_right_2_no_padding)."""
    B, T = inp["mask"].shape
    P = inp["prompt_len"]
    resp_mask = inp["mask"].long()
    fields = {
        "prompts": torch.ones(B, P, dtype=torch.long),
        "responses": torch.ones(B, T, dtype=torch.long),
        "attention_mask": torch.cat([torch.ones(B, P, dtype=torch.long), resp_mask], dim=1),
        "response_mask": resp_mask,
        "old_log_probs": inp["old"],
        "advantages": inp["adv"],
    }
    if is_demo is not None:
        fields["hpt_row_kind"] = is_demo
        fields["hpt_row_weight"] = torch.ones(B)
    td = TensorDict(fields, batch_size=[B])
    if is_demo is not None:
        annotate_arm_token_counts(td)
    tu.assign_non_tensor(td, dp_size=1, batch_num_tokens=int(inp["mask"].sum()), global_batch_size=B)
    return td


def model_output(inp):
    """Nested log-probs (and entropy) over prompt+response tokens, as verl's engine returns them."""
    logp = log_prob_of(inp)
    B, T = logp.shape
    P = inp["prompt_len"]
    pieces = []
    for i in range(B):
        n = int(inp["lengths"][i])
        # position P-1+t holds response token t; one junk value after the last response token
        pieces.append(torch.cat([logp.new_zeros(P - 1), logp[i, :n], logp.new_zeros(1)]))
    values = torch.cat(pieces)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), (inp["lengths"] + P).cumsum(0)])
    nested = torch.nested.nested_tensor_from_jagged(values, offsets)
    return {"log_probs": nested, "entropy": torch.nested.nested_tensor_from_jagged(values.detach().neg(), offsets)}


def timed(fn, inp, repeats, warmup):
    times = []
    for i in range(warmup + repeats):
        inp["leaf"].grad = None
        start = time.perf_counter()
        loss = fn(inp)
        loss.backward()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    return statistics.median(times), times


def peak_memory(fn, inp):
    inp["leaf"].grad = None
    with PeakMemory() as tracker:
        fn(inp).backward()
    inp["leaf"].grad = None
    return tracker.peak


def compare(label, fn_ours, fn_verl, inp, repeats, warmup):
    # Alternate the two sides run by run so drifting machine load (a shared CPU) hits both alike;
    # report the median and, as the least noise-sensitive figure under contention, the minimum.
    t_ours, t_verl = [], []
    for _ in range(repeats):
        t_verl += timed(fn_verl, inp, 1, warmup)[1]
        t_ours += timed(fn_ours, inp, 1, warmup)[1]
    m_ours, m_verl = peak_memory(fn_ours, inp), peak_memory(fn_verl, inp)
    med_o, med_v = statistics.median(t_ours), statistics.median(t_verl)
    min_o, min_v = min(t_ours), min(t_verl)
    print(
        f"{label:8s} median ours {med_o * 1e3:7.2f} ms verl {med_v * 1e3:7.2f} ms ratio {med_o / med_v:5.3f} | "
        f"min ours {min_o * 1e3:7.2f} ms verl {min_v * 1e3:7.2f} ms ratio {min_o / min_v:5.3f} | "
        f"peak mem ours {m_ours / 2**20:6.2f} MiB verl {m_verl / 2**20:6.2f} MiB ratio {m_ours / m_verl:5.3f}"
    )
    return med_o / med_v, min_o / min_v, m_ours / m_verl


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=2048, help="response tokens per row (padded width)")
    parser.add_argument("--with-logits", type=int, default=0, metavar="V", help="include a log-softmax over V")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=1)
    # One intra-op thread by default: on a shared 2-core machine OpenMP threads oversubscribe and
    # times swing by 100x; the comparison is per-op work, which one thread measures cleanly.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--only", choices=["core", "loss_fn", "mixed"], default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    inp = make_inputs(args.batch, args.seq, args.with_logits, dtype)
    print(
        f"batch {args.batch} x {args.seq} ({int(inp['mask'].sum())} valid tokens), {args.dtype}, "
        f"logits V={args.with_logits or '-'}, {torch.get_num_threads()} threads, median of {args.repeats}"
    )

    results = {}
    if args.only in (None, "core"):
        cfg = actor_config()
        arm = UPGEArmConfig(stable="ppo_clip", clip_low=0.2, clip_high=0.2, clip_c=3.0, ref="old", agg="token-mean")
        results["core"] = compare(
            "core", lambda x: core_upge(x, arm), lambda x: core_vanilla(x, cfg), inp, args.repeats, args.warmup
        )
    if args.only in (None, "loss_fn", "mixed"):
        cfg_verl = actor_config(entropy_coeff=0.001)
        cfg_ours = actor_config(entropy_coeff=0.001)
        td_plain = micro_batch(inp)

        def verl_fn(x):
            return ppo_loss(cfg_verl, model_output(x), td_plain)[0]

    if args.only in (None, "loss_fn"):
        ppo = load_upge_config(OmegaConf.load(os.path.join(PRESETS, "ppo.yaml")))
        ours = functools.partial(hpt_actor_loss, cfg_ours, upge=ppo)
        results["loss_fn"] = compare(
            "loss_fn", lambda x: ours(model_output(x), td_plain)[0], verl_fn, inp, args.repeats, args.warmup
        )
    if args.only in (None, "mixed"):
        paper = load_upge_config(OmegaConf.load(os.path.join(PRESETS, "hpt_paper.yaml")))
        is_demo = (torch.arange(args.batch) % 8 == 0).float()
        td_mixed = micro_batch(inp, is_demo)
        ours = functools.partial(hpt_actor_loss, cfg_ours, upge=paper)
        results["mixed"] = compare(
            "mixed", lambda x: ours(model_output(x), td_mixed)[0], verl_fn, inp, args.repeats, args.warmup
        )
    same_math = [results[k] for k in ("core", "loss_fn") if k in results]
    if same_math:
        print(
            "same-math comparisons (core, loss_fn): worst time ratio "
            f"median {max(r[0] for r in same_math):.3f}, min {max(r[1] for r in same_math):.3f} (target <= 1.10)"
        )
