#!/usr/bin/env bash
# The quickstart: set up .venv, run notebooks/quickstart.ipynb headless, and print what each
# step showed, what was recorded and where to look. With --lab, start JupyterLab on
# 127.0.0.1 with the quickstart open instead (Ctrl+C stops it).
#
# Offline the notebook's prompts get the real recorded answers to those prompts (replay:auto;
# each status line names the recorded prompt it answers). With OPENAI_API_KEY or
# ANTHROPIC_API_KEY set, or CRUSH_MODEL naming a model (e.g. CRUSH_MODEL=ollama:llama3.2 for
# a local server), the same notebook talks to that model; the first line printed says which.
#
# Usage: bash scripts/quickstart.sh [--no-setup] [OUTPUT.ipynb]
#        bash scripts/quickstart.sh [--no-setup] --lab [JUPYTER LAB OPTIONS, e.g. --no-browser]
# --no-setup uses .venv as it is (skips `bash scripts/setup.sh quickstart`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--no-setup" ]; then
  shift
else
  bash scripts/setup.sh quickstart
fi
if [ "${1:-}" = "--lab" ]; then
  exec .venv/bin/python scripts/quickstart.py "$@"
fi
out=${1:-notebooks/quickstart.out.ipynb}
# Unless CRUSH_DATA_DIR says otherwise, each run's transcripts go to a fresh store beside
# the output, not into the notebook folder's own .crush/.
if [ -z "${CRUSH_DATA_DIR:-}" ]; then
  CRUSH_DATA_DIR="$(cd "$(dirname "$out")" && pwd)/.crush-quickstart"
  rm -rf "$CRUSH_DATA_DIR"
  export CRUSH_DATA_DIR
fi
exec .venv/bin/python scripts/quickstart.py "$out"
