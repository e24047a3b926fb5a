#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with everything facecloak needs.
# Idempotent: a second run only checks. Works offline from the package registries alone.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FACECLOAK_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
stamp="$VENV/.facecloak-installed"
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
# torch and torchvision first, pinned together: a mismatched pair fails to import.
"${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1" || "${PIP[@]}" "torch>=2.4" "torchvision>=0.19"
"${PIP[@]}" -e ".[dev,eval]"
# MTCNN weights ship in facenet-pytorch, whose metadata pins an old torch: install it without its pins.
"${PIP[@]}" --no-deps "facenet-pytorch==2.6.0"
echo "$want" > "$stamp"
