"""Dispatch holes: each test pins one window in which a stated invariant used to break.

Every accepted prompt ends in exactly one terminal record; a cancel covers exactly the
prompts accepted at or before it; the session's active turn, queue and accept count return
to empty whatever the store, the observers, the tools or the event loop do.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import types

import pytest
from support.bounded import until, within
from support.interleavings import abandon_tasks
from test_agent import Recorder, make_agent

from jupyter_crush import FinishReason, Role, SessionAgent, SessionAgentCall
from jupyter_crush.core.events import Finished, Folded
from jupyter_crush.core.model import ToolSpec
from jupyter_crush.core.tools import Tool, ToolResult
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall


def tool(name: str, run) -> Tool:
    return Tool(ToolSpec(name, name, {"type": "object"}), run)


async def settle(*recorders: Recorder) -> None:
    await until(lambda: all(r.finished for r in recorders))


def assert_idle(agent: SessionAgent, session_id: str) -> None:
    assert not agent.is_session_busy(session_id)
    assert agent.queued_prompts(session_id) == 0
    state = agent._dispatch.state(session_id)
    assert state.open_accepts == 0 and state.active is None and not state.queue


# -- the fold never joins a prompt into a turn a cancel already covers -------------------------


async def test_prompt_accepted_after_a_cross_thread_cancel_is_not_folded_into_the_canceled_turn(
    store,
):
    """The tool result has arrived (the turn's wake-up is queued); Stop lands from another
    thread (its task.cancel() queued behind that wake-up); a new prompt then queues."""
    session = store.create_session()
    release, started = asyncio.Event(), asyncio.Event()

    async def wait(arguments, context):
        started.set()
        await release.wait()
        return ToolResult("done")

    agent, model = make_agent(
        store, Reply(tool_calls=[ToolCall("wait")]), "the next answer", tools=[tool("wait", wait)]
    )
    first = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first")))
    await within(started.wait())
    release.set()  # the turn's wake-up is now on the loop's queue
    stop = threading.Thread(target=agent.cancel, args=(session.id,))
    stop.start()
    stop.join()  # the mark is raised; its task.cancel() waits behind the wake-up
    later = Recorder()
    assert await within(agent.run(SessionAgentCall(session.id, "later", observer=later))) is None
    assert (await within(first)).reason is FinishReason.CANCELED
    await settle(later)
    assert not [e for e in later.events if isinstance(e, Folded)]
    assert [e.reason for e in later.finished] == [FinishReason.END_TURN]
    # no request of the canceled turn carried the later prompt
    for request in model.requests:
        users = [m.text for m in request.messages if m.role is Role.USER]
        if "later" in users:
            assert request.messages[-1].text == "later"
    assert_idle(agent, session.id)


async def test_prompt_accepted_after_a_cancel_a_tool_absorbed_is_not_folded(store):
    """Same thread: the tool swallows the CancelledError and returns; the turn goes on."""
    session = store.create_session()
    started = asyncio.Event()

    async def absorbing(arguments, context):
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return ToolResult("stopped early")
        return ToolResult("unreachable")

    agent, model = make_agent(
        store,
        Reply(tool_calls=[ToolCall("absorb")]),
        "the next answer",
        "a third",
        tools=[tool("absorb", absorbing)],
    )
    first = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first")))
    await within(started.wait())
    agent.cancel(session.id)  # on the loop's thread: task.cancel() lands in the tool
    later = Recorder()
    assert await within(agent.run(SessionAgentCall(session.id, "later", observer=later))) is None
    assert (await within(first)).reason is FinishReason.CANCELED
    await settle(later)
    assert [e.reason for e in later.finished] == [FinishReason.END_TURN]
    assert len(model.requests) == 2  # the covered turn asked for no further step
    assert [m.text for m in model.requests[1].messages if m.role is Role.USER] == [
        "first",
        "later",
    ]
    assert_idle(agent, session.id)


# -- the store fails: the handoff happens anyway, and the failure is reported ------------------


class StoreFault:
    """Makes one store method raise OSError while ``armed``; counts the failures."""

    def __init__(self, monkeypatch, store, method: str) -> None:
        self.armed = False
        self.failures = 0
        real = getattr(store, method)

        def failing(*args, **kwargs):
            if self.armed:
                self.failures += 1
                raise OSError(28, "No space left on device")
            return real(*args, **kwargs)

        monkeypatch.setattr(store, method, failing)


class LoopErrors:
    """Exceptions that escaped to the loop's handler (a done-callback that raised)."""

    def __init__(self) -> None:
        self.contexts = []
        loop = asyncio.get_running_loop()
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(lambda _loop, context: self.contexts.append(context))

    def restore(self) -> None:
        asyncio.get_running_loop().set_exception_handler(self._previous)


ECHO = tool("echo", lambda arguments, context: asyncio.sleep(0, ToolResult("echo")))
TEXT = "first answer here"  # a store failure ends this turn at its first token, or at its end
TOOL = Reply(tool_calls=[ToolCall("echo")])  # adding the tool results fails


@pytest.mark.parametrize(
    ("method", "first_reply"),
    [("add_message", TOOL), ("update_message", TEXT), ("flush", TEXT), ("list_messages", TEXT)],
)
async def test_a_failing_store_hands_the_session_to_the_queued_prompt(
    store, monkeypatch, caplog, method, first_reply
):
    session = store.create_session()
    agent, model = make_agent(store, first_reply, "second answer", tools=[ECHO])
    gate = model.gate(step=0, after_tokens=0)
    fault = StoreFault(monkeypatch, store, method)

    class HealOnFinish(Recorder):
        def on_event(self, event):
            super().on_event(event)
            if isinstance(event, Finished):
                fault.armed = False  # the disk has room again for the next prompt

    errors = LoopErrors()
    try:
        first = HealOnFinish()
        if method == "list_messages":
            fault.armed = True  # fails as the turn reads its history
        task = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first", observer=first)))
        await asyncio.sleep(0)  # the first prompt is the active one
        if method != "list_messages":
            await within(gate.reached())
        second = Recorder()
        call = SessionAgentCall(session.id, "second", observer=second)
        assert await within(agent.run(call)) is None
        fault.armed = True
        gate.release()
        with caplog.at_level(logging.ERROR, logger="jupyter_crush"):
            result = await asyncio.wait_for(task, 5)
            await settle(second)
    finally:
        errors.restore()
    assert fault.failures
    assert result.reason is FinishReason.ERROR
    assert "transcript" in result.message and "No space left on device" in result.message
    assert [(e.reason, e.message) for e in first.finished] == [(result.reason, result.message)]
    assert [e.reason for e in second.finished] == [FinishReason.END_TURN]
    assert errors.contexts == []  # nothing escaped a done-callback
    assert any("No space left on device" in r.getMessage() for r in caplog.records)
    assert_idle(agent, session.id)


async def test_a_failed_terminal_record_says_what_was_and_was_not_written(store, monkeypatch):
    session = store.create_session()
    agent, model = make_agent(store, "one two three")
    gate = model.gate(step=0, after_tokens=1)
    fault = StoreFault(monkeypatch, store, "update_message")
    task = asyncio.create_task(agent.run(SessionAgentCall(session.id, "hi")))
    await within(gate.reached())
    fault.armed = True  # the prompt is written; the answer's canceled finish is not
    agent.cancel(session.id)
    gate.release()
    result = await within(task)
    assert result.reason is FinishReason.ERROR
    assert result.message == (
        "Canceled (User canceled request); the transcript store failed "
        "([Errno 28] No space left on device); saved: the prompt; not saved: the answer"
    )


async def test_a_store_failure_on_cancel_on_entry_is_reported_not_raised(store, monkeypatch):
    session = store.create_session()
    agent, _ = make_agent(store)
    accepted = agent.begin_accepted(session.id)
    agent.cancel(session.id)
    StoreFault(monkeypatch, store, "add_message").armed = True
    observer = Recorder()
    result = await within(
        agent.run(SessionAgentCall(session.id, "hi", accepted=accepted, observer=observer))
    )
    assert result.reason is FinishReason.ERROR
    assert "not saved: the prompt, the finish record" in result.message
    assert [e.reason for e in observer.finished] == [FinishReason.ERROR]
    assert_idle(agent, session.id)


async def test_a_store_failure_while_folding_reaches_every_folded_prompt(store, monkeypatch):
    """Two prompts join the running turn; writing the first one's record fails."""
    session = store.create_session()
    fault = StoreFault(monkeypatch, store, "add_message")

    async def arm(arguments, context):
        fault.armed = True
        return ToolResult("armed")

    agent, model = make_agent(
        store, Reply(tool_calls=[ToolCall("arm")]), "done", tools=[tool("arm", arm)]
    )
    gate = model.gate(step=0, after_tokens=0)
    first = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first")))
    await within(gate.reached())
    folded = [Recorder(), Recorder()]
    for text, recorder in zip(["b", "c"], folded, strict=True):
        await within(agent.run(SessionAgentCall(session.id, text, observer=recorder)))
    gate.release()
    assert (await within(first)).reason is FinishReason.ERROR
    assert [[e.reason for e in r.finished] for r in folded] == [[FinishReason.ERROR]] * 2
    assert_idle(agent, session.id)


async def test_shutdown_with_a_failing_store_records_what_it_can_and_stops_every_task(
    store, monkeypatch
):
    a, b = store.create_session("a"), store.create_session("b")
    agent, model = make_agent(store, "slow a", "slow b")
    gates = [model.gate(step=0, after_tokens=1), model.gate(step=1, after_tokens=1)]
    tasks = [asyncio.create_task(agent.run(SessionAgentCall(s.id, "go"))) for s in (a, b)]
    for gate in gates:
        await within(gate.reached())
    StoreFault(monkeypatch, store, "add_message").armed = True
    StoreFault(monkeypatch, store, "flush").armed = True
    agent.shutdown()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert [r.reason for r in results] == [FinishReason.ERROR] * 2
    assert all(r.message.startswith("Canceled (Kernel shut down)") for r in results)
    assert_idle(agent, a.id)
    assert_idle(agent, b.id)


# -- observers and listeners raising BaseException ---------------------------------------------


async def test_an_observer_raising_cancelled_error_does_not_abort_the_handoff(store):
    session = store.create_session()
    agent, model = make_agent(store, "first answer", "never")
    gate = model.gate(step=0, after_tokens=1)

    class CancelledWidget(Recorder):
        def on_event(self, event):
            super().on_event(event)
            raise asyncio.CancelledError  # e.g. a widget's future was cancelled

    first = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first")))
    await within(gate.reached())
    queued = [CancelledWidget(), Recorder()]
    for text, recorder in zip(["b", "c"], queued, strict=True):
        await within(agent.run(SessionAgentCall(session.id, text, observer=recorder)))
    agent.cancel(session.id)
    await within(first)
    await settle(*queued)
    assert [[e.reason for e in r.finished] for r in queued] == [[FinishReason.CANCELED]] * 2
    users = [m.text for m in store.list_messages(session.id) if m.role is Role.USER]
    assert users == ["first", "b", "c"]
    assert_idle(agent, session.id)


async def test_a_status_listener_raising_cancelled_error_does_not_break_the_run(store):
    session = store.create_session()
    agent, _ = make_agent(store, "fine")

    def listener(status):
        raise asyncio.CancelledError

    agent.add_status_listener(listener)
    result = await within(agent.run(SessionAgentCall(session.id, "hi")))
    assert result.reason is FinishReason.END_TURN
    assert_idle(agent, session.id)


# -- a tool's own CancelledError is not a user's cancel ----------------------------------------


async def test_a_tool_raising_cancelled_error_on_its_own_is_a_tool_error(store):
    session = store.create_session()

    async def inner_future_cancelled(arguments, context):
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        return await future  # raises CancelledError; nobody canceled the turn

    agent, _ = make_agent(
        store,
        Reply(tool_calls=[ToolCall("fetch")]),
        "answered anyway",
        tools=[tool("fetch", inner_future_cancelled)],
    )
    result = await within(agent.run(SessionAgentCall(session.id, "hi")))
    assert result.reason is FinishReason.END_TURN
    assert result.message != "User canceled request"
    [tool_result] = [r for m in store.list_messages(session.id) for r in m.tool_results]
    assert tool_result.is_error and "fetch" in tool_result.content


async def test_a_model_stream_raising_cancelled_error_on_its_own_ends_the_turn_as_an_error(store):
    """Nobody canceled the turn: the record says the stream was cancelled, not the user."""
    session = store.create_session()
    agent, _ = make_agent(store, Reply(text="partial", error=asyncio.CancelledError()))
    result = await within(agent.run(SessionAgentCall(session.id, "hi")))
    assert (result.reason, result.message) == (
        FinishReason.ERROR,
        "The model's stream was cancelled",
    )
    assert store.list_messages(session.id)[-1].finish.message == "The model's stream was cancelled"


# -- AcceptedRun misuse ------------------------------------------------------------------------


async def test_an_accept_of_another_session_is_refused_and_counts_stay_right(store):
    a, b = store.create_session("a"), store.create_session("b")
    agent, _ = make_agent(store, "x")
    accepted = agent.begin_accepted(a.id)
    with pytest.raises(ValueError, match="another session"):
        await within(agent.run(SessionAgentCall(b.id, "hi", accepted=accepted)))
    assert agent._dispatch.state(a.id).open_accepts == 0
    assert agent._dispatch.state(b.id).open_accepts == 0


async def test_an_accept_used_twice_is_refused(store):
    session = store.create_session()
    agent, _ = make_agent(store, "x", "y")
    accepted = agent.begin_accepted(session.id)
    await within(agent.run(SessionAgentCall(session.id, "hi", accepted=accepted)))
    agent.begin_accepted(session.id).close()
    with pytest.raises(ValueError, match="already"):
        await within(agent.run(SessionAgentCall(session.id, "again", accepted=accepted)))
    assert agent._dispatch.state(session.id).open_accepts == 0


async def test_an_accept_of_another_agent_is_refused(store):
    session = store.create_session()
    agent, _ = make_agent(store, "x")
    other, _ = make_agent(store, "y")
    accepted = other.begin_accepted(session.id)
    with pytest.raises(ValueError, match="another agent"):
        await within(agent.run(SessionAgentCall(session.id, "hi", accepted=accepted)))
    assert other._dispatch.state(session.id).open_accepts == 0


def test_idle_queries_on_unknown_sessions_keep_no_state(store):
    agent, _ = make_agent(store)
    for index in range(1000):
        agent.cancel(f"unknown-{index}")
        assert not agent.is_session_busy(f"unknown-{index}")
        assert agent.queued_prompts(f"unknown-{index}") == 0
    agent.cancel_all()
    assert agent._dispatch.session_ids() == []
    assert agent.status().running == []


async def test_a_session_is_busy_while_its_turn_runs_and_idle_once_it_ends(store):
    """What %crush sessions marks as running."""
    session = store.create_session()
    agent, model = make_agent(store, "an answer long enough to hold")
    gate = model.gate(step=0, after_tokens=1)
    assert not agent.is_session_busy(session.id)
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "hi")))
    await within(gate.reached())
    assert agent.is_session_busy(session.id)
    gate.release()
    await within(run)
    assert not agent.is_session_busy(session.id)


