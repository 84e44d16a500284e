"""Undo in a real JupyterLab 4 and Notebook 7 page: a turn edits a cell (accepted in its
diff), inserts a cell and changes a variable; its run view ends with "changed: 2 cells, 1
variable — Undo", and the Undo button puts the notebook and the kernel back: the inserted
cell is gone, the edited cell holds its old source, the variable its old value. The model is
a ScriptedModel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_lab import Notebook

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SETUP = """\
%load_ext jupyter_crush
from jupyter_crush.magics import current
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall
total = 42
crush = current()
crush.use_model(ScriptedModel([Reply(tool_calls=[
    ToolCall("edit_cell", {{"cell_id": {target!r}, "search": "6 * 7", "replace": "45"}}),
    ToolCall("insert_cell", {{"code": "print('from the agent')"}}),
    ToolCall("python", {{"code": "total = 45"}}),
]), "Over to you."]))
print("setup done")"""

ORIGINAL = "total = 6 * 7\nprint(total)"


@pytest.mark.parametrize("front_end", ["lab", "notebook7"])
def test_undo_button_removes_the_inserted_cell_and_reverts_the_accepted_edit(
    page, lab_server, front_end
):
    url = lab_server.lab_url if front_end == "lab" else lab_server.notebook7_url
    name = lab_server.write_notebook(["", ORIGINAL, "%%crush --yolo --fresh\nimprove it", "total"])
    path: Path = lab_server.root / name
    document = json.loads(path.read_text())
    target = document["cells"][1]["id"]
    document["cells"][0]["source"] = SETUP.format(target=target)
    path.write_text(json.dumps(document))
    notebook = Notebook(page)
    notebook.open(url(name), cells=4)
    notebook.run(0)
    notebook.wait_output(0, r"setup done")
    notebook.run(2)
    diff = notebook.cells.nth(1).locator(".jp-crush-Edit")
    diff.wait_for(timeout=60_000)
    diff.get_by_role("button", name="Accept").click()
    notebook.wait_output(2, r"Over to you")
    summary = notebook.cells.nth(2).locator(".crush-changes")
    summary.wait_for(timeout=30_000)
    assert summary.inner_text().startswith("changed: 2 cells, 1 variable")
    assert notebook.cells.count() == 5  # the inserted cell, below the prompt's
    assert "from the agent" in notebook.cells.nth(3).locator(".jp-InputArea").inner_text()
    notebook.screenshot(f"undo-summary-{front_end}")

    summary.get_by_role("button", name="Undo").click()
    note = notebook.cells.nth(2).locator(".crush-undo-note")
    note.wait_for(timeout=30_000)
    text = note.inner_text()
    assert "cells removed (the turn inserted them): cell " in text
    assert "cell edits reverted: cell " in text
    assert "variables rebound to their previous values: total" in text
    assert notebook.cells.count() == 4
    assert "6 * 7" in notebook.cells.nth(1).locator(".jp-InputArea").inner_text()
    notebook.run(3)
    assert notebook.wait_output(3, r"\d+").strip().endswith("42")
