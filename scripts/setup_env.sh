#!/usr/bin/env bash
# Create (once) the project's virtual environment in .venv and install hpt-verl into it.
# Idempotent: a finished install is recorded in .venv/.hpt-installed with the setup.py hash.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.hpt-installed
HASH=$(sha256sum setup.py | cut -c1-16)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
  exit 0
fi
echo "[setup] creating .venv and installing hpt-verl (CPU torch 2.13.0 + verl 0.9.1; ~2 minutes)" >&2
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
# torch first and pinned: any looser requirement would pull a multi-GB CUDA build.
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
echo "$HASH" > "$STAMP"
