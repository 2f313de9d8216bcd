"""Make a long-context copy of a Qwen2.5-Math checkpoint: rope_theta 40000, 16384 positions.

The HPT release (following LUFFY) trains Qwen2.5-Math-7B with config.json edited by hand to
``rope_theta=40000`` and ``max_position_embeddings=16384``: the stock config (rope_theta 10000,
4096 positions) cannot hold a 1024-token prompt plus an 8192-token response.

Why a copy of config.json and not ``actor_rollout_ref.model.override_config``: with transformers
5.x the rotary embedding reads ``config.rope_parameters["rope_theta"]``; verl's
``update_model_config`` only ``setattr``s ``rope_theta`` (ignored by the model) and cannot update a
key inside the ``rope_parameters`` dict (it recurses with ``setattr`` on a dict and fails). The vLLM
rollout reads config.json on its own as well. Editing config.json changes both the FSDP actor and
vLLM consistently.

    python3 scripts/train/patch_rope.py --src /models/Qwen2.5-Math-7B --dst /models/Qwen2.5-Math-7B-rope40k
    python3 scripts/train/patch_rope.py --src Qwen/Qwen2.5-Math-7B --dst /models/Qwen2.5-Math-7B-rope40k

--src is a local model folder or a Hugging Face hub id. An id is resolved through the local hub
cache (``huggingface_hub.snapshot_download``: it downloads only what the cache lacks, and with
``HF_HUB_OFFLINE=1`` answers from the cache alone), because the README's launch line gives
``MODEL=Qwen/Qwen2.5-Math-7B`` and verl itself accepts hub ids: the copy needs real files to link to.
The copy holds symlinks to every file of the source folder except config.json, which is rewritten.
Running it again on an up-to-date copy does nothing. --dst must be visible at the same path on every
node (with an id, the hub cache it links into must be too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def patched_config(cfg: dict, rope_theta: float, max_positions: int) -> dict:
    out = dict(cfg)
    out["rope_theta"] = rope_theta
    out["max_position_embeddings"] = max_positions
    for key in ("rope_parameters", "rope_scaling"):
        sub = out.get(key)
        if isinstance(sub, dict) and "rope_theta" in sub:
            out[key] = dict(sub, rope_theta=rope_theta)
    return out


def _is_repo_id(src: str) -> bool:
    """Whether ``src`` can name a hub repository (``name`` or ``org/name``); a path such as
    ``/models/x`` or ``./x`` cannot."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(src)
    except HFValidationError:
        return False
    return not src.startswith((".", "~"))


def resolve_source(src: str) -> str:
    """The local folder of ``src``: ``src`` itself when it is a folder, else the hub cache's snapshot
    of the repository ``src`` names (downloaded if the cache lacks it and downloads are allowed).
    Raises FileNotFoundError naming the id and the download command when neither works."""
    if os.path.isdir(src):
        return src
    if not _is_repo_id(src):
        raise FileNotFoundError(f"--src {src}: no such folder, and not a hub id (org/name) either; give a local "
                                f"model folder with config.json, or a Hugging Face model id")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=src)
    except Exception as e:  # offline and not cached, no network, unknown or gated repo: all mean "get it first"
        raise FileNotFoundError(
            f"--src {src} is not a local folder, and the Hugging Face hub id {src!r} could not be resolved "
            f"({type(e).__name__}: {e}). Download it first where the hub is reachable: `hf download {src}` "
            f"(older huggingface_hub: `huggingface-cli download {src}`) into this machine's hub cache "
            f"(HF_HUB_CACHE / HF_HOME), or `hf download {src} --local-dir <folder>` and pass that folder as "
            f"--src (MODEL=<folder> for the launch scripts).") from e


def patch(src: str, dst: str, rope_theta: float = 40000.0, max_positions: int = 16384) -> str:
    src, dst = os.path.abspath(resolve_source(src)), os.path.abspath(dst)
    cfg_path = os.path.join(src, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: --src must be a model folder (or hub id) with config.json")
    if src == dst:
        raise ValueError("--dst must differ from --src (the source checkpoint is left untouched)")
    with open(cfg_path) as f:
        cfg = json.load(f)
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        if name == "config.json":
            continue
        link = os.path.join(dst, name)
        if os.path.lexists(link):
            continue
        os.symlink(os.path.join(src, name), link)
    out_path = os.path.join(dst, "config.json")
    new = patched_config(cfg, rope_theta, max_positions)
    if os.path.islink(out_path):
        os.unlink(out_path)
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(new, f, indent=2)
    os.replace(tmp, out_path)
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="local model folder (with config.json) or Hugging Face hub id")
    ap.add_argument("--dst", required=True, help="output folder (symlinks + patched config.json)")
    ap.add_argument("--rope-theta", type=float, default=40000.0)
    ap.add_argument("--max-position-embeddings", type=int, default=16384)
    args = ap.parse_args(argv)
    try:
        dst = patch(args.src, args.dst, args.rope_theta, args.max_position_embeddings)
    except (FileNotFoundError, ValueError) as e:
        print(f"patch_rope: error: {e}", file=sys.stderr)
        return 2
    print(f"patched copy: {dst} (rope_theta={args.rope_theta}, max_position_embeddings={args.max_position_embeddings})")
    return 0

