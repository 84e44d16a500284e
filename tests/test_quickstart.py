"""notebooks/quickstart.ipynb runs headless under nbclient, offline, against a replay."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from kernel_harness import ROOT, kernel_env, kernel_manager
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


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


def test_quickstart_executes_headless(tmp_path: Path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        km=kernel_manager(tmp_path / "specs"),
        timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=kernel_env(tmp_path / ".crush"))

    errors = [o for c in nb.cells for o in c.get("outputs", ()) if o["output_type"] == "error"]
    assert not errors, errors
    assert text_of(cell_output(nb, "%crush model")).startswith("replay:")

    # Headless cells wait for their answers, so Run-All sees the final, static answer.
    ask = text_of(cell_output(nb, "%%crush"))
    assert "replay of a recorded stream" in ask
    assert "· done ·" in ask

    # The stopped run shows as canceled in its own cell, though it ended during a later one.
    essay = cell_output(nb, "%%crush --new -s essay --no-wait -m $long_model")
    assert "· canceled" in text_of(essay)
    assert text_of(cell_output(nb, "await crush.last_view.wait()")) == "'canceled'"

    queued = text_of(cell_output(nb, "%%crush -s queue"))
    assert "· done ·" in queued

    transcript = text_of(cell_output(nb, "store = crush.store"))
    assert "Name three uses of a Python dict." in transcript
    assert "And three uses of a set." in transcript
    assert "end_turn" in transcript

    assert "'essay'" in text_of(cell_output(nb, "from tinydb import Query"))
    assert "essay" in text_of(cell_output(nb, "%crush sessions"))
