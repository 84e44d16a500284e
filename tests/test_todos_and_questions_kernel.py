"""The ``todos`` and ``question`` tools end to end in a real kernel, against a local
OpenAI-compatible server: the plan and the form in the run view's ops, the form answered
through the view's comm as the page sends it, and the tool results the model gets back."""

from __future__ import annotations

import json

import pytest
from support.kernel_harness import SETUP, Kernel, view_ops
from support.openai_chunks import openai_step
from support.replay_server import serving

from jupyter_crush.agent.records import TOOL_CANCELED

pytestmark = pytest.mark.slow

PLAN = [
    {"content": "Load the sales data", "status": "in_progress", "active_form": "Loading"},
    {"content": "Plot monthly totals", "status": "pending"},
]
DONE = [
    {"content": "Load the sales data", "status": "done"},
    {"content": "Plot monthly totals", "status": "in_progress", "active_form": "Plotting"},
]
QUESTIONS = {
    "questions": [
        {"type": "yes_no", "question": "Drop rows without a price?"},
        {
            "type": "single_choice",
            "question": "Which currency?",
            "choices": [{"id": "eur", "label": "Euro"}, {"id": "usd", "label": "Dollar"}],
        },
    ]
}
STEPS = [
    openai_step(1, tool=("todos", {"todos": PLAN})),
    openai_step(2, tool=("question", QUESTIONS)),
    openai_step(3, tool=("todos", {"todos": DONE})),
    openai_step(4, "Dropped them and plotted in dollars."),
]


def test_the_model_plans_asks_and_gets_the_answers_back(tmp_path):
    with serving(STEPS) as server:
        kernel = Kernel(
            tmp_path,
            env={"OPENAI_API_KEY": "sk-test-not-a-real-key", "OPENAI_BASE_URL": f"{server.url}/v1"},
        )
        try:
            kernel.run(SETUP)
            kernel.run("%config CrushConfig.titles = False")
            kernel.iopub.clear()
            kernel.run("%%crush --new\nClean the sales data and plot it")
            asked = kernel.wait_iopub(
                lambda m: any(op == "question" for op, _ in view_ops(m)), timeout=30
            )
            (form,) = [v for op, v in view_ops(asked) if op == "question"]
            assert form["state"] == "open"
            assert [q["text"] for q in form["questions"]] == [
                "Drop rows without a price?",
                "Which currency?",
            ]
            answers = [{"yes": True}, {"selected": ["usd"], "text": ""}]
            kernel.click(
                kernel.run_view(),
                kernel.create_subshell(),
                {"event": "click", "target": "answer", "question": form["id"], "answers": answers},
            )
            kernel.run("import asyncio; await asyncio.wait_for(crush.last_view.wait(), 30)", 35)
            assert kernel.value("crush.last_view.phase") == "done"
            kernel.drain()
            ops = [op for m in kernel.iopub for op in view_ops(m)]
            stored = kernel.value(
                "[(c.name, c.input) for m in crush.store.list_messages(crush.current_session_id)"
                " for c in m.tool_calls]"
            )
            static = kernel.value("crush.last_view.static_bundle()['text/markdown']")
        finally:
            kernel.shutdown()
    requests = [r.json() for r in server.requests]
    assert len(requests) == 4
    results = [r["messages"][-1] for r in requests[1:]]
    assert [m["role"] for m in results] == ["tool"] * 3
    assert results[0]["content"].startswith("Plan updated: 1 pending, 1 in progress, 0 done.")
    assert results[1]["content"] == (
        "Q1: Drop rows without a price?\nUser answered: yes\n\n"
        "Q2: Which currency?\nUser selected: Dollar (id usd)"
    )
    assert results[2]["content"].startswith("Plan updated: 0 pending, 1 in progress, 1 done.")
    # Both tools were offered to the model.
    offered = {t["function"]["name"] for t in requests[0]["tools"]}
    assert {"todos", "question"} <= offered
    # The page got the plan item by item: the second version changed both items.
    todo_ops = [v for op, v in ops if op == "todo"]
    assert [(v["at"], v["status"]) for v in todo_ops] == [
        (0, "in_progress"),
        (1, "pending"),
        (0, "done"),
        (1, "in_progress"),
    ]
    assert [v["state"] for op, v in ops if op == "question"] == ["open", "answered"]
    # The transcript keeps every version of the plan, as the calls' arguments.
    assert [(name, json.loads(arguments)) for name, arguments in stored] == [
        ("todos", {"todos": PLAN}),
        ("question", QUESTIONS),
        ("todos", {"todos": DONE}),
    ]
    assert "**Plan** (1 of 2 done)" in static and "~~Load the sales data~~" in static


