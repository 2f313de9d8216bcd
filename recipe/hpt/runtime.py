"""Process-level set-up before Ray starts: plugin loading and the CPU device path.

verl's registries are per process, so ``verl_ext.plugins`` must be imported in the driver *and*
in every Ray worker: it is added to ``VERL_USE_EXTERNAL_MODULES`` both in this process and in the
Ray runtime environment (workers inherit only what the runtime env carries).

With ``trainer.device=cpu`` it also selects verl_ext's CPU platform (``VERL_PLATFORM=cpu``) and
``VERL_ENGINE_DEVICE=cuda``: verl registers its FSDP engine only under the device names cuda/npu
(``workers/engine/fsdp/transformer_impl.py``) and that variable overrides the lookup key; the
engine itself then runs on whatever ``get_device_name()`` answers (cpu).
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf, open_dict

PLUGIN_MODULE = "verl_ext.plugins"


def _add_module(value: str | None, module: str) -> str:
    mods = [m for m in (value or "").split(",") if m]
    if module not in mods:
        mods.append(module)
    return ",".join(mods)


# Set in the launching shell, these must reach the TaskRunner and workers too.
FORWARDED_ENV = ("VERL_FILE_LOGGER_PATH", "VERL_FILE_LOGGER_ROOT", "HPT_HF_ROLLOUT_THREADS", "HPT_CPU_WORKER_THREADS",
                 "HF_HOME",
                 "HPT_REWARD_WORKERS", "VLLM_CPU_KVCACHE_SPACE",
                 "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU")


def runtime_env_vars(config: DictConfig) -> dict[str, str]:
    env = {"VERL_USE_EXTERNAL_MODULES": _add_module(os.environ.get("VERL_USE_EXTERNAL_MODULES"), PLUGIN_MODULE)}
    env.update({k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)})
    if str(config.trainer.get("device", "cuda")) == "cpu":
        env.update({
            "VERL_PLATFORM": "cpu",
            "VERL_ENGINE_DEVICE": "cuda",
            "TOKENIZERS_PARALLELISM": "false",
            # A CPU run has nothing to download: fail fast instead of waiting on the network.
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        })
        if str(config.actor_rollout_ref.rollout.get("name", "")) == "vllm":
            # vLLM's CPU backend reserves its KV cache in host memory (GiB; its default of 4 per
            # engine is far more than a test model needs on a 24 GiB machine).
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def prepare_runtime(config: DictConfig) -> None:
    """Set the env vars here and in ``ray_kwargs.ray_init.runtime_env.env_vars``; load plugins."""
    env = runtime_env_vars(config)
    os.environ.update(env)
    with open_dict(config):
        ray_init = config.ray_kwargs.setdefault("ray_init", {})
        runtime_env = ray_init.get("runtime_env") or OmegaConf.create({})
        ray_init["runtime_env"] = runtime_env
        env_vars = runtime_env.get("env_vars") or OmegaConf.create({})
        for k, v in env.items():
            env_vars[k] = v
        for k in list(env_vars.keys()):  # Ray rejects non-string env values (e.g. a Hydra int)
            env_vars[k] = str(env_vars[k])
        runtime_env["env_vars"] = env_vars

    import importlib

    importlib.import_module(PLUGIN_MODULE)
    if env.get("VERL_PLATFORM") == "cpu":
        from verl.plugin.platform.platform_manager import get_platform, set_platform

        from verl_ext.cpu.platform import PlatformCPU
        from verl_ext.verl_patches import patch_gloo_process_group

        if get_platform().device_name != "cpu":
            # verl resolved its platform at import time, before the config was known.
            set_platform(PlatformCPU())
        patch_gloo_process_group()
