"""The ``todos`` and ``question`` tools: their arguments, the plan and the forms in both run
views (the delta view's ops replayed into a copy of the page's state), a form answered
through the view's comm, a run nobody can answer, and a Stop while a question is open."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from support.bounded import until, within
from support.page_module import run_with_page_module
from test_delta_view_ops import Page, click, in_sync
from test_widgets_view import make_view as make_widgets_view

from jupyter_crush import FinishReason, SessionAgent, SessionAgentCall
from jupyter_crush.agent.records import TOOL_CANCELED
from jupyter_crush.core.events import Finished, Started, ToolFinished
from jupyter_crush.core.message import ToolCallPart, ToolResultPart
from jupyter_crush.core.questions import QuestionRequest, answers_from_page
from jupyter_crush.core.tools import ToolContext
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall
from jupyter_crush.tools import DEFAULT_TOOL_NAMES, default_tools
from jupyter_crush.tools.question import NO_USER, QuestionTool, parse_questions
from jupyter_crush.tools.todos import run_todos
from jupyter_crush.view.base import RunLabels
from jupyter_crush.view.delta import DeltaRunView
from jupyter_crush.view.questions import ViewQuestionAsker


class PlanPage(Page):
    """The page's state, following the plan's and the forms' ops too."""

    def apply(self, op: str, value: Any) -> None:
        state = self.state
        if op == "todo":
            item = {k: v for k, v in value.items() if k != "at"}
            if value["at"] < len(state["todos"]):
                state["todos"][value["at"]] = item
            else:
                assert value["at"] == len(state["todos"]), "a hole in the plan"
                state["todos"].append(item)
        elif op == "todos":
            del state["todos"][value:]
        elif op == "question":
            forms = state["questions"]
            known = [f["id"] for f in forms]
            if value["id"] in known:
                forms[known.index(value["id"])] = value
            else:
                forms.append(value)
        else:
            super().apply(op, value)


def make_view(**kwargs: Any) -> tuple[DeltaRunView, PlanPage]:
    view = DeltaRunView(
        RunLabels("analysis", "scripted:model"),
        on_stop=lambda: None,
        session_id="s1",
        loop=asyncio.get_running_loop(),
        redraw_rate=0,
        **kwargs,
    )
    return view, PlanPage(view)


CONTEXT = ToolContext("s1", "call-1")


def todo(content: str, status: str, active: str = "") -> dict[str, str]:
    return {"content": content, "status": status, "active_form": active}


PLAN = [
    todo("Load the sales data", "in_progress", "Loading the sales data"),
    todo("Parse the dates", "pending"),
    todo("Plot monthly totals", "pending"),
]


async def plan_written(view: DeltaRunView, items: list[dict[str, str]], n: int = 1) -> None:
    """A ``todos`` call with ``items`` as the model sends it, finished in the view."""
    arguments = {"todos": items}
    result = await run_todos(arguments, CONTEXT)
    call = ToolCallPart(f"t{n}", "todos", json.dumps(arguments), finished=True)
    view.on_event(
        ToolFinished(
            call, ToolResultPart(call.id, "todos", result.content, result.is_error, result.metadata)
        )
    )
    view._draw()


def ops_of(page: PlanPage, kinds: tuple[str, ...]) -> list[list[list[Any]]]:
    """Per ops message, its ops of ``kinds``."""
    return [[op for op in m["ops"] if op[0] in kinds] for m in page.ops_messages]


# -- todos ----------------------------------------------------------------------------------


async def test_a_changed_todo_item_sends_that_item_alone():
    view, page = make_view()
    view.on_event(Started("u1"))
    await plan_written(view, PLAN, 1)
    assert page.state["todos"] == PLAN
    mark = len(page.ops_messages)
    await plan_written(view, [todo("Load the sales data", "done"), *PLAN[1:]], 2)
    sent = [op for ops in ops_of(page, ("todo", "todos"))[mark:] for op in ops]
    assert sent == [["todo", {"at": 0, **todo("Load the sales data", "done")}]]
    # A shorter plan is cut, not re-sent.
    mark = len(page.ops_messages)
    await plan_written(view, [todo("Load the sales data", "done")], 3)
    assert [op for ops in ops_of(page, ("todo", "todos"))[mark:] for op in ops] == [["todos", 1]]
    assert in_sync(view, page)