# -- the event loop closes with a prompt queued ------------------------------------------------


def test_a_loop_closing_with_a_prompt_queued_leaves_the_session_usable(store):
    session = store.create_session()
    agent, model = make_agent(store, "first answer", "second answer", "third answer")
    gate = model.gate(step=0, after_tokens=1)
    model.gate(step=1, after_tokens=1)  # the second prompt, once started, waits for the model
    queued = Recorder()

    async def leave_with_a_prompt_queued():
        first = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first")))
        await within(gate.reached())
        await within(agent.run(SessionAgentCall(session.id, "second", observer=queued)))
        # returning tears the loop down: the running turn is canceled, the queue handed off
        return first, asyncio.get_running_loop()

    first, closed = asyncio.run(leave_with_a_prompt_queued())
    assert first.done()  # canceled with the loop
    # What the garbage collector may do at any time: close the stranded turn mid-stream (the
    # second prompt's, started on the closing loop). It must end quietly, recording nothing.
    abandon_tasks(closed)
    result = asyncio.run(agent.run(SessionAgentCall(session.id, "third")))
    assert result is not None and result.reason is FinishReason.END_TURN
    assert [(e.reason, e.message) for e in queued.finished] == [
        (FinishReason.CANCELED, "Stopped: the event loop it ran on was closed")
    ]
    assert_idle(agent, session.id)
    messages = store.list_messages(session.id)
    assert [m.text for m in messages if m.role is Role.USER] == ["first", "second", "third"]
    assert sum(1 for m in messages if m.finish_reason is not None) == 3


