"""The notebooks run headless under nbclient, offline: the DataFrame tools walkthrough with a
scripted model (the quickstart runs through its script, in test_quickstart.py)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from kernel_harness import ROOT, kernel_env, kernel_manager
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOKS = ROOT / "notebooks"


def cell_output(nb, first_line: str) -> list[dict]:
    """The outputs of the first code cell starting with ``first_line``."""
    return next(
        c.outputs for c in nb.cells if c.cell_type == "code" and c.source.startswith(first_line)
    )


def text_of(outputs: list[dict]) -> str:
    parts = []
    for output in outputs:
        if output["output_type"] == "stream":
            parts.append(output["text"])
        else:
            data = output.get("data", {})
            parts.append(data.get("text/markdown") or data.get("text/plain", ""))
    return "\n".join(parts)


def execute(name: str, tmp_path: Path):
    """Run notebooks/``name`` headless in a fresh kernel; fail on any error output."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb,
        km=kernel_manager(tmp_path / "specs"),
        timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=kernel_env(tmp_path / ".crush"))
    errors = [o for c in nb.cells for o in c.get("outputs", ()) if o["output_type"] == "error"]
    assert not errors, errors
    return nb


def test_dataframe_tools_walkthrough_executes_headless(tmp_path: Path):
    nb = execute("dataframe-tools.ipynb", tmp_path)
    answer = text_of(cell_output(nb, "%%crush --new -s prices"))
    assert "· done ·" in answer and "two in Lyon" in answer

    # The real tools ran on the real DataFrame, and the transcript keeps their results.
    transcript = text_of(cell_output(nb, "for message in crush.store.list_messages"))
    assert "price: float64, 3 null" in transcript  # variables described `sales`
    assert "Lyon    2" in transcript and "Nice    1" in transcript  # python counted

    # Once python is no longer allowed, the headless run denies it: `sales` survives.
    denied = text_of(cell_output(nb, "last = crush.store.list_messages"))
    assert "canceled - Permission denied for python: " in denied
    assert "sales is still here: True" in denied