async def test_the_static_answer_keeps_the_final_plan_and_a_stop_says_where_it_stood():
    view, page = make_view()
    view.on_event(Started("u1"))
    await plan_written(view, PLAN, 1)
    await plan_written(
        view,
        [
            todo("Load the sales data", "done"),
            todo("Parse the dates", "in_progress", "Parsing the dates"),
            PLAN[2],
        ],
        2,
    )
    view.on_event(Finished(FinishReason.CANCELED))
    markdown = view.static_bundle()["text/markdown"]
    assert (
        "**Plan** (stopped with 1 of 3 done)\n\n- ✓ ~~Load the sales data~~\n"
        "- ▸ **Parsing the dates**\n- ○ Plot monthly totals"
    ) in markdown
    assert markdown.index("**Plan**") < markdown.index("tool todos")
    assert page.state["todos"][1]["status"] == "in_progress"  # the live view keeps it too


async def test_a_failed_todos_call_leaves_the_plan_as_it_was():
    view, page = make_view()
    await plan_written(view, PLAN, 1)
    await plan_written(view, [{"content": "Plot", "status": "someday"}], 2)
    assert view.plan[0].content == "Load the sales data" and len(page.state["todos"]) == 3


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({}, "todos: 'todos' must be a list of {content, status} objects"),
        (
            {"todos": [{"content": "Plot", "status": "someday"}]},
            "todos: item 1 ('Plot') has status 'someday'; use one of pending, in_progress, done",
        ),
        ({"todos": [{"status": "pending"}]}, "todos: item 1 needs a non-empty 'content' string"),
        ({"todos": ["Plot"]}, "todos: item 1 must be an object with 'content' and 'status'"),
        (
            {"todos": [{"content": "x", "status": "pending"}] * 21},
            "todos: the plan has 21 items; keep it to 20 (merge steps)",
        ),
    ],
)
async def test_bad_todos_arguments_get_one_line_the_model_can_fix(arguments, error):
    result = await run_todos(arguments, CONTEXT)
    assert (result.content, result.is_error, result.metadata) == (error, True, {})


async def test_todos_counts_and_takes_a_json_encoded_list_and_completed_for_done():
    items = [{"content": "Load", "status": "completed"}, {"content": "Plot", "status": "pending"}]
    result = await run_todos({"todos": json.dumps(items)}, CONTEXT)
    assert not result.is_error
    assert result.content.startswith("Plan updated: 1 pending, 0 in progress, 1 done.")
    assert result.metadata == {"todos": [todo("Load", "done"), todo("Plot", "pending")]}


# -- question --------------------------------------------------------------------------------

QUESTIONS = {
    "questions": [
        {"type": "yes_no", "question": "Drop rows with a missing price?"},
        {
            "type": "single_choice",
            "question": "Which currency?",
            "description": "Prices are mixed.",
            "choices": [{"id": "eur", "label": "Euro"}, {"id": "usd", "label": "Dollar"}],
        },
        {"type": "multi_choice", "question": "Which plots?", "choices": ["bar", "line", "pie"]},
        {"type": "free_text", "question": "Anything else?"},
    ]
}

PAGE_ANSWERS = [
    {"yes": True},
    {"selected": ["usd"], "text": ""},
    {"selected": ["bar", "pie"], "text": "and a map"},
    {"selected": [], "text": ""},
]

MODEL_GETS = (
    "Q1: Drop rows with a missing price?\nUser answered: yes\n\n"
    "Q2: Which currency?\nUser selected: Dollar (id usd)\n\n"
    "Q3: Which plots?\nUser selected: bar (id bar), pie (id pie)\nUser wrote: and a map\n\n"
    "Q4: Anything else?\nUser skipped this question"
)


async def test_the_form_is_answered_through_the_views_comm():
    view, page = make_view()
    view.on_event(Started("u1"))
    tool = QuestionTool(ViewQuestionAsker({"s1": view}))
    asking = asyncio.ensure_future(tool.run(QUESTIONS, CONTEXT))
    await until(lambda: page.state["questions"])
    (form,) = page.state["questions"]
    assert form["state"] == "open" and form["id"] == "call-1"
    assert [q["kind"] for q in form["questions"]] == [
        "yes_no",
        "single_choice",
        "multi_choice",
        "free_text",
    ]
    assert "waiting for your answer" in page.status
    # Answers that do not fit the questions (a stale page, another form's) are not taken.
    assert not view.forms.answer("call-1", PAGE_ANSWERS[:2])
    assert not view.forms.answer("call-1", [{"yes": "maybe"}, *PAGE_ANSWERS[1:]])
    assert not view.forms.answer(
        "call-1", [*PAGE_ANSWERS[:1], {"selected": ["gbp"]}, *PAGE_ANSWERS[2:]]
    )
    assert not view.forms.answer("another call", PAGE_ANSWERS)
    # Only a click answers: another event aimed at the form (a focus, a key) is not taken.
    click(
        view, {"event": "focus", "target": "answer", "question": "call-1", "answers": PAGE_ANSWERS}
    )
    for _ in range(5):  # what a taken answer would schedule on the loop has run by now
        await asyncio.sleep(0)
    assert not asking.done() and page.state["questions"][0]["state"] == "open"
    click(
        view, {"event": "click", "target": "answer", "question": "call-1", "answers": PAGE_ANSWERS}
    )
    result = await within(asking)
    assert (result.content, result.is_error) == (MODEL_GETS, False)
    (form,) = page.state["questions"]
    assert form["state"] == "answered"
    assert form["answers"][0]["shown"] == "User answered: yes"
    assert "waiting for your answer" not in page.status
    assert in_sync(view, page)


