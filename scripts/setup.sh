#!/usr/bin/env bash
# Creates .venv beside the repo (if missing) and installs jupyter-crush into it, editable.
# Usage: bash scripts/setup.sh [EXTRAS]     e.g. bash scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install --quiet -e ".[$extras]"
else
  .venv/bin/python -m pip install --quiet -e .
fi
