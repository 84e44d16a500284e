"""The %%crush run widget in a real JupyterLab: what a saved notebook keeps, and the
permission prompt's buttons."""

from __future__ import annotations

import json
import time

import pytest
from lab_harness import LabServer
from test_lab import FINISH_REASONS, Notebook

pytestmark = [pytest.mark.slow, pytest.mark.browser]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

SETUP = """\
%load_ext jupyter_crush
from jupyter_crush.magics import current
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall
crush = current()
crush.use_model(ScriptedModel([
    Reply(text="Let me check.", tool_calls=[ToolCall("python", {"code": "print(6 * 7)"})]),
    "The answer is **42**.",
], tokens_per_second=50))
print("setup done")"""

PROMPT = "%%crush --new\nwhat is six times seven?"


def open_notebook(page, lab_server: LabServer, cells: list[str]) -> tuple[Notebook, str]:
    name = lab_server.write_notebook(cells)
    notebook = Notebook(page)
    notebook.open(lab_server.lab_url(name), cells=len(cells))
    notebook.run(0)
    notebook.wait_output(0, r"setup done")
    return notebook, name


def test_permission_prompt_then_the_saved_notebook_keeps_the_answer(page, lab_server):
    notebook, name = open_notebook(page, lab_server, [SETUP, PROMPT, FINISH_REASONS])
    notebook.run(1)

    # The python tool changes state: the widget asks, with the exact code.
    prompt = notebook.output(1)
    prompt.filter(has_text="wants to run").first.wait_for()
    assert "print(6 * 7)" in notebook.output_text(1)
    assert "waiting for permission" in notebook.output_text(1)
    notebook.screenshot("permission-prompt")
    prompt.get_by_role("button", name="Allow", exact=True).click()

    # Done: the live widget is replaced by the static answer, tool call included.
    text = notebook.wait_output(1, r"· done ·")
    assert "The answer is 42." in text
    assert notebook.finish_reasons(2) == ["tool_use", "end_turn"]

    # Saved, the notebook shows the answer without a kernel or widget state.
    notebook.cells.nth(1).locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    path = lab_server.root / name
    deadline = time.monotonic() + 30
    while not (outputs := json.loads(path.read_text())["cells"][1]["outputs"]):
        assert time.monotonic() < deadline, "the notebook was not saved"
        time.sleep(0.2)
    (shown,) = [o for o in outputs if o["output_type"] == "display_data"]
    assert WIDGET_VIEW not in shown["data"]
    markdown = "".join(shown["data"]["text/markdown"])
    assert "The answer is **42**." in markdown
    assert "tool python · ok" in markdown and "42" in markdown


def test_deny_ends_the_turn(page, lab_server):
    notebook, _ = open_notebook(page, lab_server, [SETUP, PROMPT, FINISH_REASONS])
    notebook.run(1)
    prompt = notebook.output(1)
    prompt.filter(has_text="wants to run").first.wait_for()
    prompt.get_by_role("button", name="Deny").click()
    text = notebook.wait_output(1, r"· canceled")
    assert "The answer is" not in text
    assert notebook.finish_reasons(2) == ["tool_use", "canceled"]