@pytest.mark.parametrize("front_end", ["no view", "headless view", "no asker"])
async def test_nobody_to_ask_tells_the_model_to_decide(front_end):
    view, page = make_view()
    view.interactive = front_end != "headless view"
    views = {} if front_end == "no view" else {"s1": view}
    tool = QuestionTool(None if front_end == "no asker" else ViewQuestionAsker(views))
    result = await within(tool.run(QUESTIONS, CONTEXT))
    assert (result.content, result.is_error) == (NO_USER, False)
    assert NO_USER == "no user to ask: decide yourself and say what you assumed"
    assert page.state["questions"] == []


async def test_stop_while_a_question_is_open_withdraws_it(store):
    session = store.create_session()
    view = DeltaRunView(
        RunLabels("analysis", "scripted:model"),
        on_stop=lambda: None,
        session_id=session.id,
        loop=asyncio.get_running_loop(),
        redraw_rate=0,
    )
    page = PlanPage(view)
    tools = default_tools(
        None,
        store.path.parent,
        include=["question"],
        ask_questions=ViewQuestionAsker({session.id: view}),
    )
    model = ScriptedModel([Reply(tool_calls=[ToolCall("question", QUESTIONS)]), "never"])
    agent = SessionAgent(model, store, tools=tools)
    run = asyncio.ensure_future(agent.run(SessionAgentCall(session.id, "tidy", observer=view)))
    await until(lambda: page.state["questions"])
    form_id = page.state["questions"][0]["id"]
    agent.cancel(session.id)
    result = await within(run)
    assert result.reason is FinishReason.CANCELED
    (form,) = page.state["questions"]
    assert (form["state"], form["answers"]) == ("withdrawn", None)
    # A late answer from the page is taken by nobody.
    assert not view.forms.answer(form_id, PAGE_ANSWERS)
    click(
        view, {"event": "click", "target": "answer", "question": form_id, "answers": PAGE_ANSWERS}
    )
    assert page.state["questions"][0]["state"] == "withdrawn"
    stored = [r for m in store.list_messages(session.id) for r in m.tool_results]
    assert [(r.name, r.content, r.is_error) for r in stored] == [("question", TOOL_CANCELED, True)]
    assert len(model.requests) == 1  # nothing asked the model after the Stop


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({}, "question: 'questions' must be a list of 1 to 4 question objects"),
        ({"questions": []}, "question: 'questions' must be a list of 1 to 4 question objects"),
        (
            {"questions": [{"type": "yes_no", "question": "Go?"}] * 5},
            "question: 5 questions; ask at most 4 at once (ask the rest after the answers)",
        ),
        (
            {"questions": [{"type": "maybe", "question": "Go?"}]},
            "question: question 1: type 'maybe' is not one of yes_no, single_choice, "
            "multi_choice, free_text",
        ),
        (
            {"questions": [{"type": "yes_no"}]},
            "question: question 1: needs a non-empty 'question' string",
        ),
        (
            {"questions": [{"type": "single_choice", "question": "Which?", "choices": ["a"]}]},
            "question: question 1: single_choice needs 'choices': a list of 2 to 6 "
            "{id, label} objects",
        ),
        (
            {"questions": [{"type": "yes_no", "question": "Go?", "choices": ["a", "b"]}]},
            "question: question 1: yes_no takes no 'choices'; use single_choice or "
            "multi_choice for choices",
        ),
        (
            {
                "questions": [
                    {
                        "type": "multi_choice",
                        "question": "Which?",
                        "choices": [{"id": "a", "label": "A"}, {"id": "a", "label": "B"}],
                    }
                ]
            },
            "question: question 1: choice 2 repeats the id 'a'; ids must be unique",
        ),
    ],
)
async def test_bad_question_arguments_get_one_line_the_model_can_fix(arguments, error):
    asked: list[QuestionRequest] = []

    class Asker:
        async def ask(self, request):
            asked.append(request)
            return None

    result = await QuestionTool(Asker()).run(arguments, CONTEXT)
    assert (result.content, result.is_error) == (error, True)
    assert "\n" not in result.content and asked == []  # nobody was asked


