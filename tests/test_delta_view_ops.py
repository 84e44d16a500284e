"""The delta run view on its own: what it sends the page (checked by replaying its ops into
a copy of the page's state), batching, status line, fallback bundles, clicks from another
thread, re-sync, and the permission prompt."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from support.bounded import within

from jupyter_crush.core.events import (
    ContextUsed,
    Delta,
    Finished,
    PermissionAsked,
    Queued,
    Started,
    ToolFinished,
    ToolStarted,
)
from jupyter_crush.core.message import (
    FinishReason,
    ImagePart,
    Message,
    Role,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from jupyter_crush.core.tokens import ContextWindow, Meter
from jupyter_crush.core.tools import Decision, PermissionRequest
from jupyter_crush.view.base import WIDGET_VIEW_MIME, RunLabels
from jupyter_crush.view.comm import take_clicks_where_sent
from jupyter_crush.view.delta import BATCH_CHARS, MODULE_HASH, DeltaRunView, view_module
from jupyter_crush.view.permissions import WidgetPermissionBroker, permission_summary


class Page:
    """What a synced view in the page holds: the view's snapshot, then its ops applied."""

    def __init__(self, view: DeltaRunView) -> None:
        self.messages: list[dict[str, Any]] = []
        self.threads: list[str] = []
        snapshot = view.snapshot()
        self.seq = snapshot["seq"]
        self.state = json.loads(json.dumps(snapshot["snapshot"]))
        view.widget.send = self._receive  # the comm, as the page sees it

    def _receive(self, content: dict[str, Any], buffers: Any = None) -> None:
        content = json.loads(json.dumps(content))  # what goes over the wire
        self.messages.append(content)
        self.threads.append(threading.current_thread().name)
        if "ops" not in content:
            return
        assert content["seq"] == self.seq + 1, "a gap in the ops"
        self.seq = content["seq"]
        for op, value in content["ops"]:
            self.apply(op, value)

    def apply(self, op: str, value: Any) -> None:
        state = self.state
        if op in ("answer+", "reasoning+"):
            state[op[:-1]] += value
        elif op in ("answer=", "reasoning="):
            state[op[:-1]] = value
        elif op == "tool":
            rows = [r for r in state["tools"] if r["call_id"] != value["call_id"]]
            known = [r["call_id"] for r in state["tools"]]
            if value["call_id"] in known:
                rows.insert(known.index(value["call_id"]), value)
            else:
                rows.append(value)
            state["tools"] = rows
        elif op == "ask":
            state["asks"].append(value)
        elif op == "asked":
            state["asks"] = [a for a in state["asks"] if a["id"] != value]
        elif op in ("status", "stop"):
            state[op] = value
        else:
            raise AssertionError(f"unknown op {op}")

    @property
    def ops_messages(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if "ops" in m]

    @property
    def status(self) -> str:
        return f"{self.state['status']['head']} · {self.state['status']['tail']}"


def make_view(**kwargs) -> tuple[DeltaRunView, Page, list[str]]:
    stops: list[str] = []
    kwargs.setdefault("redraw_rate", 30.0)
    view = DeltaRunView(
        RunLabels("analysis", "scripted:model"),
        on_stop=lambda: stops.append(threading.current_thread().name),
        session_id="s1",
        loop=asyncio.get_running_loop(),
        **kwargs,
    )
    return view, Page(view), stops


def in_sync(view: DeltaRunView, page: Page) -> bool:
    return page.state == json.loads(json.dumps(view.snapshot()["snapshot"]))


async def test_token_deltas_are_coalesced_into_few_messages():
    # A clock that stands still: however slow the machine, no interval passes in the loop.
    view, page, _ = make_view(redraw_rate=30.0, clock=lambda: 100.0)
    view.on_event(Started("u1"))
    message = Message("s1", Role.ASSISTANT)
    base = len(page.ops_messages)
    for i in range(1000):
        message.append_text(f"t{i} ")
        view.on_event(Delta(message))
    # 1000 tokens in one loop turn: the first at once, the rest wait for a timer.
    assert len(page.ops_messages) - base == 1
    await asyncio.sleep(0.4)
    assert len(page.ops_messages) - base == 2
    assert page.state["answer"] == message.text


