#!/usr/bin/env bash
# The README's main job: HPT on the embedded default task on CPU (see scripts/run_default.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python scripts/run_default.py "$@"
