"""The agent tool's sub-agent in a real JupyterLab: its section sits in the agent call's row,
collapsed under the task and the child's state, and its text and tool calls stream into it;
the saved answer keeps the row with the child's final state."""

from __future__ import annotations

import pytest
from lab_harness import LabServer
from test_lab import Notebook

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SETUP = """\
%load_ext jupyter_crush
from pathlib import Path
from jupyter_crush.magics import current
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall
crush = current()
Path("data.csv").write_text("a,b\\n1,2\\n")
task = "Which columns has data.csv? Report their names."
model = ScriptedModel([
    Reply(tool_calls=[ToolCall("agent", {"prompt": task})]),
    Reply(tool_calls=[ToolCall("view", {"path": "data.csv"})]),
    "Columns a and b, read from the header line.",
    "data.csv has columns a and b.",
], tokens_per_second=50)
gate = model.gate(step=2, after_tokens=3)
crush.use_model(model)
print("setup done")"""

PROMPT = "%%crush --new\nwhat is in data.csv?"
RELEASE = 'gate.release()\nprint("released")'
ROW = ".crush-tool:has(> .crush-child)"


def test_the_sub_agent_streams_into_its_calls_collapsed_row(page, lab_server: LabServer):
    name = lab_server.write_notebook([SETUP, PROMPT, RELEASE])
    notebook = Notebook(page)
    notebook.open(lab_server.lab_url(name), cells=3)
    notebook.run(0)
    notebook.wait_output(0, r"setup done")
    notebook.run(1)

    output = notebook.output(1)
    row = output.locator(ROW)
    row.wait_for(state="attached")
    summary = row.locator("> summary")
    summary.filter(has_text="sub-agent running").wait_for()
    assert summary.inner_text().startswith("tool agent \u00b7 Which columns has data.csv?")
    assert row.get_attribute("open") is None  # collapsed until the user opens it
    summary.click()
    child = row.locator(".crush-child")
    child.filter(has_text="Columns a and").wait_for()  # held mid-stream by the gate
    assert "tool view \u00b7 ok" in child.locator(".crush-tool > summary").inner_text()
    assert "Columns a and" not in output.locator(":scope .crush-answer").last.inner_text()
    notebook.screenshot("sub-agent-streaming")

    notebook.run(2)
    text = notebook.wait_output(1, r"\u00b7 done \u00b7")
    assert "data.csv has columns a and b." in text
    assert "sub-agent done" in text