async def test_the_answer_goes_out_once_whatever_its_length():
    # Each character is sent once: no message re-sends what the page already has.
    view, page, _ = make_view(redraw_rate=0)
    view.on_event(Started("u1"))
    message = Message("s1", Role.ASSISTANT)
    code = "".join(f"    row_{i} = compute({i}, 'x')  # {i}\n" for i in range(1600))
    text = f"Here it is:\n\n```python\n{code}```\n\nDone."
    for start in range(0, len(text), 7):
        message.append_text(text[start : start + 7])
        view.on_event(Delta(message))
        if start % 700 == 0:
            await asyncio.sleep(0)
    view.on_event(Finished(FinishReason.END_TURN))
    assert page.state["answer"] == text
    appended = [v for m in page.ops_messages for op, v in m["ops"] if op == "answer+"]
    assert "".join(appended) == text
    assert not [op for m in page.ops_messages for op, _ in m["ops"] if op == "answer="]


async def test_small_deltas_trickle_out_in_batches():
    # Fewer than BATCH_CHARS characters waiting: one message per trickle interval, not
    # one per redraw-rate tick, so each message's ~600-byte envelope carries a batch.
    view, page, _ = make_view(redraw_rate=1000)
    view.on_event(Started("u1"))
    message = Message("s1", Role.ASSISTANT)
    loop = asyncio.get_running_loop()
    start, base = loop.time(), len(page.ops_messages)
    while loop.time() - start < 0.6:
        message.append_text("ab ")
        view.on_event(Delta(message))
        await asyncio.sleep(0.002)
    sent = len(page.ops_messages) - base
    assert sent <= 5, sent  # the first token, then at most one per 0.25 s
    message.append_text("x" * (2 * BATCH_CHARS))
    view.on_event(Delta(message))
    await asyncio.sleep(0.01)
    assert len(page.ops_messages) - base == sent + 1  # a full batch goes at the rate
    await asyncio.sleep(0.3)
    assert page.state["answer"] == message.text


async def test_streamed_tokens_keep_the_pending_redraw_timer(monkeypatch):
    # The view's clock and the loop's are read a few microseconds apart, so each token asks
    # for "the same" redraw time a sliver earlier or later than the timer's: that must not
    # cancel and replace the timer each token.
    loop = asyncio.get_running_loop()
    slivers = itertools.cycle([0.0, 5e-5])
    view, page, _ = make_view(redraw_rate=30.0, clock=lambda: loop.time() + next(slivers))
    view.on_event(Started("u1"))
    message = Message("s1", Role.ASSISTANT)
    message.append_text("first ")
    view.on_event(Delta(message))  # drawn at once: from here on, tokens wait for a timer
    timers = []
    call_later = loop.call_later
    monkeypatch.setattr(loop, "call_later", lambda *a: timers.append(a) or call_later(*a))
    for i in range(200):
        message.append_text(f"t{i} ")
        view.on_event(Delta(message))
    assert len(timers) == 1
    await asyncio.sleep(0.4)
    assert page.state["answer"] == message.text


async def test_the_first_token_is_sent_at_once_even_right_after_a_status_draw():
    view, page, _ = make_view(redraw_rate=1.0)
    view.on_event(Started("u1"))
    view.on_event(Delta(Message("s1", Role.ASSISTANT)))  # no text yet: a status redraw
    message = Message("s1", Role.ASSISTANT)
    message.append_text("Hello")
    view.on_event(Delta(message))
    assert page.state["answer"] == "Hello"
    message.append_text(" world")
    view.on_event(Delta(message))
    assert page.state["answer"] == "Hello"  # later tokens are coalesced again


async def test_status_line_follows_the_run():
    view, page, _ = make_view()
    assert "accepted" in view.status_text() and "accepted" in page.status
    view.on_event(Queued(2))
    assert "queued (position 2)" in page.status
    view.on_event(Started("u1"))
    assert "running" in page.status and page.state["status"]["ticking"]
    view.on_event(Finished(FinishReason.END_TURN, "", Usage(10, 5), 0.0123))
    text = view.status_text()
    assert "done" in text and "15 tokens" in text and "$0.0123" in text
    assert "done" in page.status and "15 tokens" in page.status and "$0.0123" in page.status
    assert not page.state["status"]["ticking"]
    assert page.state["stop"] == "disabled"


