"""The agent edits and runs the user's cells in a real JupyterLab 4 page: an ``edit_cell``
shows as a diff inside the cell until the user accepts (the saved ``.ipynb`` has the new
source and its provenance) or rejects it (the cell is unchanged and the model reads the
user's words); ``run_cell`` runs a cell that raises as Shift+Enter would and the model reads
its traceback. The model is a ScriptedModel; the test reads back what it was sent."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_lab import Notebook

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SETUP = """\
%load_ext jupyter_crush
from jupyter_crush.magics import current
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall
crush = current()
model = ScriptedModel([Reply(tool_calls=[ToolCall({tool!r}, {args!r})]), "Over to you."])
crush.use_model(model)
print("setup done")"""

SESSION = 'print("session:", crush.current_session_id)'

TOLD = """\
print("session:", crush.current_session_id)
print("told:", model.requests[1].messages[-1].tool_results[0].content)"""

ORIGINAL = "total = 6 * 7\nprint(total)"


def cell_ids(path: Path) -> list[str]:
    return [cell["id"] for cell in json.loads(path.read_text())["cells"]]


def save_and_read(notebook: Notebook, path: Path, timeout: float = 30) -> dict:
    """Save the notebook; the file once it holds the TOLD cell's output (the page's save)."""
    notebook.cells.nth(0).locator(".jp-InputPrompt").click()
    notebook.page.keyboard.press("ControlOrMeta+s")
    deadline = time.monotonic() + timeout
    while not json.loads(path.read_text())["cells"][3]["outputs"]:
        assert time.monotonic() < deadline, f"{path.name} was not saved"
        time.sleep(0.2)
    return json.loads(path.read_text())


def open_edit(
    page, lab_server, args: dict, front_end: str = "lab", run_view: str = "delta"
) -> tuple[Notebook, Path, str]:
    """A notebook whose prompt's model edits its second cell; the diff is shown."""
    name = lab_server.write_notebook(["", ORIGINAL, "%%crush --yolo --fresh\nimprove it", TOLD])
    path = lab_server.root / name
    target = cell_ids(path)[1]
    setup = SETUP.format(tool="edit_cell", args={"cell_id": target, **args})
    setup = setup.replace("\n", f"\n%config CrushConfig.run_view = {run_view!r}\n", 1)
    document = json.loads(path.read_text())
    document["cells"][0]["source"] = setup
    path.write_text(json.dumps(document))
    notebook = Notebook(page)
    url = lab_server.lab_url if front_end == "lab" else lab_server.notebook7_url
    notebook.open(url(name), cells=4)
    notebook.run(0)
    notebook.wait_output(0, r"setup done")
    notebook.run(2)
    diff = notebook.cells.nth(1).locator(".jp-crush-Edit")
    diff.wait_for(timeout=60_000)
    return notebook, path, target


@pytest.mark.parametrize("where", ["cell", "run view", "widgets view"])
def test_an_accepted_edit_lands_in_the_saved_notebook_with_its_provenance(page, lab_server, where):
    args = {"search": "6 * 7", "replace": "sum(range(10))"}
    run_view = "widgets" if where == "widgets view" else "delta"
    notebook, path, target = open_edit(page, lab_server, args, run_view=run_view)
    diff = notebook.cells.nth(1).locator(".jp-crush-Edit")
    # The diff is in the cell: the old line struck out, the new one added; the document,
    # and so the cell's own editor, still holds the old source.
    assert diff.locator(".cm-deletedChunk").inner_text().strip() == "total = 6 * 7"
    assert "sum(range(10))" in diff.locator(".cm-changedLine").first.inner_text()
    # The run view lists the edit with Accept all (the ipywidgets view too).
    notebook.wait_output(2, f"1 edit waits for your review in cell {target}")
    pending = notebook.output(2)
    notebook.screenshot(f"edit-cell-diff-{where.replace(' ', '-')}")
    if where == "cell":
        diff.get_by_role("button", name="Accept").click()
    else:
        pending.get_by_role("button", name="Accept all").click()
    notebook.wait_output(2, r"Over to you")
    notebook.wait_output(2, r"done")
    assert notebook.cells.nth(1).locator(".jp-crush-Edit").count() == 0
    assert "sum(range(10))" in notebook.cells.nth(1).locator(".jp-InputArea").inner_text()
    notebook.run(3)
    told = notebook.wait_output(3, r"told:")
    session_id = told.split("session:", 1)[1].split()[0]
    assert f"The user accepted the edit: cell {target} now holds the new source" in told

    saved = save_and_read(notebook, path)
    edited = saved["cells"][1]
    assert "".join(edited["source"]) == "total = sum(range(10))\nprint(total)"
    origin = edited["metadata"]["jupyter_crush"]
    assert origin["session"] == session_id
    assert origin["model"] == "scripted:scripted-model"
    assert origin["tool_call"] == "call_0_0"
    assert len(origin["message"]) == 32


