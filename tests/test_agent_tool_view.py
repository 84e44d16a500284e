"""The agent tool's sub-agent in the run views: a collapsed section inside its call's row,
headed by the task and the child's state, its text and tool calls streaming in as ops."""

from __future__ import annotations

import json
from typing import Any

from support.page_module import run_with_page_module
from test_delta_view_ops import Page, in_sync, make_view
from test_widgets_view import make_view as make_widgets_view

from jupyter_crush.core.events import (
    ChildEvent,
    Delta,
    Finished,
    Started,
    ToolFinished,
    ToolStarted,
)
from jupyter_crush.core.message import (
    FinishReason,
    Message,
    Role,
    ToolCallPart,
    ToolResultPart,
    Usage,
)

TASK = "Find where the sales data is loaded\nand which columns are parsed as dates."
AGENT_CALL = ToolCallPart("call_1", "agent", json.dumps({"prompt": TASK}), finished=True)
VIEW_CALL = ToolCallPart("call_c1", "view", '{"path": "load.py"}', finished=True)
ANSWER = "load.py reads sales.csv; `date` is parsed as a date."


class ChildPage(Page):
    """The page's state, with the sub-agents' sections (the ops of delta_view.js)."""

    def apply(self, op: str, value: Any) -> None:
        children = self.state.setdefault("children", [])
        if op == "child":
            children.append({"call_id": value, "answer": "", "tools": []})
            return
        if op not in ("child+", "child=", "child tool"):
            super().apply(op, value)
            return
        call_id, change = value
        (child,) = [c for c in children if c["call_id"] == call_id]
        if op == "child+":
            child["answer"] += change
        elif op == "child=":
            child["answer"] = change
        else:
            rows = [r for r in child["tools"] if r["call_id"] != change["call_id"]]
            known = [r["call_id"] for r in child["tools"]]
            rows.insert(
                known.index(change["call_id"]) if change["call_id"] in known else len(rows), change
            )
            child["tools"] = rows


def make_child_view():
    view, _, _ = make_view()
    page = ChildPage(view)
    view.widget.send = page._receive  # the page that knows the sections
    return view, page


def child_turn(view, *, finish: FinishReason = FinishReason.END_TURN, after=None) -> None:
    """The parent calls the agent tool; its child reads a file, answers and ends."""

    def child(event):
        view.on_event(ChildEvent("call_1", "child-session-1", TASK, event))
        view._draw()

    parent = Message("s1", Role.ASSISTANT, parts=[AGENT_CALL])
    view.on_event(Started("u1"))
    view.on_event(Delta(parent))
    view.on_event(ToolStarted(AGENT_CALL))
    view._draw()
    child(Started("cu1"))
    reading = Message("child-session-1", Role.ASSISTANT)
    reading.append_text("Looking at load.py.")
    reading.parts.append(VIEW_CALL)
    child(Delta(reading))
    child(ToolStarted(VIEW_CALL))
    child(ToolFinished(VIEW_CALL, ToolResultPart("call_c1", "view", "1|df = read_csv(...)")))
    answer = Message("child-session-1", Role.ASSISTANT)
    answer.append_text(ANSWER[:20])
    child(Delta(answer))
    answer.append_text(ANSWER[20:])
    child(Delta(answer))
    if after is not None:
        after()
    child(Finished(finish, usage=Usage(120, 30)))


async def test_the_sub_agent_streams_into_a_section_of_its_calls_row():
    view, page = make_child_view()
    child_turn(view)
    view.on_event(ToolFinished(AGENT_CALL, ToolResultPart("call_1", "agent", ANSWER)))
    view._draw()
    ops = [op for message in page.ops_messages for op in message["ops"]]
    # The call's row heads the section: the task's first line and the child's state.
    headings = [(v["label"], v["state"]) for op, v in ops if op == "tool"]
    assert headings[0] == ("", "running")  # the call before its sub-agent started
    assert ("Find where the sales data is loaded", "sub-agent running") in headings
    assert headings[-1] == ("Find where the sales data is loaded", "sub-agent done, 150 tokens")
    # One section; its text only appended, as it streamed; its tool call added then changed.
    assert [v for op, v in ops if op == "child"] == ["call_1"]
    appended = [v for op, v in ops if op == "child+"]
    assert all(call_id == "call_1" for call_id, _ in appended)
    assert "".join(text for _, text in appended) == f"Looking at load.py.\n\n{ANSWER}"
    assert not [op for op, _ in ops if op == "child="]
    rows = [v[1] for op, v in ops if op == "child tool"]
    assert [(r["name"], r["state"]) for r in rows] == [("view", "running"), ("view", "ok")]
    assert rows[-1]["result"] == "1|df = read_csv(...)"
    # The child's text is not the parent's answer, and the page is in step with the kernel.
    assert page.state["answer"] == ""
    assert in_sync(view, page)
    (section,) = view.snapshot()["snapshot"]["children"]
    assert section["answer"] == f"Looking at load.py.\n\n{ANSWER}"


async def test_a_canceled_sub_agent_says_so_and_the_static_answer_keeps_what_it_wrote():
    view, _ = make_child_view()
    child_turn(view, finish=FinishReason.CANCELED)
    view.finish(FinishReason.CANCELED)
    (row,) = list(view.tool_rows())
    assert (row.label, row.state) == (
        "Find where the sales data is loaded",
        "sub-agent canceled, 150 tokens",
    )
    static = view.to_markdown()
    assert (
        "<details><summary>tool agent · Find where the sales data is loaded · "
        "sub-agent canceled, 150 tokens</summary>" in static
    )
    assert "<li>tool view · ok</li>" in static and "session child-se" in static
    assert ANSWER in static  # the call has no result: the child's text stands


async def test_a_section_opened_mid_run_is_in_the_snapshot_a_page_syncs_from():
    view, _ = make_child_view()

    def page_syncs():
        late = ChildPage(view)  # a page that reloads mid-run: the state as of now
        assert [c["call_id"] for c in late.state["children"]] == ["call_1"]
        assert late.state["children"][0]["tools"][0]["name"] == "view"

    child_turn(view, after=page_syncs)


async def test_the_widgets_view_shows_the_section_in_the_calls_accordion():
    view, _ = make_widgets_view()
    child_turn(view)
    box, content = view._tool_widgets["call_1"]
    assert box.titles == (
        "tool agent · Find where the sales data is loaded · sub-agent done, 150 tokens",
    )
    assert box.selected_index is None  # collapsed
    assert "<li>tool view · ok</li>" in content.value and "read_csv" not in view.answer_markdown
    assert "load.py reads sales.csv" in content.value


PAGE_CHECK = r"""
import { applyOp } from './delta_view.mjs';
const [start, ops] = JSON.parse(process.argv[2]);
for (const op of ops) applyOp(start, op);
console.log(JSON.stringify(start));
"""


async def test_the_pages_state_follows_the_child_ops_as_the_kernels_does(tmp_path):
    view, page = make_child_view()
    start = json.loads(json.dumps(view.snapshot()["snapshot"]))
    child_turn(view)
    ops = [op for message in page.ops_messages for op in message["ops"]]
    moved = run_with_page_module(tmp_path, PAGE_CHECK, json.dumps([start, ops]))
    kernel = json.loads(json.dumps(view.snapshot()["snapshot"]))
    assert moved["children"] == kernel["children"]
    assert moved["tools"] == kernel["tools"]