def test_cancel_reaches_a_prompt_left_on_a_closed_loop(store):
    session = store.create_session()
    agent, model = make_agent(store, "first answer", "second answer")
    gate = model.gate(step=0, after_tokens=1)
    queued = Recorder()
    loop = asyncio.new_event_loop()
    first = loop.create_task(agent.run(SessionAgentCall(session.id, "first")))
    loop.run_until_complete(gate.reached())
    loop.run_until_complete(agent.run(SessionAgentCall(session.id, "second", observer=queued)))
    loop.close()  # closed without running again: both turns are stranded
    assert not first.done()
    agent.cancel(session.id)
    assert [e.reason for e in queued.finished] == [FinishReason.CANCELED]
    assert_idle(agent, session.id)
    abandon_tasks(loop)


# -- eager task factories: the turn's first step runs inside create_task -----------------------


def eager_task_factory(loop, coro, **kwargs):
    """asyncio.eager_task_factory (Python ≥ 3.12), or the same first-step-now on 3.11."""
    if sys.version_info >= (3, 12):
        return asyncio.eager_task_factory(loop, coro, **kwargs)
    try:
        yielded = coro.send(None)  # the first step, synchronously, like an eager task
    except StopIteration as stop:
        result = stop.value

        async def done():
            return result

        return asyncio.Task(done(), loop=loop, **kwargs)
    return asyncio.Task(_resumed(coro, yielded), loop=loop, **kwargs)


