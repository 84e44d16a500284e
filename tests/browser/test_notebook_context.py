"""The agent reads the live notebook and marks the cells it inserts, in a real JupyterLab 4
and Notebook 7 page: the ``notebook`` tool sees an edit the user has not saved, and a cell
proposed by ``insert_cell`` carries the provenance metadata into the saved ``.ipynb``.
The model is a ScriptedModel; the test reads back what it was sent."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_lab import Notebook

pytestmark = [pytest.mark.slow, pytest.mark.browser]

READ_SETUP = """\
%load_ext jupyter_crush
from jupyter_crush.magics import current
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall
crush = current()
model = ScriptedModel([Reply(tool_calls=[ToolCall("notebook", {})]), "I read it."])
crush.use_model(model)
print("setup done")"""

EDITED = "value = 'EDITED IN THE PAGE, NOT SAVED'"

READ_BACK = """\
seen = model.requests[1].messages[-1].tool_results[0].content
print("origin:", seen.splitlines()[0])
print("unsaved edit seen:", "EDITED IN THE PAGE, NOT SAVED" in seen)"""


@pytest.mark.parametrize("front_end", ["lab", "notebook7"])
def test_notebook_tool_sees_an_unsaved_edit(page, lab_server, front_end):
    url = lab_server.lab_url if front_end == "lab" else lab_server.notebook7_url
    name = lab_server.write_notebook(
        [READ_SETUP, "value = 'as saved'", "%%crush --fresh\nwhat is in my notebook?", READ_BACK]
    )
    notebook = Notebook(page)
    notebook.open(url(name), cells=4)
    notebook.run(0)
    notebook.wait_output(0, r"setup done")

    # Change cell 1 in the page only: the file on disk still says 'as saved'.
    notebook.cells.nth(1).locator(".cm-content").click()
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type(EDITED)
    page.keyboard.press("Escape")
    assert "as saved" in (lab_server.root / name).read_text()

    notebook.run(2)
    notebook.wait_output(2, r"I read it")
    notebook.wait_output(2, r"done")
    notebook.run(3)
    text = notebook.wait_output(3, r"unsaved edit seen")
    assert f"origin: Notebook (live document: {name} (unsaved changes included)), 4 cells" in text
    assert "unsaved edit seen: True" in text


INSERT_SETUP = """\
%load_ext jupyter_crush
from jupyter_crush.magics import current
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall
crush = current()
model = ScriptedModel([
    Reply(tool_calls=[ToolCall("insert_cell", {"code": "print('from the agent')"})]),
    "Proposed.",
])
crush.use_model(model)
print("setup done")"""

SESSION = 'print("session:", crush.current_session_id)'


def wait_saved(path: Path, text: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{path.name} was not saved with {text!r}"
        time.sleep(0.2)
    return json.loads(path.read_text())


@pytest.mark.parametrize("front_end", ["lab", "notebook7"])
def test_inserted_cell_carries_provenance_into_the_saved_notebook(page, lab_server, front_end):
    url = lab_server.lab_url if front_end == "lab" else lab_server.notebook7_url
    name = lab_server.write_notebook([INSERT_SETUP, "%%crush --yolo --fresh\nadd a cell", SESSION])
    notebook = Notebook(page)
    notebook.open(url(name), cells=3)
    notebook.run(0)
    notebook.wait_output(0, r"setup done")
    notebook.run(1)
    notebook.wait_output(1, r"Proposed")
    notebook.wait_output(1, r"done")
    # The new cell is inserted right below the prompt's cell, without being run.
    notebook.cells.nth(3).wait_for()
    assert "from the agent" in notebook.cells.nth(2).locator(".jp-InputArea").inner_text()
    notebook.run(3)
    session_id = notebook.wait_output(3, r"session:").split("session:", 1)[1].split()[0]

    notebook.cells.nth(0).locator(".jp-InputPrompt").click()
    page.keyboard.press("ControlOrMeta+s")
    saved = wait_saved(lab_server.root / name, '"call_0_0"')  # in the provenance only
    sources = ["".join(c["source"]) for c in saved["cells"]]
    assert sources[2] == "print('from the agent')", sources
    inserted = saved["cells"][2]
    origin = inserted["metadata"]["jupyter_crush"]
    assert origin["session"] == session_id
    assert origin["model"] == "scripted:scripted-model"
    assert origin["tool_call"] == "call_0_0"
    assert len(origin["message"]) == 32
    assert inserted["outputs"] == [] and inserted["execution_count"] is None


FIX_SETUP = """\
%load_ext jupyter_crush
from jupyter_crush.magics import current
from jupyter_crush.testing import ScriptedModel
crush = current()
crush.use_model(ScriptedModel(["A typo.\\n\\n```python\\nvalue = 6 * 7\\nprint(value)\\n```"]))
print("setup done")"""


def test_fix_code_cell_lands_below_with_provenance(page, lab_server):
    name = lab_server.write_notebook([FIX_SETUP, "value = 6 * sevn", "%crush fix -f code", SESSION])
    notebook = Notebook(page)
    notebook.open(lab_server.lab_url(name), cells=4)
    notebook.run(0)
    notebook.wait_output(0, r"setup done")
    notebook.run(1)
    notebook.wait_output(1, r"NameError")
    notebook.run(2)
    notebook.wait_output(2, r"done")
    # -f code waits for the answer, then inserts its code below the %crush fix cell.
    notebook.cells.nth(4).wait_for()
    notebook.run(4)
    session_id = notebook.wait_output(4, r"session:").split("session:", 1)[1].split()[0]

    notebook.cells.nth(0).locator(".jp-InputPrompt").click()
    page.keyboard.press("ControlOrMeta+s")
    saved = wait_saved(lab_server.root / name, '"message": "')
    sources = ["".join(c["source"]) for c in saved["cells"]]
    assert sources[3] == "value = 6 * 7\nprint(value)", sources
    origin = saved["cells"][3]["metadata"]["jupyter_crush"]
    assert origin["session"] == session_id
    assert origin["model"] == "scripted:scripted-model"
    assert len(origin["message"]) == 32 and "tool_call" not in origin