def test_a_cell_run_headless_tells_the_model_nobody_can_answer(tmp_path):
    # nbclient and papermill send allow_stdin=False: the cell waits for its answer, and
    # no front end can show the form.
    steps = [openai_step(1, tool=("question", QUESTIONS)), openai_step(2, "Assumed yes, euro.")]
    with serving(steps) as server:
        kernel = Kernel(
            tmp_path,
            env={"OPENAI_API_KEY": "sk-test-not-a-real-key", "OPENAI_BASE_URL": f"{server.url}/v1"},
        )
        try:
            kernel.run(SETUP)
            kernel.run("%config CrushConfig.titles = False")
            kernel.iopub.clear()
            ran = kernel.execute("%%crush --new\nClean the sales data", 60, allow_stdin=False)
            assert ran.reply["content"]["status"] == "ok"
            assert kernel.value("crush.last_view.phase") == "done"
            kernel.drain()
            shown = [op for m in kernel.iopub for op, _ in view_ops(m) if op == "question"]
        finally:
            kernel.shutdown()
    (_, second) = [r.json() for r in server.requests]
    result = second["messages"][-1]
    assert (result["role"], result["content"]) == (
        "tool",
        "no user to ask: decide yourself and say what you assumed",
    )
    assert shown == []  # no form was shown to nobody


def test_stop_while_the_form_is_open_withdraws_it(tmp_path):
    steps = [openai_step(1, tool=("question", QUESTIONS)), openai_step(2, "never asked")]
    with serving(steps) as server:
        kernel = Kernel(
            tmp_path,
            env={"OPENAI_API_KEY": "sk-test-not-a-real-key", "OPENAI_BASE_URL": f"{server.url}/v1"},
        )
        try:
            kernel.run(SETUP)
            kernel.run("%config CrushConfig.titles = False")
            kernel.iopub.clear()
            kernel.run("%%crush --new\nClean the sales data")
            asked = kernel.wait_iopub(
                lambda m: any(op == "question" for op, _ in view_ops(m)), timeout=30
            )
            (form,) = [v for op, v in view_ops(asked) if op == "question"]
            subshell = kernel.create_subshell()
            kernel.stop(subshell)
            kernel.run("import asyncio; await asyncio.wait_for(crush.last_view.wait(), 30)", 35)
            # An answer sent after the Stop (a page that had not heard of it yet) changes nothing.
            answers = [{"yes": True}, {"selected": ["usd"], "text": ""}]
            kernel.click(
                kernel.run_view(),
                subshell,
                {"event": "click", "target": "answer", "question": form["id"], "answers": answers},
            )
            assert kernel.value("crush.last_view.phase") == "canceled"
            kernel.drain()
            states = [v["state"] for m in kernel.iopub for op, v in view_ops(m) if op == "question"]
            results = kernel.value(
                "[(r.name, r.content, r.is_error) for m in "
                "crush.store.list_messages(crush.current_session_id) for r in m.tool_results]"
            )
        finally:
            kernel.shutdown()
    assert states == ["open", "withdrawn"]
    assert results == [["question", TOOL_CANCELED, True]]
    assert len(server.requests) == 1  # the model was not asked again