def test_a_json_encoded_list_of_questions_is_taken():
    parsed = parse_questions({"questions": json.dumps(QUESTIONS["questions"])})
    assert [q.text for q in parsed] == [q["question"] for q in QUESTIONS["questions"]]


def test_both_tools_are_default_tools_and_neither_asks_permission(tmp_path):
    assert {"todos", "question"} <= set(DEFAULT_TOOL_NAMES)
    tools = {t.name: t for t in default_tools(None, tmp_path)}
    assert not tools["todos"].changes_state and not tools["question"].changes_state


# -- the ipywidgets view ---------------------------------------------------------------------


async def test_the_widgets_view_shows_the_plan_and_takes_a_form_answer():
    view, _ = make_widgets_view(redraw_rate=0)
    view.on_event(Started("u1"))
    await plan_written(view, PLAN)
    assert "<b>Loading the sales data</b>" in view.plan_html.value
    assert "○ Parse the dates" in view.plan_html.value
    tool = QuestionTool(ViewQuestionAsker({"s1": view}))
    asking = asyncio.ensure_future(tool.run(QUESTIONS, CONTEXT))
    await until(lambda: view.questions.children)
    (box,) = view.questions.children
    widgets = box.children
    yes_no, currency, plots = widgets[1], widgets[3], widgets[6:9]
    yes_no.value = "Yes"
    currency.value = "usd"
    plots[0].value = plots[2].value = True
    widgets[9].value = "and a map"
    clicker = threading.Thread(target=widgets[-1].click)  # Answer, on a subshell's thread
    clicker.start()
    clicker.join()
    result = await within(asking)
    assert result.content == MODEL_GETS
    (summary,) = box.children
    assert "User selected: Dollar (id usd)" in summary.value


# -- the page module's own state (delta_view.js under Node) ----------------------------------

REPLAY = r"""
import { applyOp } from './delta_view.mjs';
import { readFileSync } from 'node:fs';
const { start, messages } = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { todos, questions, ...older } = start;  // a snapshot from before the plan and forms
for (const message of messages) for (const op of message.ops) applyOp(older, op);
console.log(JSON.stringify(older));
"""


async def test_the_page_module_follows_the_plan_and_form_ops_as_the_kernel_does(tmp_path):
    view, page = make_view()
    start = view.snapshot()["snapshot"]
    view.on_event(Started("u1"))
    await plan_written(view, PLAN, 1)
    await plan_written(view, [todo("Load the sales data", "done"), PLAN[1]], 2)
    asking = asyncio.ensure_future(
        QuestionTool(ViewQuestionAsker({"s1": view})).run(QUESTIONS, CONTEXT)
    )
    await until(lambda: page.state["questions"])
    click(
        view, {"event": "click", "target": "answer", "question": "call-1", "answers": PAGE_ANSWERS}
    )
    await within(asking)
    view._draw()
    (tmp_path / "ops.json").write_text(json.dumps({"start": start, "messages": page.ops_messages}))
    replayed = run_with_page_module(tmp_path, REPLAY, str(tmp_path / "ops.json"))
    kernel = json.loads(json.dumps(view.snapshot()["snapshot"]))
    assert replayed["todos"] == kernel["todos"] == [todo("Load the sales data", "done"), PLAN[1]]
    assert replayed["questions"] == kernel["questions"]
    assert replayed["questions"][0]["state"] == "answered"


async def test_the_widgets_view_shows_a_withdrawn_form_without_its_inputs():
    view, _ = make_widgets_view(redraw_rate=0)
    asking = asyncio.ensure_future(
        ViewQuestionAsker({"s1": view}).ask(
            QuestionRequest("s1", "call-1", parse_questions(QUESTIONS))
        )
    )
    await until(lambda: view.questions.children)
    (box,) = view.questions.children
    submit = box.children[-1]
    asking.cancel()  # the Stop
    with pytest.raises(asyncio.CancelledError):
        await asking
    (summary,) = box.children
    assert summary.value.count("withdrawn: the run was stopped") == 4
    submit.click()  # a click that was on its way: nobody takes it
    assert view.forms.forms["call-1"].state == "withdrawn"


def test_a_known_secret_typed_into_an_answer_is_redacted(monkeypatch):
    monkeypatch.setenv("SALES_API_KEY", "sk-answer-7f3b9d2c4e1a")
    (question,) = parse_questions({"questions": [{"type": "free_text", "question": "Key?"}]})
    (answer,) = answers_from_page([question], [{"text": "it is sk-answer-7f3b9d2c4e1a"}])
    assert answer.text == "it is [redacted]"