async def test_the_elapsed_time_is_not_resent_while_nothing_else_changes():
    # The page ticks the clock itself; a draw with only time passing sends nothing.
    view, page, _ = make_view()
    view.on_event(Started("u1"))
    before = len(page.messages)
    await asyncio.sleep(0.05)
    view._draw()
    assert len(page.messages) == before


async def test_error_and_cancel_states():
    view, page, _ = make_view()
    view.on_event(Finished(FinishReason.ERROR, "openai HTTP 401: bad key"))
    assert view.phase == "error" and "error: openai HTTP 401: bad key" in page.status
    view2, page2, _ = make_view()
    view2.on_event(Finished(FinishReason.CANCELED, "User canceled request"))
    assert view2.phase == "canceled" and "canceled" in page2.status


async def test_replay_says_which_prompt_it_answers_on_the_status_line():
    note = "replaying a recorded answer to: “What's the weather in Florence, Italy?”"
    view = DeltaRunView(
        RunLabels("s", "replay:anthropic-thinking", replay=note),
        on_stop=lambda: None,
        loop=asyncio.get_running_loop(),
    )
    page = Page(view)
    head = f"session s · replay:anthropic-thinking · {note}"
    assert view.status_text().startswith(f"{head} · ")
    assert page.state["status"]["head"].startswith(head)
    # The saved output (Markdown and plain text) keeps it on the same line.
    assert note in view.to_markdown().splitlines()[0]
    assert note in view.to_text().splitlines()[0]


async def test_bundles_carry_a_static_fallback():
    view, page, _ = make_view()
    view.on_event(Started("u1"))
    message = Message("s1", Role.ASSISTANT)
    message.append_reasoning("thinking <hard>")
    message.append_text("The **answer**.")
    message.parts.append(ToolCallPart("c1", "python", '{"code": "1+1"}', finished=True))
    view.on_event(Delta(message))
    view.on_event(ToolFinished(message.parts[-1], ToolResultPart("c1", "python", "2")))
    live, _metadata = view._repr_mimebundle_()
    assert WIDGET_VIEW_MIME in live and "The **answer**." in live["text/markdown"]
    view.on_event(Finished(FinishReason.END_TURN))
    assert page.state["reasoning"] == "thinking <hard>"  # the page escapes it
    (tool,) = page.state["tools"]
    assert (tool["name"], tool["state"], tool["result"]) == ("python", "ok", "2")
    final = view.static_bundle()
    assert WIDGET_VIEW_MIME not in final
    md = final["text/markdown"]
    assert "The **answer**." in md
    assert "thinking &lt;hard&gt;" in md  # reasoning is escaped, inside <details>
    assert "tool python · ok" in md and "1+1" in md
    # Watched, the page renders the Markdown: the plain text is the status line alone.
    assert final["text/plain"] == f"[crush] {view.status_text()}"
    # Headless (nbconvert, papermill), readers of plain text get the whole answer there.
    view.interactive = False
    assert view.static_bundle()["text/plain"].endswith("\n\nThe **answer**.")


async def test_tool_calls_are_sent_when_they_change():
    view, page, _ = make_view(redraw_rate=0)
    view.on_event(Started("u1"))
    message = Message("s1", Role.ASSISTANT)
    call = ToolCallPart("c1", "python", '{"code": ', finished=False)
    message.parts.append(call)
    view.on_event(Delta(message))
    view._draw()
    assert [r["state"] for r in page.state["tools"]] == ["streaming arguments"]
    call.input += '"1+1"}'
    call.finished = True
    view.on_event(ToolStarted(call))
    view._draw()
    assert page.state["tools"][0]["state"] == "running"
    assert '"code": "1+1"' in page.state["tools"][0]["arguments"]
    sent = len(page.ops_messages)
    view._draw()
    assert len(page.ops_messages) == sent  # unchanged: nothing sent
    view.on_event(ToolFinished(call, ToolResultPart("c1", "python", "2", is_error=True)))
    view._draw()
    assert page.state["tools"][0]["state"] == "error"
    assert in_sync(view, page)


