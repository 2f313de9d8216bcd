"""The HPT trainer's step against the same work in a plain PyTorch loop, side by side in one run.

Three runs of the main job's shapes (``+exp=cpu_default``: the arithmetic task, ``models/arith-base``,
32 questions x n = 4 per step, response length 48, temperature 1, AdamW, ``upge=hpt``, gamma 0):

(a) ``hpt``: the HPT trainer as the main job runs it (``python -m recipe.hpt.main_hpt``: verl's
    ``RayPPOTrainer`` path, Ray, FSDP2 on the ``cpu`` platform, the ``hf`` rollout server);
(b) ``verl``: verl's own trainer (its ``TaskRunner``, ``RayPPOTrainer`` and worker, unchanged) running
    GRPO on the same config without HPT (the ``hpt`` node dropped): verl's fixed cost;
(c) ``plain``: one process, no Ray, no verl: the same model, prompts, n, sampling (the ``hf`` server's
    own sampler), grader, HPT step (gate, demonstrations, merge) and a forward + backward + AdamW step
    over the same merged rows (one mini-batch, one micro-batch, as the main job's token budget gives);
    the old log-probs from a separate no-grad forward, or with ``hpt.fuse_old_log_prob`` (as
    ``cpu_default``) from the update's own forward, as the trainer does. It trains the merged rows
    only: the trainer's inert padding rows (to whole mini-batches, one token each under
    remove-padding) cost a full row each on CPU, where the forward is over the padded width.

Per phase (seconds per step, the first ``--warmup`` steps left out): ``gen`` (generation with grading:
verl grades inside its agent loop), ``old_log_prob``, ``update``, ``weight_sync`` (the push to the
rollout server; none in one process), ``bookkeeping`` (HPT's step on the batch), ``step`` (the whole
step), and the ratios (a)/(c) and (b)/(c). The trainers' numbers are verl's own ``timing_s/*``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from verl_ext.arena import REPO

PHASES = ("gen", "old_log_prob", "update", "weight_sync", "bookkeeping", "step")
TRAINER_KEYS = {"gen": "timing_s/gen", "old_log_prob": "timing_s/old_log_prob", "update": "timing_s/update_actor",
                "weight_sync": "timing_s/update_weights", "bookkeeping": "timing_s/hpt_bookkeeping",
                "step": "timing_s/step"}
MODEL, DATA = "models/arith-base", "data/arith"


def _summarise(rows: list[dict], warmup: int) -> dict:
    rows = rows[warmup:]
    return {p: statistics.mean(r.get(p, 0.0) for r in rows) for p in PHASES} | {"steps": len(rows)}


# ------------------------------------------------------------------ (a), (b): the trainers
def trainer_run(kind: str, steps: int, overrides: list[str], workdir: Path) -> list[dict]:
    """One trainer run (``kind`` hpt or verl) of ``steps`` steps; per-step phase seconds."""
    metrics = workdir / f"{kind}.jsonl"
    base = ["+exp=cpu_default", f"trainer.total_training_steps={steps}", "trainer.test_freq=-1",
            "trainer.save_freq=-1", "trainer.resume_mode=disable", "trainer.logger=[file]",
            f"trainer.default_local_dir={workdir / kind}", f"data.train_files={DATA}/train.parquet",
            f"data.val_files={DATA}/test.parquet", f"actor_rollout_ref.model.path={MODEL}", *overrides]
    code = ("from verl_ext.tasks.step_bench import run_verl_grpo; import sys; run_verl_grpo(sys.argv[1:])"
            if kind == "verl" else None)
    cmd = [sys.executable, "-c", code, *base] if code else [sys.executable, "-m", "recipe.hpt.main_hpt", *base]
    env = dict(os.environ, VERL_FILE_LOGGER_PATH=str(metrics), PYTHONUNBUFFERED="1", HPT_HF_ROLLOUT_THREADS="2")
    with open(workdir / f"{kind}.log", "w") as log:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"the {kind} run failed ({rc}): see {workdir / f'{kind}.log'}")
    rows = [json.loads(line)["data"] for line in metrics.read_text().splitlines() if line.strip()]
    return [{p: float(r.get(k, 0.0)) for p, k in TRAINER_KEYS.items()} for r in rows if "timing_s/step" in r]


def run_verl_grpo(overrides: list[str]) -> None:
    """verl's own trainer on the composed HPT config without its ``hpt`` node (GRPO, verl's loss)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict
    from verl.experimental.reward_loop import migrate_legacy_reward_impl
    from verl.trainer.main_ppo import run_ppo
    from verl.trainer.main_ppo_v0 import TaskRunner
    from verl.utils.device import auto_set_device

    from recipe.hpt.runtime import prepare_runtime

    with initialize_config_dir(config_dir=str(REPO / "recipe/hpt/config"), version_base=None):
        config = compose(config_name="hpt_trainer", overrides=overrides)
    with open_dict(config):
        config.pop("hpt")
    prepare_runtime(config)
    auto_set_device(config)
    run_ppo(migrate_legacy_reward_impl(config), task_runner_class=TaskRunner)  # the classic trainer HPT extends


