#!/usr/bin/env bash
# The quickstart, end to end: set up .venv, run notebooks/quickstart.ipynb headless, and say
# where the executed notebook is.
#
# Offline it talks to a replay of recorded real provider streams (the widget says so). With
# OPENAI_API_KEY or ANTHROPIC_API_KEY set, or CRUSH_MODEL naming a local OpenAI-compatible
# server (e.g. CRUSH_MODEL=ollama:llama3.2), the same notebook talks to that model.
#
# Usage: bash scripts/quickstart.sh [OUTPUT.ipynb]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-notebooks/quickstart.out.ipynb}
bash scripts/setup.sh quickstart
# Unless CRUSH_DATA_DIR says otherwise, each run's transcripts go to a fresh store beside
# the output, not into the notebook folder's own .crush/.
if [ -z "${CRUSH_DATA_DIR:-}" ]; then
  CRUSH_DATA_DIR="$(cd "$(dirname "$out")" && pwd)/.crush-quickstart"
  rm -rf "$CRUSH_DATA_DIR"
  export CRUSH_DATA_DIR
fi
.venv/bin/python - "$out" <<'PY'
import json
import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

out = Path(sys.argv[1]).resolve()
# Run the notebook on this venv's Python whatever "python3" kernelspecs the machine has:
# a throwaway kernelspec first on JUPYTER_PATH wins over every installed one.
specs = tempfile.TemporaryDirectory(prefix="crush-quickstart-")
spec = Path(specs.name) / "kernels" / "python3"
spec.mkdir(parents=True)
spec.joinpath("kernel.json").write_text(json.dumps({
    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "Python 3 (jupyter-crush)",
    "language": "python",
}))
os.environ["JUPYTER_PATH"] = os.pathsep.join(
    p for p in (specs.name, os.environ.get("JUPYTER_PATH", "")) if p
)
nb = nbformat.read("notebooks/quickstart.ipynb", as_version=4)
client = NotebookClient(
    nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": "notebooks"}}
)
try:
    client.execute()
finally:
    nbformat.write(nb, out)
    specs.cleanup()
model = next(
    (o.get("text", "") for c in nb.cells if c.source.strip() == "%crush model"
     for o in c.get("outputs", ())),
    "",
).strip()
print(f"Executed notebook: {out}")
print(f"Model: {model}" + ("  (a replay of a recorded real stream)" if model.startswith("replay:") else ""))
print(f"Transcripts: {os.environ['CRUSH_DATA_DIR']}")
PY
