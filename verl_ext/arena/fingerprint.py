"""The base model's fingerprint: a hash of its weights, recorded in every run JSON, so that results of
two bases are never mixed.

The base's build settings (``hpt_base.json``) do not identify it: the same settings built on another
machine give other weights (float reduction order differs; the rare warm-up level is sensitive to it,
see configs/arena/cpu.yaml's ``threads``), and runs trained from them are not comparable. The
fingerprint hashes the tensors themselves, independent of the folder's file names, sharding, format
(safetensors or ``pytorch_model*.bin``) and metadata: two folders share it iff they store the same
tensors under the same names, bit for bit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# what a run JSON without ``base_fingerprint`` (written before fingerprints existed) counts as
UNKNOWN = "unknown"


def base_fingerprint(path: Path) -> str:
    """'sha256:<hex>' over a Hugging Face model folder's stored tensors, sorted by name: each
    tensor's name, dtype, shape and raw bytes (C order, CPU). Tied weights count as stored: a
    folder that stores one copy and one that stores both hash differently. Loads the whole model
    into CPU memory (the arena's bases are small)."""
    import torch
    from safetensors.torch import load_file

    folder = Path(path)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{folder}: no weights to fingerprint (no *.safetensors, no pytorch_model*.bin); "
                                f"is it a Hugging Face model folder?")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        part = load_file(f) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu", weights_only=True)
        for name, t in part.items():
            if name in tensors:
                raise ValueError(f"{folder}: tensor {name!r} is stored twice (again in {f.name}); "
                                 f"which copy is the model's is ambiguous")
            tensors[name] = t
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        # name, dtype and shape fix the byte count that follows, so the stream parses one way only
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        # raw bytes of any dtype (bfloat16 has no numpy type): a flat uint8 view, (numel * itemsize,)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def check_one_base(runs: list[tuple[Path, dict]], where: Path, shown: int = 3) -> str:
    """The one ``base_fingerprint`` that all ``(path, run JSON)`` pairs carry (``UNKNOWN`` for runs
    written before fingerprints); stops naming the files per fingerprint (the first ``shown`` of
    each, relative to ``where``) when they carry more than one. Runs without a fingerprint mixed
    with fingerprinted ones are refused too: nothing shows they came from the same base."""
    by_fp: dict[str, list[Path]] = {}
    for p, r in runs:
        by_fp.setdefault(r.get("base_fingerprint") or UNKNOWN, []).append(p)
    if len(by_fp) <= 1:
        return next(iter(by_fp), UNKNOWN)

    def files(paths: list[Path]) -> str:
        names = [str(p.relative_to(where)) if p.is_relative_to(where) else str(p) for p in paths[:shown]]
        more = f", and {len(paths) - shown} more" if len(paths) > shown else ""
        return ", ".join(names) + more

    listing = "; ".join(f"{fp}{' (no base_fingerprint: written before fingerprints)' if fp == UNKNOWN else ''}: "
                        f"{len(paths)} runs ({files(paths)})" for fp, paths in sorted(by_fp.items()))
    raise SystemExit(f"{where}: the runs come from {len(by_fp)} bases (base_fingerprint): {listing}. Results of two "
                     f"bases are never mixed: move one base's runs away, or report each into its own --out")
