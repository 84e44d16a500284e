"""The ipywidgets run view (``CrushConfig.run_view = "widgets"``): coalesced redraws,
frozen paragraphs, the Stop button's state, and permission buttons."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jupyter_crush.core.events import ContextUsed, Delta, Finished, Started
from jupyter_crush.core.message import FinishReason, Message, Role, ToolCallPart
from jupyter_crush.core.tokens import ContextWindow, Meter
from jupyter_crush.core.tools import Decision, PermissionRequest
from jupyter_crush.view.base import RunLabels
from jupyter_crush.view.permissions import WidgetPermissionBroker
from jupyter_crush.view.widgets import WidgetsRunView, split_paragraphs


def make_view(**kwargs) -> tuple[WidgetsRunView, list[str]]:
    stops: list[str] = []
    kwargs.setdefault("redraw_rate", 30.0)
    view = WidgetsRunView(
        RunLabels("analysis", "scripted:model"),
        on_stop=lambda: stops.append(threading.current_thread().name),
        session_id="s1",
        loop=asyncio.get_running_loop(),
        **kwargs,
    )
    return view, stops


async def test_token_deltas_are_coalesced_into_few_redraws():
    # A clock that stands still: however slow the machine, no interval passes in the loop.
    view, _ = make_view(redraw_rate=30.0, clock=lambda: 100.0)
    view.on_event(Started("u1"))
    message = Message("s1", Role.ASSISTANT)
    base = view.redraws
    for i in range(1000):
        message.append_text(f"t{i} ")
        view.on_event(Delta(message))
    # 1000 tokens in one loop turn: at most one immediate redraw and one timer pending.
    assert view.redraws - base <= 1
    await asyncio.sleep(0.1)
    assert view.redraws - base <= 2
    assert "".join(view.answer_parts) == message.text


async def test_the_first_token_is_drawn_at_once_even_right_after_a_status_draw():
    view, _ = make_view(redraw_rate=1.0)  # a second between coalesced redraws
    view.on_event(Started("u1"))
    view.on_event(Delta(Message("s1", Role.ASSISTANT)))  # no text yet: a status redraw
    message = Message("s1", Role.ASSISTANT)
    message.append_text("Hello")
    view.on_event(Delta(message))
    assert view.answer_parts == ["Hello"]  # on screen now, not a second later
    message.append_text(" world")
    view.on_event(Delta(message))
    assert view.answer_parts == ["Hello"]  # later tokens are coalesced again


async def test_redraws_are_rate_limited_over_time():
    view, _ = make_view(redraw_rate=20.0)
    view.on_event(Started("u1"))
    message = Message("s1", Role.ASSISTANT)
    loop = asyncio.get_running_loop()
    start, base = loop.time(), view.redraws
    while loop.time() - start < 0.5:
        message.append_text("x")
        view.on_event(Delta(message))
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.1)
    # 20/s over ~0.6 s, plus the first immediate draw and one trailing timer.
    assert view.redraws - base <= 15
    assert "".join(view.answer_parts) == message.text


async def test_stop_clicked_while_the_loop_is_held_shows_stopping_at_once():
    # A blocking cell holds the loop: the click's own thread marks the button, and the
    # status line says "stopping" once the loop runs again.
    view, stops = make_view()
    view.on_event(Started("u1"))
    clicker = threading.Thread(target=view.stop_button.click, name="subshell")
    clicker.start()
    clicker.join()
    assert stops == ["subshell"]
    assert view.stop_requested
    assert view.stop_button.disabled and view.stop_button.description == "Stopping…"
    await asyncio.sleep(0)
    assert "stopping" in view.status.value
    view.on_event(Finished(FinishReason.CANCELED))
    assert "canceled" in view.status.value and "stopping" not in view.status.value


def request() -> PermissionRequest:
    return PermissionRequest("s1", "c1", "bash", {"command": "rm -rf build"}, "rm -rf build")


def buttons(view: WidgetsRunView) -> dict:
    (prompt,) = view.permission.children
    text, row = prompt.children
    assert "rm -rf build" in text.value and "bash" in text.value
    return {b.description: b for b in row.children}


@pytest.mark.parametrize(
    ("label", "decision"),
    [("Allow", Decision.ALLOW), ("Allow for session", Decision.ALLOW_SESSION), ("Deny", "deny")],
)
async def test_permission_prompt_answers_from_a_click_on_another_thread(label, decision):
    view, _ = make_view()
    broker = WidgetPermissionBroker({"s1": view})
    asking = asyncio.ensure_future(broker.ask(request()))
    await asyncio.sleep(0)
    assert view.waiting_permission and "waiting for permission" in view.status_text()
    clicker = threading.Thread(target=buttons(view)[label].click)
    clicker.start()
    clicker.join()
    assert await asyncio.wait_for(asking, 1) == decision
    assert view.permission.children == ()
    assert not view.waiting_permission


async def test_permission_prompt_goes_away_when_the_run_is_canceled():
    view, _ = make_view()
    broker = WidgetPermissionBroker({"s1": view})
    asking = asyncio.ensure_future(broker.ask(request()))
    await asyncio.sleep(0)
    assert len(view.permission.children) == 1
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    assert view.permission.children == ()


async def test_finished_paragraphs_freeze_and_only_the_tail_redraws():
    view, _ = make_view(redraw_rate=0)
    view.on_event(Started("u1"))
    message = Message("s1", Role.ASSISTANT)
    text = "Intro.\n\n```python\nx = 1\n\ny = 2\n```\n\n- a\n- b\n\nTail being writ"
    for char in text:
        message.append_text(char)
        view.on_event(Delta(message))
    assert view.answer_parts == [
        "Intro.\n\n",
        "```python\nx = 1\n\ny = 2\n```\n\n",  # no split inside a code fence
        "- a\n- b\n\n",
        "Tail being writ",
    ]
    frozen = view.answer.children[0]
    message.append_text("ten.")
    view.on_event(Delta(message))
    assert view.answer.children[0] is frozen
    assert view.answer_parts[-1] == "Tail being written."


@given(st.text(alphabet="ab`~ \n", max_size=80), st.integers(min_value=0, max_value=80))
def test_paragraph_split_is_stable_as_text_grows(text, cut):
    prefix = text[:cut]
    chunks, tail = split_paragraphs(prefix)
    assert "".join(chunks) + tail == prefix
    longer, _ = split_paragraphs(text)
    assert longer[: len(chunks)] == chunks


async def test_close_releases_every_widget_of_the_view():
    view, _ = make_view()
    view.on_event(Started("u1"))
    message = Message("s1", Role.ASSISTANT)
    message.append_text("one\n\ntwo")
    message.parts.append(ToolCallPart("c1", "python", "{}", finished=True))
    view.on_event(Delta(message))
    view._draw()
    mine = [
        view.root,
        view.stop_button,
        view.stop_button.layout,
        view.stop_button.style,
        view.status,
        *view.answer.children,
        *view.tools.children,
    ]
    assert len(view.answer.children) == 2 and len(view.tools.children) == 1
    assert all(w.comm is not None for w in mine)
    view.close()
    assert all(w.comm is None for w in mine)  # closed: no comm left behind


async def test_the_meter_turns_amber_within_the_reserve_and_back_after_a_summary():
    view, _ = make_view()
    limits = ContextWindow(window=100_000, output=4096)  # reserve 20k: budget 80k
    view.on_event(ContextUsed(Meter(41_000, limits)))
    assert not view.context_near_limit
    assert "41k / 100k" in view.status.value and "#b45309" not in view.status.value
    view.on_event(ContextUsed(Meter(85_000, limits)))
    assert view.context_near_limit
    assert '<span style="color:#b45309">85k / 100k</span>' in view.status.value
    view.on_event(ContextUsed(Meter(2_000, limits)))  # the request after the summary
    assert not view.context_near_limit and "#b45309" not in view.status.value