async def test_a_tools_images_go_to_the_page_once_as_thumbnails():
    view, page, _ = make_view(redraw_rate=0)
    view.on_event(Started("u1"))
    call = ToolCallPart("c1", "python", "{}", finished=True)
    image = ImagePart("image/png", "0" * 64 + ".png", 2, 1, 70, "Figure 1")
    image.data = b"\x89PNG-bytes"
    view.on_event(ToolFinished(call, ToolResultPart("c1", "python", "drawn", images=[image])))
    view._draw()
    (row,) = page.state["tools"]
    assert row["images"].startswith('<img src="data:image/png;base64,iVBORy1ieXRlcw=="')
    assert 'alt="[image Figure 1: 2x1 PNG, 1 KB]"' in row["images"]
    image.data = None  # were it read again, it would now be "(file missing)"
    view._draw()
    assert page.state["tools"][0]["images"] == row["images"]


def click(view: DeltaRunView, content: dict[str, Any], thread: str = "subshell") -> None:
    """A page message delivered on another thread, as a subshell delivers it."""
    clicker = threading.Thread(
        target=view._on_message, args=(view.widget, content, []), name=thread
    )
    clicker.start()
    clicker.join()


STOP = {"event": "click", "target": "stop"}


async def test_stop_click_from_another_thread_cancels_and_says_stopping_from_there():
    # A blocking cell holds the loop: the click's own thread records the cancel and tells
    # the page, and the status line says "stopping" once the loop runs again.
    view, page, stops = make_view()
    view.on_event(Started("u1"))
    click(view, STOP)
    assert stops == ["subshell"]  # the cancel itself runs right there (it is thread-safe)
    assert view.stop_requested
    assert page.state["stop"] == "stopping"
    assert page.threads[-1] == "subshell"
    await asyncio.sleep(0)
    assert "stopping" in page.status
    view.on_event(Finished(FinishReason.CANCELED))
    assert "canceled" in page.status and "stopping" not in page.status
    assert page.state["stop"] == "disabled"
    assert in_sync(view, page)


async def test_stop_clicked_after_the_run_ended_changes_nothing():
    view, page, stops = make_view()
    view.on_event(Started("u1"))
    view.on_event(Finished(FinishReason.END_TURN))
    sent = len(page.messages)
    click(view, STOP, thread="MainThread-late")  # a click already on its way
    assert stops == ["MainThread-late"]  # the cancel is harmless on an idle session
    assert not view.stop_requested
    assert len(page.messages) == sent and page.state["stop"] == "disabled"


def test_clicks_are_taken_on_the_subshell_the_page_sent_them_on():
    # ipykernel 7.4 asks the comm where each comm_msg goes; by default, to the subshell of
    # the kernel's last message on that comm (the main shell, for a widget a cell made).
    asked = []

    def kernel_route(data, sent_to):
        asked.append(data)
        return None

    comm = SimpleNamespace(_reply_subshell_for=kernel_route)
    take_clicks_where_sent(SimpleNamespace(comm=comm))
    click = {"method": "custom", "content": {"event": "click"}}
    stop = {"method": "custom", "content": STOP}
    assert comm._reply_subshell_for(click, "sub-1") == "sub-1"
    assert comm._reply_subshell_for(stop, "sub-1") == "sub-1"
    assert comm._reply_subshell_for(click, None) is None
    update = {"method": "update", "state": {"description": "x"}}
    assert comm._reply_subshell_for(update, "sub-1") is None
    sync = {"method": "custom", "content": {"event": "sync", "nonce": "n"}}
    assert comm._reply_subshell_for(sync, "sub-1") is None
    assert comm._reply_subshell_for({"method": "custom", "content": "click"}, "sub-1") is None
    assert asked == [update, sync, {"method": "custom", "content": "click"}]
    # A comm without that routing (another kernel, or no kernel) is left as it is.
    plain = SimpleNamespace()
    take_clicks_where_sent(SimpleNamespace(comm=plain))
    assert not hasattr(plain, "_reply_subshell_for")


