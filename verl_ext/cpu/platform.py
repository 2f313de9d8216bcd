"""A ``cpu`` platform for verl's platform registry.

Why it is needed: verl 0.9.1 registers only ``nvidia``, ``huawei`` (NPU) and ``amd`` platforms
(``verl/plugin/platform``) and, when none is detected, falls back to ``nvidia``: every
``get_device_name()`` then answers ``"cuda"`` and the FSDP engine tries to put the model on a
GPU that does not exist. Registering a ``cpu`` platform (selected with ``VERL_PLATFORM=cpu``)
makes verl's own FSDP engine, worker and trainer run unchanged on a CPU-only machine.

The platform is never auto-detected: :meth:`PlatformCPU.is_platform_available` answers False, so
installing this package does not change anything on GPU machines. ``recipe.hpt.main_hpt`` sets
``VERL_PLATFORM=cpu`` when ``trainer.device=cpu``. verl's process-group set-up also needs a gloo
backend on CPU; that is a patch, not a registration: ``verl_ext.verl_patches.patch_gloo_process_group``.
"""

from __future__ import annotations

import logging
import os
import random
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, Optional

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

logger = logging.getLogger(__name__)


def _noop(*args, **kwargs):
    return None


def _zero(*args, **kwargs):
    return 0


def _host_memory_info(*args, **kwargs) -> tuple[int, int]:
    """(free, total) bytes of host memory, as ``torch.cuda.mem_get_info`` answers for a GPU."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        avail = os.sysconf("SC_AVPHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
        return avail * size, pages * size
    except (ValueError, OSError):  # pragma: no cover - non-POSIX
        return 0, 0


def _cpu_device_module() -> SimpleNamespace:
    """The subset of the ``torch.cuda`` API that verl calls through ``get_torch_device()``.

    ``torch.cpu`` lacks most of it (``max_memory_allocated``, ``mem_get_info``, ``manual_seed``,
    ``get_rng_state`` ...), so verl's engine would raise AttributeError on CPU. Memory queries
    answer 0 (verl only logs them); RNG calls go to the CPU generator.
    """
    return SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 1,
        current_device=lambda: "cpu",
        set_device=_noop,
        synchronize=_noop,
        empty_cache=_noop,
        reset_peak_memory_stats=_noop,
        max_memory_allocated=_zero,
        max_memory_reserved=_zero,
        memory_allocated=_zero,
        memory_reserved=_zero,
        mem_get_info=_host_memory_info,
        manual_seed=torch.manual_seed,
        manual_seed_all=torch.manual_seed,
        seed=torch.seed,
        get_rng_state=torch.get_rng_state,
        set_rng_state=torch.set_rng_state,
        get_rng_state_all=lambda: [torch.get_rng_state()],
        set_rng_state_all=lambda states: torch.set_rng_state(states[0]),
        memory=SimpleNamespace(_set_allocator_settings=_noop),
        Stream=None,
        current_stream=_noop,
        Event=None,
        is_initialized=lambda: True,
        get_device_name=lambda *a, **k: "cpu",
        get_device_properties=lambda *a, **k: SimpleNamespace(name="cpu", total_memory=_host_memory_info()[1]),
    )


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """verl platform for plain CPUs: device ``cpu``, collectives over gloo.

    Ray still schedules verl's workers on the resource named by :meth:`ray_resource_name`
    (``GPU``): verl's ``ResourcePoolManager`` hard-codes GPU placement groups, so a CPU run starts
    Ray with logical GPUs (``ray_kwargs.ray_init.num_gpus``), one per worker process.
    """

    _device_module = _cpu_device_module()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self):
        return self._device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check=False) -> bool:
        # Only chosen explicitly (VERL_PLATFORM=cpu): never steal auto-detection from a GPU.
        return False

    def current_device(self) -> str:
        # verl uses this as a device argument (`.to(get_device_id())`, `torch.device(...)`); an
        # int would mean cuda:<int>, so answer the device string instead.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        random.seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        self.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets CUDA_VISIBLE_DEVICES for its logical GPUs; nothing reads it on CPU.
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def cpu_platform_selected() -> bool:
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu"
