#!/usr/bin/env bash
# Sets up .venv with the test extras, checks style, and runs the tests.
#   bash scripts/test.sh          quick tests (skips those marked slow)
#   bash scripts/test.sh --all    every test, slow ones (real kernels, crash loops, browser) too
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check jupyter_crush tests benchmarks scripts notebooks
.venv/bin/ruff format --check jupyter_crush tests benchmarks scripts notebooks
# The package's layers and no import circle (pyproject.toml, [tool.importlinter]).
.venv/bin/lint-imports
if [ "${1:-}" = "--all" ]; then
  shift
  exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -m "not slow" "$@"