@pytest.mark.parametrize("front_end", ["lab", "notebook7"])
def test_a_rejected_edit_leaves_the_cell_and_tells_the_model_why(page, lab_server, front_end):
    notebook, path, target = open_edit(page, lab_server, {"source": "total = 0\n"}, front_end)
    diff = notebook.cells.nth(1).locator(".jp-crush-Edit")
    diff.locator("input").fill("zero is wrong")
    diff.get_by_role("button", name="Reject").click()
    notebook.wait_output(2, r"Over to you")
    notebook.wait_output(2, r"done")
    assert notebook.cells.nth(1).locator(".jp-InputArea").inner_text().count("6 * 7") == 1
    notebook.run(3)
    told = notebook.wait_output(3, r"told:")
    assert f'rejected the edit; cell {target} is unchanged. They said: "zero is wrong"' in told

    saved = save_and_read(notebook, path)
    assert "".join(saved["cells"][1]["source"]) == ORIGINAL
    assert "jupyter_crush" not in saved["cells"][1]["metadata"]


@pytest.mark.parametrize("front_end", ["lab", "notebook7"])
def test_run_cell_runs_a_cell_that_raises_as_shift_enter_would(page, lab_server, front_end):
    name = lab_server.write_notebook(
        ["", "print('before')\n1 / 0", "%%crush --yolo --fresh\nrun it", TOLD]
    )
    path = lab_server.root / name
    target = cell_ids(path)[1]
    document = json.loads(path.read_text())
    document["cells"][0]["source"] = SETUP.format(tool="run_cell", args={"cell_id": target})
    path.write_text(json.dumps(document))
    notebook = Notebook(page)
    url = lab_server.lab_url if front_end == "lab" else lab_server.notebook7_url
    notebook.open(url(name), cells=4)
    notebook.run(0)
    notebook.wait_output(0, r"setup done")
    notebook.run(2)
    notebook.wait_output(2, r"Over to you")
    notebook.wait_output(2, r"done")
    # The cell ran in the notebook: its count, its output and its error are there.
    output = notebook.wait_output(1, r"ZeroDivisionError")
    assert "before" in output
    prompt = notebook.cells.nth(1).locator(".jp-InputPrompt").inner_text()
    assert prompt.strip() not in ("[ ]:", "[*]:", "")
    notebook.run(3)
    told = notebook.wait_output(3, r"told:")
    count = prompt.strip().strip("[]:")
    assert f"Cell {target} ran as [{count}], and raised an error:" in told
    assert "before" in told and "ZeroDivisionError" in told and "1 / 0" in told


BLOCK_SETUP = """\
%load_ext jupyter_crush
from jupyter_crush.magics import current
from jupyter_crush.testing import ScriptedModel
crush = current()
answer = "Try this:\\n\\n```python\\nprint('from the block')\\n```\\n\\n" + "word " * {words}
crush.use_model(ScriptedModel([answer], tokens_per_second={rate}))
print("setup done")"""


@pytest.mark.parametrize(
    ("answer", "front_end"),
    [("streaming", "lab"), ("finished", "lab"), ("finished", "notebook7")],
)
def test_insert_below_puts_a_code_block_of_the_answer_into_a_cell_with_provenance(
    page, lab_server, answer, front_end
):
    streaming = answer == "streaming"
    setup = BLOCK_SETUP.format(words=400 if streaming else 3, rate=40 if streaming else None)
    name = lab_server.write_notebook([setup, "%%crush --fresh\nshow me", SESSION])
    path = lab_server.root / name
    notebook = Notebook(page)
    url = lab_server.lab_url if front_end == "lab" else lab_server.notebook7_url
    notebook.open(url(name), cells=3)
    notebook.run(0)
    notebook.wait_output(0, r"setup done")
    notebook.run(1)
    if streaming:  # the run view's buttons, while the answer streams
        actions = notebook.output(1).locator(".crush-code-actions")
    else:  # the static answer's, rendered by the extension once the run is done
        notebook.wait_output(1, r"done")
        actions = notebook.output(1).locator(".jp-crush-CodeActions")
    actions.get_by_role("button", name="Insert below").click()
    assert actions.get_by_role("button", name="Copy").count() == 1
    notebook.cells.nth(3).wait_for()
    assert (
        notebook.cells.nth(2)
        .locator(".jp-InputArea")
        .inner_text()
        .strip()
        .endswith("print('from the block')")
    )
    if streaming:
        page.locator(".crush-stop").first.click()
        notebook.wait_output(1, r"canceled")
    notebook.run(3)
    session_id = notebook.wait_output(3, r"session:").split("session:", 1)[1].split()[0]

    notebook.cells.nth(0).locator(".jp-InputPrompt").click()
    page.keyboard.press("ControlOrMeta+s")
    deadline = time.monotonic() + 30
    while len(cells := json.loads(path.read_text())["cells"]) < 4 or not cells[3]["outputs"]:
        assert time.monotonic() < deadline, f"{name} was not saved"
        time.sleep(0.2)
    inserted = cells[2]
    assert "".join(inserted["source"]) == "print('from the block')"
    origin = inserted["metadata"]["jupyter_crush"]
    assert origin["session"] == session_id
    assert origin["model"] == "scripted:scripted-model"
    assert len(origin["message"]) == 32 and "tool_call" not in origin
    assert inserted["outputs"] == [] and inserted["execution_count"] is None