async def test_a_view_that_syncs_mid_stream_gets_the_whole_state_then_the_ops_after_it():
    # A reloaded page renders the view anew: it asks for the state and takes the ops that
    # follow the snapshot's seq.
    view, page, _ = make_view(redraw_rate=0)
    view.on_event(Started("u1"))
    message = Message("s1", Role.ASSISTANT)
    message.append_reasoning("hmm")
    message.append_text("Intro.\n\n```python\nx = 1\n")
    view.on_event(Delta(message))
    view._draw()
    click(view, {"event": "sync", "nonce": "n1"}, thread="shell")
    message.append_text("y = 2\n")  # streams on before the loop answers the sync
    view.on_event(Delta(message))
    await asyncio.sleep(0)
    snapshot = page.messages[-1]
    assert snapshot["for"] == "n1" and "ops" not in snapshot
    assert snapshot["seq"] == page.seq
    reloaded = snapshot["snapshot"]
    assert reloaded["answer"] == message.text and reloaded["reasoning"] == "hmm"
    assert reloaded["status"] == page.state["status"]
    message.append_text("```\n\nDone.")
    view.on_event(Delta(message))
    view._draw()
    after = [m for m in page.ops_messages if m["seq"] > snapshot["seq"]]
    for m in after:
        for op, value in m["ops"]:
            if op == "answer+":
                reloaded["answer"] += value
    assert reloaded["answer"] == message.text


async def test_the_models_state_carries_the_page_state_as_of_when_it_is_asked():
    # At comm open the model's state starts the page's copy (a fresh view paints the first
    # token with no round trip); a reloaded page restoring the model asks for its state
    # again and gets the state as of then, and the ops after it continue it.
    view, page, _ = make_view(redraw_rate=0)
    opened = json.loads(json.dumps(view.widget.get_state()["start"]))
    assert opened == {"seq": page.seq, "snapshot": page.state}
    view.on_event(Started("u1"))
    message = Message("s1", Role.ASSISTANT)
    message.append_text("Intro.\n\n```python\nx = 1\n")
    view.on_event(Delta(message))
    view._draw()
    restored = json.loads(json.dumps(view.widget.get_state()["start"]))
    assert restored["seq"] == page.seq > 0
    assert restored["snapshot"] == page.state
    seq = restored["seq"]
    message.append_text("y = 2\n```\n\nDone.")
    view.on_event(Delta(message))
    view.on_event(Finished(FinishReason.END_TURN))
    restored_page = Page.__new__(Page)
    restored_page.state = restored["snapshot"]
    for m in page.ops_messages:
        if m["seq"] > seq:
            for op, value in m["ops"]:
                restored_page.apply(op, value)
    assert restored_page.state == page.state
    assert restored_page.state["answer"] == message.text
    # Only a whole state carries it: a state update of one trait does not.
    assert "start" not in view.widget.get_state("protocol")


async def test_the_context_meter_is_flagged_near_the_reserve():
    limits = ContextWindow(window=200_000, output=8_000)  # budget 160k
    view, page, _ = make_view()
    view.on_event(Started("u1"))
    view.on_event(ContextUsed(Meter(41_000, limits)))
    assert "41k / 200k" in page.status and page.state["status"]["warn"] == ""
    view.on_event(ContextUsed(Meter(170_000, limits)))
    assert page.state["status"]["warn"] == "170k / 200k"
    assert "170k / 200k" in page.state["status"]["head"]


async def test_a_text_that_is_no_longer_a_prefix_is_sent_whole():
    view, page, _ = make_view(redraw_rate=0)
    view.on_event(Started("u1"))
    first = Message("s1", Role.ASSISTANT)
    first.append_text("abc")
    view.on_event(Delta(first))
    first.parts[-1].text = "xbc"  # never happens in a stream, but the page must follow
    view._draw()
    assert page.ops_messages[-1]["ops"] == [["answer=", "xbc"]]
    assert page.state["answer"] == "xbc"


