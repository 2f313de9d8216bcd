"""Start-up checks of the installed packages against the run's config (before Ray starts).

A setting that the environment cannot honour must fail here, with the fix, rather than minutes
later inside a Ray worker with a bare ImportError.

Attention: verl builds the model config with ``override_config.attn_implementation`` defaulting to
``flash_attention_2`` (``verl/workers/config/model.py``), and transformers raises ImportError for it
when ``flash_attn`` is missing. On CUDA, ``model.use_remove_padding=true`` (every GPU config here
sets it, as verl's examples do) unpads sequences with ``flash_attn.bert_padding``
(``verl/utils/attention_utils.py``), and its packed sequences are kept apart only by flash
attention's varlen kernel. ``pip install -e .[gpu]`` cannot provide flash-attn: PyPI carries only
its source, a long CUDA build. The CPU platform uses SDPA and verl's pure-torch unpadding.

Why the check imports flash_attn rather than asking whether it is installed: a wheel built for
another torch or CUDA is found (``importlib.util.find_spec``) but its compiled extension
``flash_attn_2_cuda`` fails to load (``ImportError: ... undefined symbol ...``), and that only
surfaced inside the workers. So :func:`flash_attn_import_error` imports what verl and transformers
import (the package, its extension, ``flash_attn.bert_padding``) and the error quotes the failure.

Ulysses sequence parallelism (``actor_rollout_ref.actor.ulysses_sequence_parallel_size`` > 1) has
no flash-free fallback: verl refuses it without ``use_remove_padding`` (``FSDPActorConfig.validate``
and the FSDP engine: "you must enable `use_remove_padding`"), and its all-to-all is inserted around
flash attention's forward only (``verl/models/transformers/monkey_patch.py``,
``_ulysses_flash_attention_forward``), so SDPA there would attend within each rank's slice of the
sequence. Without a working flash_attn such a run must go back to one rank per sequence.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Optional

FLASH_ATTN = "flash_attention_2"
# What verl and transformers import on GPU: the package (transformers' flash_attention_2 path), its
# compiled CUDA extension (imported by flash_attn.flash_attn_interface), and verl's unpadding helpers.
FLASH_ATTN_MODULES = ("flash_attn", "flash_attn_2_cuda", "flash_attn.bert_padding")
INSTALL = ("`pip install flash-attn --no-build-isolation` (built against the installed torch/CUDA; to replace "
           "a wheel built for another one add `--force-reinstall --no-cache-dir`)")
SDPA = ("`+actor_rollout_ref.model.override_config.attn_implementation=sdpa "
        "actor_rollout_ref.model.use_remove_padding=false`")
FIX = f"Either install it into this environment ({INSTALL}), or run without it: {SDPA} (slower, same results)."
ULYSSES_KEYS = ("actor_rollout_ref.actor.ulysses_sequence_parallel_size",
                "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size")


def _torch_build() -> str:
    try:
        import torch

        return f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    except Exception:  # the message is only a hint; never fail the check on it
        return "the installed torch"


def flash_attn_import_error() -> Optional[str]:
    """None when flash_attn imports as verl uses it; else why not, with the import's own error text."""
    if importlib.util.find_spec("flash_attn") is None:
        return "the flash_attn package is not installed"
    for name in FLASH_ATTN_MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # ImportError (undefined symbol), OSError (missing libcudart), RuntimeError
            return (f"flash_attn is installed but does not import: `import {name}` raised {type(e).__name__}: {e} "
                    f"(a wheel built for another torch/CUDA fails this way; this environment has {_torch_build()})")
    return None


def _select(config, dotted: str, default=None):
    node = config
    for key in dotted.split("."):
        if node is None or not hasattr(node, "get"):
            return default
        node = node.get(key, None)
    return default if node is None else node


def ulysses_size(config) -> tuple[int, str]:
    """The actor's Ulysses sequence-parallel size and the key that sets it (verl copies the deprecated
    ``actor.ulysses_sequence_parallel_size`` into ``actor.fsdp_config`` when it is > 1)."""
    sizes = [(int(_select(config, key, 1) or 1), key) for key in ULYSSES_KEYS]
    return max(sizes)


def _fix(config) -> str:
    sp, key = ulysses_size(config)
    if sp <= 1:
        return FIX
    return (f"{key}={sp} (Ulysses sequence parallelism) needs a working flash_attn: verl refuses it with "
            f"use_remove_padding=false, and its all-to-all runs inside flash attention's forward only, so the "
            f"flash-free fallback does not apply as it is. Either install flash-attn into this environment "
            f"({INSTALL}), or give up sequence parallelism as well: `{key}=1` together with {SDPA} (each sequence "
            f"then fits on one GPU; lower actor_rollout_ref.actor.ppo_max_token_len_per_gpu if memory runs out).")


def check_attention_implementation(config) -> None:
    """Raise ValueError naming the keys and the fix when the attention setup needs flash_attn
    and it does not import. Does nothing with ``trainer.device=cpu``."""
    if str(config.trainer.get("device", "cuda")) == "cpu":
        return
    model = config.actor_rollout_ref.model
    attn = str((model.get("override_config", None) or {}).get("attn_implementation", FLASH_ATTN))
    remove_padding = bool(model.get("use_remove_padding", False))
    sp, sp_key = ulysses_size(config)
    if sp > 1 and not attn.startswith("flash_attention"):
        raise ValueError(
            f"{sp_key}={sp} with actor_rollout_ref.model.override_config.attn_implementation={attn}: verl's Ulysses "
            f"all-to-all is inserted around flash attention's forward only, so {attn} would attend within each "
            f"rank's slice of the sequence. Use flash_attention_2 (verl's default) with a working flash_attn, or "
            f"`{sp_key}=1`.")
    if attn != FLASH_ATTN and not remove_padding:
        return  # nothing here imports flash_attn
    problem = flash_attn_import_error()
    if problem is None:
        return
    if attn == FLASH_ATTN:
        raise ValueError(
            "actor_rollout_ref.model.override_config.attn_implementation is flash_attention_2 (verl's default "
            f"when unset), but {problem}. {_fix(config)}")
    raise ValueError(
        "actor_rollout_ref.model.use_remove_padding=true needs flash_attn on GPU (verl unpads with "
        f"flash_attn.bert_padding), but {problem}. {_fix(config)}")
