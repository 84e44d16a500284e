"""The delta view's page module (jupyter_crush/view/delta_view.js) under Node, for the tests
that check the page's state against the kernel's."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

MODULE = Path(__file__).resolve().parents[2] / "jupyter_crush" / "view" / "delta_view.js"


def run_with_page_module(work: Path, script: str, *args: str) -> Any:
    """Runs ``script``, an ES module importing ``./delta_view.mjs``, with Node in the folder
    ``work`` and returns what it prints, read as JSON; skips the test without Node."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the labextension build needs it too)")
    # The module is an ES module named .js for anywidget; Node wants .mjs to import it.
    (work / "delta_view.mjs").write_text(MODULE.read_text())
    (work / "script.mjs").write_text(script)
    out = subprocess.run(
        [node, str(work / "script.mjs"), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)