async def test_wait_returns_when_finished():
    view, _, _ = make_view()
    waiter = asyncio.ensure_future(view.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    view.on_event(Finished(FinishReason.END_TURN))
    await asyncio.wait_for(waiter, 1)
    await within(view.wait())  # returns at once once finished


def request() -> PermissionRequest:
    return PermissionRequest("s1", "c1", "bash", {"command": "rm -rf build"}, "rm -rf build")


@pytest.mark.parametrize(
    "decision", [Decision.ALLOW, Decision.ALLOW_SESSION, Decision.DENY], ids=str
)
async def test_permission_prompt_answers_from_a_click_on_another_thread(decision):
    view, page, _ = make_view()
    broker = WidgetPermissionBroker({"s1": view})
    asking = asyncio.ensure_future(broker.ask(request()))
    await asyncio.sleep(0)
    (ask,) = page.state["asks"]
    assert ask == {"id": "c1", "tool": "bash", "what": "rm -rf build"}
    assert view.waiting_permission and "waiting for permission" in page.status
    click(view, {"event": "click", "target": "decide", "ask": "c1", "decision": str(decision)})
    assert await asyncio.wait_for(asking, 1) == decision
    assert page.state["asks"] == []
    assert not view.waiting_permission
    # A second click on the gone prompt (two views of one run) decides nothing.
    click(view, {"event": "click", "target": "decide", "ask": "c1", "decision": "deny"})


async def test_permission_prompt_goes_away_when_the_run_is_canceled():
    view, page, _ = make_view()
    broker = WidgetPermissionBroker({"s1": view})
    asking = asyncio.ensure_future(broker.ask(request()))
    await asyncio.sleep(0)
    assert len(page.state["asks"]) == 1
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    assert page.state["asks"] == []


async def test_permission_without_a_view_is_denied():
    assert await WidgetPermissionBroker({}).ask(request()) == Decision.DENY


async def test_permission_granted_without_a_prompt_clears_the_waiting_state():
    # yolo or allowed tools: the agent announces the ask, then starts the tool directly.
    view, page, _ = make_view()
    view.on_event(Started("u1"))
    view.on_event(PermissionAsked(request()))
    assert "waiting for permission" in page.status
    view.on_event(ToolStarted(ToolCallPart("c1", "bash", "{}", finished=True)))
    assert "running" in view.status_text()


def test_a_prompt_without_a_summary_shows_the_arguments_as_indented_json():
    bare = PermissionRequest("s1", "c1", "mystery", {"path": "données/a.csv", "n": 2}, "")
    assert permission_summary(bare) == '{\n  "path": "données/a.csv",\n  "n": 2\n}'
    assert permission_summary(request()) == "rm -rf build"


async def test_session_title_is_literal_in_the_static_markdown():
    view = DeltaRunView(
        RunLabels("<b>x</b> *y* [z](http://e)", "m:n"),
        on_stop=lambda: None,
        loop=asyncio.get_running_loop(),
    )
    md = view.to_markdown()
    assert "\\<b\\>x\\</b\\> \\*y\\* \\[z\\](http://e)" in md
    # The live status line goes to the page as text (the page escapes it).
    assert view.snapshot()["snapshot"]["status"]["head"].startswith("session <b>x</b>")


async def test_close_releases_the_views_comm():
    view, _, _ = make_view()
    view.on_event(Started("u1"))
    assert view.widget.layout is None  # one comm per run, no Layout model
    view.close()
    assert view.widget.comm is None  # closed: no comm left behind
    view.on_event(Finished(FinishReason.END_TURN))  # nothing is sent on a closed comm
    assert view_module().comm is not None  # the kernel's module stays for the next runs


async def test_the_page_module_goes_once_per_kernel_not_with_each_run():
    first, _, _ = make_view()
    second, _, _ = make_view()
    module = view_module()
    # Each run's model carries the loader and names the one module model.
    for view in (first, second):
        state = view.widget.get_state()
        assert state["module_id"] == module.model_id and state["module_hash"] == MODULE_HASH
        assert len(state["_esm"]) < 2_000 < len(module.esm)
    # Closed (Widget.close_all()), the next run opens it again.
    closed_id = module.model_id
    module.close()
    third, _, _ = make_view()
    assert third.widget.get_state()["module_id"] == view_module().model_id != closed_id
