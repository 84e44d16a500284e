"""The ``todos`` plan and the ``question`` form in a real JupyterLab: the plan renders above
the answer and updates item by item, the form is answered by clicking, and the answers are
what the model gets back."""

from __future__ import annotations

import time

import pytest
from lab_harness import LabServer
from test_lab import Notebook

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SETUP = """\
%load_ext jupyter_crush
from jupyter_crush.magics import current
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall
crush = current()
plan = [{"content": "Load the sales data", "status": "in_progress", "active_form": "Loading"},
        {"content": "Plot monthly totals", "status": "pending"}]
done = [{"content": "Load the sales data", "status": "done"},
        {"content": "Plot monthly totals", "status": "in_progress", "active_form": "Plotting"}]
questions = [
    {"type": "yes_no", "question": "Drop rows without a price?"},
    {"type": "single_choice", "question": "Which currency?",
     "choices": [{"id": "eur", "label": "Euro"}, {"id": "usd", "label": "Dollar"}]},
    {"type": "free_text", "question": "Anything else?"},
]
model = ScriptedModel([
    Reply(tool_calls=[ToolCall("todos", {"todos": plan})]),
    Reply(tool_calls=[ToolCall("question", {"questions": questions})]),
    Reply(tool_calls=[ToolCall("todos", {"todos": done})]),
    "Plotted in dollars.",
], tokens_per_second=50)
gate = model.gate(step=3, after_tokens=1)
crush.use_model(model)
print("setup done")"""

PROMPT = "%%crush --new\nclean the sales data and plot it"
RELEASE = 'gate.release()\nprint("released")'
ANSWERS = """\
results = [r.content for m in crush.store.list_messages(crush.current_session_id)
           for r in m.tool_results if r.name == "question"]
print("answers:", repr(results))"""

READ_PLAN = (
    "(output) => [...output.querySelectorAll('.crush-todos li')].map((li) => li.textContent)"
)


def wait_plan(notebook: Notebook, expected: list[str]) -> None:
    deadline = time.monotonic() + 60
    while (shown := notebook.output(1).first.evaluate(READ_PLAN)) != expected:
        assert time.monotonic() < deadline, f"the plan shows {shown!r}"
        notebook.page.wait_for_timeout(100)


def test_the_plan_updates_live_and_the_form_is_answered_by_clicking(page, lab_server: LabServer):
    name = lab_server.write_notebook([SETUP, PROMPT, RELEASE, ANSWERS])
    notebook = Notebook(page)
    notebook.open(lab_server.lab_url(name), cells=4)
    notebook.run(0)
    notebook.wait_output(0, r"setup done")
    notebook.run(1)

    output = notebook.output(1)
    form = output.locator(".crush-question")
    form.wait_for()
    wait_plan(notebook, ["\u25b8 Loading", "\u25cb Plot monthly totals"])
    assert "waiting for your answer" in notebook.output_text(1)
    notebook.screenshot("question-form")
    form.get_by_label("Yes").check()
    form.get_by_label("Dollar").check()
    form.locator("textarea").fill("use the 2024 prices")
    form.get_by_role("button", name="Answer").click()

    # Answered: the form shows the answers, and the plan moves on item by item.
    output.filter(has_text="User selected: Dollar (id usd)").first.wait_for()
    wait_plan(notebook, ["\u2713 Load the sales data", "\u25b8 Plotting"])
    assert not output.locator(".crush-question input").count()
    notebook.screenshot("plan-updated")

    notebook.run(2)
    text = notebook.wait_output(1, r"\u00b7 done \u00b7")
    assert "Plan (1 of 2 done)" in text and "Plotted in dollars." in text
    notebook.run(3)
    answers = notebook.wait_output(3, r"answers:")
    assert "User answered: yes" in answers
    assert "User selected: Dollar (id usd)" in answers
    assert "User wrote: use the 2024 prices" in answers
    assert "Q3: Anything else?" in answers
