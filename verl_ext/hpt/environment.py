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
"""

from __future__ import annotations

import importlib.util

FLASH_ATTN = "flash_attention_2"
FIX = ("Either install it into this environment (`pip install flash-attn --no-build-isolation`, built "
       "against the installed torch/CUDA), or run without it: "
       "`+actor_rollout_ref.model.override_config.attn_implementation=sdpa "
       "actor_rollout_ref.model.use_remove_padding=false` (slower, same results).")


def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def check_attention_implementation(config) -> None:
    """Raise ValueError naming the keys and the fix when the attention setup needs flash_attn
    and it is not importable. Does nothing with ``trainer.device=cpu``."""
    if str(config.trainer.get("device", "cuda")) == "cpu":
        return
    model = config.actor_rollout_ref.model
    attn = str((model.get("override_config", None) or {}).get("attn_implementation", FLASH_ATTN))
    remove_padding = bool(model.get("use_remove_padding", False))
    if _flash_attn_installed():
        return
    if attn == FLASH_ATTN:
        raise ValueError(
            "actor_rollout_ref.model.override_config.attn_implementation is flash_attention_2 (verl's default "
            f"when unset), but the flash_attn package is not installed. {FIX}")
    if remove_padding:
        raise ValueError(
            "actor_rollout_ref.model.use_remove_padding=true needs the flash_attn package on GPU (verl unpads "
            f"with flash_attn.bert_padding), but it is not installed. {FIX}")