# ------------------------------------------------------------------ (c): the plain loop
def _composed(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "recipe/hpt/config"), version_base=None):
        return compose(config_name="hpt_trainer", overrides=["+exp=cpu_default", *overrides])


def _rollout_batch(tok, questions, texts_ids, scores, n: int, prompt_len: int, resp_len: int):
    """A post-rollout batch in verl's layout (left-padded prompts, right-padded responses, the score
    on the last response token), as ``fit`` hands it to the ``_balance_batch`` hook."""
    from verl import DataProto

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = len(texts_ids)
    prompts = torch.full((rows, prompt_len), pad, dtype=torch.long)
    pmask = torch.zeros(rows, prompt_len, dtype=torch.long)
    resp = torch.full((rows, resp_len), pad, dtype=torch.long)
    rmask = torch.zeros(rows, resp_len, dtype=torch.long)
    rm = torch.zeros(rows, resp_len)
    for r, (p_ids, r_ids) in enumerate(texts_ids):
        p_ids, r_ids = p_ids[-prompt_len:], r_ids[:resp_len]
        prompts[r, prompt_len - len(p_ids):] = torch.tensor(p_ids)
        pmask[r, prompt_len - len(p_ids):] = 1
        resp[r, :len(r_ids)] = torch.tensor(r_ids, dtype=torch.long)
        rmask[r, :len(r_ids)] = 1
        rm[r, max(len(r_ids), 1) - 1] = scores[r]
    attention = torch.cat([pmask, rmask], -1)
    q = [questions[r // n] for r in range(rows)]
    return DataProto.from_dict(
        tensors={"prompts": prompts, "responses": resp, "response_mask": rmask,
                 "input_ids": torch.cat([prompts, resp], -1), "attention_mask": attention,
                 "position_ids": torch.clamp(attention.cumsum(-1) - 1, min=0), "rm_scores": rm},
        non_tensors={"uid": np.array([f"q{r // n}" for r in range(rows)], dtype=object),
                     "extra_info": np.array([x["extra_info"] for x in q], dtype=object),
                     "data_source": np.array([x["data_source"] for x in q], dtype=object),
                     "reward_model": np.array([x["reward_model"] for x in q], dtype=object)})


def _response_log_probs(model, batch) -> torch.Tensor:
    """(B, R) log-probs of the response tokens under ``model``."""
    td = batch.batch
    logits = model(input_ids=td["input_ids"], attention_mask=td["attention_mask"],
                   position_ids=td["position_ids"]).logits  # (B, P+R, V)
    resp = td["responses"]
    width = resp.shape[1]
    logits = logits[:, -width - 1:-1, :].float()  # the positions that predict each response token
    return torch.log_softmax(logits, -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)


def plain_run(steps: int, seed: int = 0, overrides: list[str] | None = None) -> list[dict]:
    """The same work in one process (see the module docstring); per-step phase seconds."""
    import pandas as pd
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl_ext.hpt.config import HPTConfig
    from verl_ext.hpt.demo_scorer import DemoScorer
    from verl_ext.hpt.state import HPTState
    from verl_ext.hpt.step import HPTStep
    from verl_ext.loss.batch_keys import HPT_ROW_KIND, HPT_ROW_WEIGHT
    from verl_ext.reward import compute_score
    from verl_ext.rollout.sampling import SamplingSpec, generator_for, row_seed, sample_batch

    cfg = _composed(overrides or [])
    arr, data = cfg.actor_rollout_ref, cfg.data
    n, resp_len, prompt_len = int(arr.rollout.n), int(data.max_response_length), int(data.max_prompt_length)
    tok = AutoTokenizer.from_pretrained(REPO / MODEL)
    model = AutoModelForCausalLM.from_pretrained(REPO / MODEL, dtype=torch.float32)
    optim = arr.actor.optim
    opt = torch.optim.AdamW(model.parameters(), lr=float(optim.lr), betas=tuple(optim.get("betas", (0.9, 0.999))),
                            weight_decay=float(optim.get("weight_decay", 0.01)))
    hpt = HPTConfig.from_config(cfg)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    step_fn = HPTStep(hpt, tok, resp_len, DemoScorer(compute_score), demo_seed=seed, pad_token_id=pad)
    state = HPTState()
    table = pd.read_parquet(REPO / DATA / "train.parquet").to_dict("records")
    order = np.random.default_rng(seed).permutation(len(table))
    spec = SamplingSpec(temperature=float(arr.rollout.temperature), top_p=float(arr.rollout.top_p),
                        top_k=int(arr.rollout.top_k), max_new_tokens=resp_len)
    bsz, const_len = int(data.train_batch_size), float(hpt.loss.rollout.const_len or resp_len)
    out = []
    for step in range(steps):
        questions = [table[i] for i in order[(step * bsz) % len(table):][:bsz]]
        t0 = time.perf_counter()
        prompt_ids = [tok(tok.apply_chat_template(list(q["prompt"]), add_generation_prompt=True, tokenize=False),
                          add_special_tokens=False)["input_ids"] for q in questions]
        rows = [p for p in prompt_ids for _ in range(n)]
        gens = [generator_for(row_seed(seed, step, i)) for i in range(len(rows))]
        with torch.no_grad():
            samples = sample_batch(model, rows, spec, {tok.eos_token_id}, pad, generators=gens)
        texts = tok.batch_decode([s.token_ids for s in samples], skip_special_tokens=True)
        scores = [float(compute_score(questions[r // n]["data_source"], t,
                                      questions[r // n]["reward_model"]["ground_truth"])["score"])
                  for r, t in enumerate(texts)]
        batch = _rollout_batch(tok, questions, list(zip(rows, [s.token_ids for s in samples])), scores, n,
                               prompt_len, resp_len)
        t1 = time.perf_counter()
        merged = step_fn(batch, state, step + 1).merged  # the gate, demonstrations, merge, metrics
        t2 = time.perf_counter()
        if not hpt.fuse_old_log_prob:
            with torch.no_grad():
                old = _response_log_probs(model, merged)  # (B, R)
        t3 = time.perf_counter()
        td = merged.batch
        mask, demo = td["response_mask"].float(), (td[HPT_ROW_KIND] > 0).float()[:, None]
        score = td["rm_scores"].sum(-1)
        adv = score.clone()
        uids = merged.non_tensor_batch["uid"]
        for u in set(uids):
            rows_u = torch.as_tensor(uids == u)
            adv[rows_u] = score[rows_u] - score[rows_u].mean()
        logp = _response_log_probs(model, merged)
        if hpt.fuse_old_log_prob:  # as the trainer then does: the update's own forward is θold's
            old = logp.detach()
        weight = td[HPT_ROW_WEIGHT][:, None] * mask
        rl = -((torch.exp(logp - old) * adv[:, None]) * weight * (1 - demo)).sum() / const_len
        sft = -(logp * weight * demo).sum() / max(float((mask * demo).sum()), 1.0)
        opt.zero_grad()
        (rl + sft).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(arr.actor.get("grad_clip", 1.0)))
        opt.step()
        t4 = time.perf_counter()
        out.append({"gen": t1 - t0, "bookkeeping": t2 - t1, "old_log_prob": t3 - t2, "update": t4 - t3,
                    "weight_sync": 0.0, "step": t4 - t0})
    return out


def main(argv=None) -> dict:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the means")
    ap.add_argument("--runs", default="plain,hpt,verl")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for both trainer runs")
    args = ap.parse_args(argv)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.runs.split(","):
            t0 = time.perf_counter()
            rows = (plain_run(args.steps, overrides=args.overrides) if kind == "plain"
                    else trainer_run(kind, args.steps, args.overrides, Path(tmp)))
            result[kind] = _summarise(rows, args.warmup) | {"wall_s": time.perf_counter() - t0}
    print(f"{'phase':14s}" + "".join(f"{k:>10s}" for k in result) + "".join(
        f"{k + '/plain':>12s}" for k in result if k != "plain"))
    for p in PHASES:
        line = f"{p:14s}" + "".join(f"{result[k][p]:10.3f}" for k in result)
        if "plain" in result:
            base = result["plain"][p]
            line += "".join(f"{(result[k][p] / base if base else float('nan')):12.2f}" for k in result if k != "plain")
        print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result