async def _resumed(coro, yielded):
    return await _continue(coro, yielded)


@types.coroutine
def _continue(coro, yielded):
    """Drive an already-started coroutine from where its first step suspended."""
    while True:
        try:
            sent = yield yielded
        except BaseException as error:  # a cancel while suspended goes into the coroutine
            try:
                yielded = coro.throw(error)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


def run_on_a_thread(main, timeout: float = 10.0):
    """Run ``main()`` on a fresh loop in a daemon thread; a deadlock fails instead of hanging."""
    outcome = {}

    def target():
        try:
            outcome["result"] = asyncio.run(main())
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "deadlock: the loop's thread is stuck"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@pytest.mark.parametrize("trigger", ["cancel_on_started", "model_fails_at_once"])
def test_an_eager_task_factory_does_not_deadlock(store, trigger):
    session = store.create_session()

    class FailsAtOnce(ScriptedModel):
        async def stream(self, messages, *, system=None, tools=()):
            raise OSError("connection refused")
            yield  # an async generator that fails before its first await

    model = FailsAtOnce() if trigger == "model_fails_at_once" else ScriptedModel(["never"])
    agent = SessionAgent(model, store)

    class CancelOnStarted(Recorder):
        def on_event(self, event):
            super().on_event(event)
            if trigger == "cancel_on_started" and len(self.events) == 1:
                agent.cancel(session.id)

    async def main():
        asyncio.get_running_loop().set_task_factory(eager_task_factory)
        observer = CancelOnStarted()
        result = await within(agent.run(SessionAgentCall(session.id, "hi", observer=observer)))
        queued = Recorder()
        second = await within(agent.run(SessionAgentCall(session.id, "again", observer=queued)))
        return result, second, observer

    result, second, observer = run_on_a_thread(main)
    expected = FinishReason.CANCELED if trigger == "cancel_on_started" else FinishReason.ERROR
    assert result.reason is expected
    assert second is not None and second.reason in {FinishReason.END_TURN, FinishReason.ERROR}
    assert [e.reason for e in observer.finished] == [expected]
    assert_idle(agent, session.id)


async def test_a_cancel_on_the_loops_own_thread_is_delivered_before_it_returns():
    """A cancel from the kernel's own thread (``%crush cancel`` in a cell, the interrupt
    handler) reaches the task at once; from another thread it goes through the loop."""
    from jupyter_crush.agent.dispatch import call_on_loop

    loop = asyncio.get_running_loop()
    delivered: list[str] = []
    call_on_loop(loop, lambda: delivered.append("on the loop's thread"))
    assert delivered == ["on the loop's thread"]  # nothing awaited in between
    other = threading.Thread(target=call_on_loop, args=(loop, lambda: delivered.append("other")))
    other.start()
    other.join()
    assert delivered == ["on the loop's thread"]  # scheduled, not run on the other thread
    await until(lambda: len(delivered) == 2)
    assert delivered[1] == "other"
