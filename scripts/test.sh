#!/usr/bin/env bash
# The project's test command (README, CI): set up the environment, lint, type-check, run the whole test suite.
# Shared resources are read from $FACECLOAK_SHARED (default ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export FACECLOAK_SHARED=${FACECLOAK_SHARED:-$(cd .. && pwd)/shared}
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled
PY=.venv/bin/python
echo "== ruff"
$PY -m ruff check src tests scripts
$PY -m ruff format --check src tests scripts
echo "== mypy"
$PY -m mypy
echo "== pytest"
$PY -m pytest -q --timeout 900 "$@"
