"""Rules of the Stop click path (click, cancel, "Stopping…") and of the page's other messages
that mutation testing found unpinned, one quick test per rule, named for it; and small rules
beside them: forgetting "Allow for session", a pending write's one-line description, the
name of a title request's task.

Messages here are handed to the view on the test's own thread, so whatever a broken rule
raises fails the test (a click's thread would only print it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.bounded import within
from test_delta_view_ops import Page, make_view
from test_titles import PROMPT, agent_with_titles

from jupyter_crush import SessionAgentCall
from jupyter_crush.agent.titles import prompt_title
from jupyter_crush.core.tools import Decision, PermissionRequest
from jupyter_crush.store.pending import PendingWrites
from jupyter_crush.tools.permissions import PermissionPolicy
from jupyter_crush.view.base import RunLabels
from jupyter_crush.view.delta import DeltaRunView

STOP = {"event": "click", "target": "stop"}


def message(view: DeltaRunView, content: dict) -> None:
    view._on_message(view.widget, content, [])


def view_on_a_closed_loop() -> tuple[DeltaRunView, list[str]]:
    """A view whose kernel loop has closed (the kernel is shutting down)."""
    stops: list[str] = []
    loop = asyncio.new_event_loop()
    loop.close()
    view = DeltaRunView(
        RunLabels("analysis", "scripted:model"),
        on_stop=lambda: stops.append("stop"),
        session_id="s1",
        loop=loop,
    )
    Page(view)
    return view, stops


def test_a_stop_click_after_the_kernels_loop_closed_still_cancels_and_raises_nothing():
    view, stops = view_on_a_closed_loop()
    message(view, STOP)
    assert stops == ["stop"] and view.stop_requested


def test_a_page_sync_after_the_kernels_loop_closed_raises_nothing():
    view, _ = view_on_a_closed_loop()
    message(view, {"event": "sync", "nonce": "n1"})


async def test_a_page_reloaded_after_a_stop_click_shows_stopping():
    view, page, _ = make_view()
    message(view, STOP)
    assert page.state["stop"] == "stopping"
    assert view.snapshot()["snapshot"]["stop"] == "stopping"  # what a reloaded page gets


async def test_a_sync_without_a_nonce_is_answered_for_the_empty_nonce():
    view, page, _ = make_view()
    message(view, {"event": "sync"})
    await asyncio.sleep(0)
    assert page.messages[-1]["for"] == ""


async def test_only_a_decide_click_with_a_known_decision_answers_an_open_prompt():
    view, _, _ = make_view()
    decided: list[Decision] = []
    view.ask_permission(PermissionRequest("s1", "c1", "write", {}, "x = 1"), decided.append)
    message(view, {"event": "click", "target": "decide", "ask": "c1", "decision": "maybe"})
    message(view, {"event": "click", "target": "other", "ask": "c1", "decision": "allow"})
    assert decided == []
    message(view, {"event": "click", "target": "decide", "ask": "c1", "decision": "allow"})
    assert decided == [Decision.ALLOW]


async def test_a_decide_click_for_a_prompt_no_longer_open_changes_nothing():
    view, _, _ = make_view()
    decided: list[Decision] = []
    remove = view.ask_permission(PermissionRequest("s1", "c1", "write", {}, ""), decided.append)
    remove()
    message(view, {"event": "click", "target": "decide", "ask": "c1", "decision": "allow"})
    assert decided == []


def test_forget_drops_one_sessions_allowances_or_all_of_them():
    policy = PermissionPolicy()
    policy._session_allowed.update({("s1", "bash"), ("s2", "bash")})
    policy.forget("s1")
    assert not policy.allowed_for_session("s1", "bash")
    assert policy.allowed_for_session("s2", "bash")
    policy.forget()
    assert not policy.allowed_for_session("s2", "bash")


def test_a_pending_write_says_record_for_one_and_records_for_more():
    path = Path("/data/s1.jsonl")
    assert str(PendingWrites(path, 1, "No space left on device")) == (
        "1 record not yet written to /data/s1.jsonl: No space left on device"
    )
    assert str(PendingWrites(path, 2, "Read-only file system")).startswith("2 records not yet")


async def test_a_title_request_runs_as_a_task_named_crush_title(store):
    """The name tells a title request apart among the kernel's tasks (and the tests' check
    that none is left running)."""
    session = store.create_session(title=prompt_title(PROMPT))
    agent, _ = agent_with_titles(store, ["A title"])
    gate = agent.title_model.gate(step=0, after_tokens=1)
    await within(agent.run(SessionAgentCall(session.id, PROMPT)))
    await within(gate.reached())
    assert "crush-title" in {task.get_name() for task in asyncio.all_tasks()}
    gate.release()
    agent.titler.cancel_all()
