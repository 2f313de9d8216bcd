#!/usr/bin/env bash
# A GPU user's first run: a few HPT steps of a small model on one GPU, then PASS/FAIL per check.
# MODEL=<hub id or folder> (default Qwen/Qwen2.5-0.5B-Instruct); extra Hydra overrides pass through.
# Needs `pip install -e .[gpu]` and flash-attn (README, "GPU runs"). See scripts/gpu_smoke.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
exec "$PY" scripts/gpu_smoke.py "$@"
