"""``%load_ext jupyter_crush`` imports what loading needs: no provider SDK, nor the agent, the
transcript store, the MCP client or the price table, which come when a cell first needs them
(their cost is timed by benchmarks/bench_load_ext.py). The public names still import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LOAD = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "jupyter_crush")
loaded = sorted(sys.modules)
shell.run_line_magic("crush", "help")
from jupyter_crush import (
    AcceptedRun, FinishReason, Message, SessionAgent, SessionAgentCall, TranscriptStore,
    history, sessions,
)
import jupyter_crush.testing
print(json.dumps({"loaded": loaded, "store": TranscriptStore.__module__,
                  "history": callable(history)}))
"""

# What loading must leave to the first cell that needs it.
NOT_AT_LOAD = [
    "openai",
    "anthropic",
    "jupyter_crush.agent.session",
    "jupyter_crush.store.transcript",
    "jupyter_crush.kernel.submit",
    "jupyter_crush.mcp.tools",
    "jupyter_crush.providers.prices",
    "tinydb",
]


def test_load_ext_imports_neither_an_sdk_nor_the_agent_nor_the_store(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CRUSH_DATA_DIR": str(tmp_path / "store")}
    done = subprocess.run(
        [sys.executable, "-c", LOAD], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [name for name in NOT_AT_LOAD if name in result["loaded"]] == []
    assert "jupyter_crush.magics" in result["loaded"]
    assert result["store"] == "jupyter_crush.store.transcript"
    assert result["history"]
