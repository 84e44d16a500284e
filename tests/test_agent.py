"""The session agent's dispatch, cancel and persistence paths, on real store files."""

from __future__ import annotations

import asyncio
import threading

import pytest
from support.bounded import until, within

from jupyter_crush import (
    AcceptedRun,
    FinishReason,
    Role,
    SessionAgent,
    SessionAgentCall,
    TranscriptStore,
)
from jupyter_crush.core.events import Finished, Folded, Queued, Started, ToolFinished
from jupyter_crush.core.model import ModelError, ToolSpec
from jupyter_crush.core.tools import Decision, Tool, ToolResult
from jupyter_crush.store.transcript import UnknownSessionError
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall


class Recorder:
    def __init__(self) -> None:
        self.events = []

    def on_event(self, event) -> None:
        self.events.append(event)

    @property
    def finished(self) -> list[Finished]:
        return [e for e in self.events if isinstance(e, Finished)]


def open_accepts(agent: SessionAgent, session_id: str) -> int:
    return agent._dispatch.state(session_id).open_accepts


def cancel_pending(agent: SessionAgent, session_id: str) -> bool:
    """A cancel covers an accepted prompt that has not been decided yet."""
    state = agent._dispatch.state(session_id)
    return state.open_accepts > 0 and state.cancel_mark >= state.accept_seq


def roles_and_reasons(store: TranscriptStore, session_id: str) -> list[tuple[str, str | None]]:
    return [
        (str(m.role), m.finish_reason and str(m.finish_reason))
        for m in store.list_messages(session_id)
    ]


def make_agent(store, *replies, tools=(), **kwargs) -> tuple[SessionAgent, ScriptedModel]:
    model = ScriptedModel(replies)
    return SessionAgent(model, store, tools=tools, **kwargs), model


# -- AcceptedRun (seed: accepted-run tests) ----------------------------------------------------


def test_accepted_run_close_is_idempotent(store):
    agent, _ = make_agent(store)
    accepted = agent.begin_accepted("sid")
    assert accepted.session_id == "sid"
    assert open_accepts(agent, "sid") == 1
    accepted.close()
    assert open_accepts(agent, "sid") == 0
    accepted.close()
    accepted.close()
    assert open_accepts(agent, "sid") == 0


def test_accepted_run_multiple_reservations(store):
    agent, _ = make_agent(store)
    first, second = agent.begin_accepted("sid"), agent.begin_accepted("sid")
    assert open_accepts(agent, "sid") == 2
    assert second.seq > first.seq
    first.close()
    assert open_accepts(agent, "sid") == 1
    second.close()
    assert open_accepts(agent, "sid") == 0


def test_accepted_run_close_is_none_safe():
    AcceptedRun.close(None)  # the Python form of the seed's nil receiver


def test_idle_cancel_is_a_no_op(store):
    agent, _ = make_agent(store)
    agent.cancel("sid")
    assert agent._dispatch.state("sid").cancel_mark == 0


def test_cancel_with_accepted_prompt_covers_it(store):
    agent, _ = make_agent(store)
    accepted = agent.begin_accepted("sid")
    agent.cancel("sid")
    assert cancel_pending(agent, "sid")
    agent.cancel("sid")  # a second cancel stays one cover, consumed by one run
    assert agent._dispatch.state("sid").cancel_mark == accepted.seq
    accepted.close()


# -- cancel-on-entry ---------------------------------------------------------------------------


async def test_cancel_on_entry_persists_canceled_turn_without_model_call(store):
    session = store.create_session("s")
    agent, model = make_agent(store, "never sent")
    accepted = agent.begin_accepted(session.id)
    agent.cancel(session.id)  # lands in the accepted-but-not-active window
    recorder = Recorder()
    result = await within(
        agent.run(SessionAgentCall(session.id, "hello", accepted=accepted, observer=recorder))
    )

    assert result is not None and result.reason is FinishReason.CANCELED
    assert model.requests == []
    assert open_accepts(agent, session.id) == 0
    messages = store.list_messages(session.id)
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT]
    assert messages[0].text == "hello"
    assert messages[1].finish_reason is FinishReason.CANCELED
    assert messages[1].finish.message == "User canceled request"
    assert [e.reason for e in recorder.finished] == [FinishReason.CANCELED]


async def test_cancel_on_entry_from_another_thread(store):
    session = store.create_session()
    agent, model = make_agent(store, "never sent")
    accepted = agent.begin_accepted(session.id)
    thread = threading.Thread(target=agent.cancel, args=(session.id,))
    thread.start()
    thread.join()
    result = await within(agent.run(SessionAgentCall(session.id, "hi", accepted=accepted)))
    assert result.reason is FinishReason.CANCELED
    assert model.requests == []


async def test_busy_session_with_covered_follow_up_takes_cancel_on_entry(store):
    """Seed: an active run AND an accepted follow-up; one cancel reaches both."""
    session = store.create_session()
    agent, model = make_agent(store, "first answer that is long enough")
    gate = model.gate(step=0, after_tokens=2)
    first = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first")))
    await within(gate.reached())
    follow_up = agent.begin_accepted(session.id)
    agent.cancel(session.id)
    result = await within(agent.run(SessionAgentCall(session.id, "follow-up", accepted=follow_up)))

    assert result.reason is FinishReason.CANCELED  # canceled on entry, not queued
    assert agent.queued_prompts(session.id) == 0
    assert open_accepts(agent, session.id) == 0
    gate.release()
    first_result = await within(first)
    assert first_result.reason is FinishReason.CANCELED
    assert len(model.requests) == 1
    reasons = roles_and_reasons(store, session.id)
    assert reasons.count(("assistant", "canceled")) == 2
    assert [m.text for m in store.list_messages(session.id) if m.role is Role.USER] == [
        "first",
        "follow-up",
    ]


# -- the active window -------------------------------------------------------------------------


async def test_cancel_while_streaming_keeps_partial_answer(store):
    session = store.create_session()
    agent, model = make_agent(store, "one two three four five six")
    gate = model.gate(step=0, after_tokens=3)
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "count")))
    await within(gate.reached())
    agent.cancel(session.id)
    result = await within(run)
    assert result.reason is FinishReason.CANCELED
    assistant = store.list_messages(session.id)[-1]
    assert assistant.text == "one two three"
    assert assistant.finish_reason is FinishReason.CANCELED
    assert not agent.is_session_busy(session.id)


async def test_cancel_from_another_thread_reaches_the_loop(store):
    session = store.create_session()
    agent, model = make_agent(store, "a b c d e f g h")
    gate = model.gate(step=0, after_tokens=1)
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "go")))
    await within(gate.reached())
    threading.Thread(target=agent.cancel, args=(session.id,)).start()
    result = await asyncio.wait_for(run, 5)
    assert result.reason is FinishReason.CANCELED


async def test_cancel_after_activation_before_the_task_starts(store):
    """The handle is registered under the lock, before the turn's task has run at all."""
    session = store.create_session()
    agent, model = make_agent(store, "never streamed")
    fired = []

    def cancel_on_first_run(status):
        if status.running and not fired:
            fired.append(True)
            agent.cancel(session.id)

    agent.add_status_listener(cancel_on_first_run)
    result = await within(agent.run(SessionAgentCall(session.id, "hi")))
    assert fired
    assert result.reason is FinishReason.CANCELED
    assert model.requests == []
    assert roles_and_reasons(store, session.id) == [("user", None), ("assistant", "canceled")]


async def test_caller_torn_down_still_persists_the_canceled_turn(store):
    """Kernel shutdown cancels the task awaiting run(): the turn is written anyway."""
    session = store.create_session()
    agent, model = make_agent(store, "slow answer here")
    gate = model.gate(step=0, after_tokens=1)
    caller = asyncio.create_task(agent.run(SessionAgentCall(session.id, "hi")))
    await within(gate.reached())
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    reopened = TranscriptStore(store.path)
    assert roles_and_reasons(reopened, session.id) == [("user", None), ("assistant", "canceled")]


async def test_shutdown_records_active_and_queued_turns(store):
    session = store.create_session()
    agent, model = make_agent(store, "first is slow", "second")
    gate = model.gate(step=0, after_tokens=1)
    first = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first")))
    await within(gate.reached())
    queued = Recorder()
    assert await within(agent.run(SessionAgentCall(session.id, "second", observer=queued))) is None
    agent.shutdown()
    assert [(e.reason, e.message) for e in queued.finished] == [
        (FinishReason.CANCELED, "Kernel shut down")
    ]
    await within(first)
    reopened = TranscriptStore(store.path)
    assert reopened.list_messages(session.id)[1].finish.message == "Kernel shut down"
    assert roles_and_reasons(reopened, session.id) == [
        ("user", None),
        ("assistant", "canceled"),
        ("user", None),
        ("assistant", "canceled"),
    ]
    assert len(model.requests) == 1


# -- queue and handoff -------------------------------------------------------------------------


async def test_queued_prompt_runs_after_the_active_one(store):
    session = store.create_session()
    agent, model = make_agent(store, "first answer", "second answer")
    gate = model.gate(step=0, after_tokens=1)
    first = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first")))
    await within(gate.reached())
    second = Recorder()
    assert await within(agent.run(SessionAgentCall(session.id, "second", observer=second))) is None
    assert second.events == [Queued(1)]
    assert agent.queued_prompts(session.id) == 1
    gate.release()
    assert (await within(first)).reason is FinishReason.END_TURN
    await until(lambda: second.finished)
    assert isinstance(second.events[1], Started)
    assert second.finished[0].reason is FinishReason.END_TURN
    texts = [m.text for m in store.list_messages(session.id)]
    assert texts == ["first", "first answer", "second", "second answer"]
    # the second request carried the first exchange: multi-turn history
    assert [m.text for m in model.requests[1].messages] == texts[:3]


async def test_cancel_while_queued_records_the_dropped_prompt(store):
    session = store.create_session()
    agent, model = make_agent(store, "first answer", "never")
    gate = model.gate(step=0, after_tokens=1)
    first = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first")))
    await within(gate.reached())
    second = Recorder()
    await within(agent.run(SessionAgentCall(session.id, "second", observer=second)))
    agent.cancel(session.id)
    await within(first)
    assert [e.reason for e in second.finished] == [FinishReason.CANCELED]
    assert len(model.requests) == 1
    assert roles_and_reasons(store, session.id) == [
        ("user", None),
        ("assistant", "canceled"),
        ("user", None),
        ("assistant", "canceled"),
    ]
    assert store.list_messages(session.id)[2].text == "second"
    assert agent.queued_prompts(session.id) == 0 and not agent.is_session_busy(session.id)


async def test_cancel_during_handoff_drops_the_queued_prompt(store):
    """A cancel landing as the active turn ends (after its record, before the handoff)."""
    session = store.create_session()
    agent, model = make_agent(store, "first answer", "never")
    gate = model.gate(step=0, after_tokens=1)

    class CancelOnFinish(Recorder):
        def on_event(self, event):
            super().on_event(event)
            if isinstance(event, Finished):
                agent.cancel(session.id)

    first = asyncio.create_task(
        agent.run(SessionAgentCall(session.id, "first", observer=CancelOnFinish()))
    )
    await within(gate.reached())
    second = Recorder()
    await within(agent.run(SessionAgentCall(session.id, "second", observer=second)))
    gate.release()
    assert (await within(first)).reason is FinishReason.END_TURN  # it had already ended
    await until(lambda: second.finished)
    assert [e.reason for e in second.finished] == [FinishReason.CANCELED]
    assert len(model.requests) == 1


async def test_cancel_right_after_handoff_stops_the_next_prompt(store):
    session = store.create_session()
    agent, model = make_agent(store, "first answer", "never")
    gate = model.gate(step=0, after_tokens=1)
    first_events = Recorder()
    first = asyncio.create_task(
        agent.run(SessionAgentCall(session.id, "first", observer=first_events))
    )
    await within(gate.reached())
    second = Recorder()
    await within(agent.run(SessionAgentCall(session.id, "second", observer=second)))
    fired = []

    def cancel_when_second_runs(status):
        # Called by the handoff itself: the second turn is active, its task not yet started.
        if status.running and not status.queued and first_events.finished and not fired:
            fired.append(True)
            agent.cancel(session.id)

    agent.add_status_listener(cancel_when_second_runs)
    gate.release()
    await within(first)
    await until(lambda: second.finished)
    assert fired
    assert second.finished[0].reason is FinishReason.CANCELED
    assert len(model.requests) == 1


async def test_cancel_while_the_canceled_turn_is_being_recorded(store):
    """Cancels (same thread and another) landing inside the canceled turn's own recording."""
    session = store.create_session()
    agent, model = make_agent(store, "one two three four", "next answer")
    gate = model.gate(step=0, after_tokens=2)

    class CancelAgainWhileRecording(Recorder):
        def on_event(self, event):
            super().on_event(event)
            if isinstance(event, Finished):
                agent.cancel(session.id)
                thread = threading.Thread(target=agent.cancel, args=(session.id,))
                thread.start()
                thread.join()

    recorder = CancelAgainWhileRecording()
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first", observer=recorder)))
    await within(gate.reached())
    agent.cancel(session.id)
    assert (await within(run)).reason is FinishReason.CANCELED
    assert [e.reason for e in recorder.finished] == [FinishReason.CANCELED]
    assert roles_and_reasons(store, session.id) == [("user", None), ("assistant", "canceled")]
    result = await within(agent.run(SessionAgentCall(session.id, "second")))  # nothing lingers
    assert result.reason is FinishReason.END_TURN and result.text == "next answer"


async def test_prompt_accepted_after_a_cancel_is_not_covered(store):
    session = store.create_session()
    agent, model = make_agent(store, "first answer", "second answer")
    gate = model.gate(step=0, after_tokens=1)
    first = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first")))
    await within(gate.reached())
    agent.cancel(session.id)
    later = agent.begin_accepted(session.id)  # accepted after the cancel
    second = Recorder()
    await within(agent.run(SessionAgentCall(session.id, "second", accepted=later, observer=second)))
    assert (await within(first)).reason is FinishReason.CANCELED
    await until(lambda: second.finished)
    assert second.finished[0].reason is FinishReason.END_TURN


async def test_idle_cancel_then_normal_prompt(store):
    session = store.create_session()
    agent, _ = make_agent(store, "fine")
    agent.cancel(session.id)
    result = await within(agent.run(SessionAgentCall(session.id, "hi")))
    assert result.reason is FinishReason.END_TURN and result.text == "fine"


async def test_cancel_then_new_prompt_runs_normally(store):
    session = store.create_session()
    agent, _ = make_agent(store, "fine")
    covered = agent.begin_accepted(session.id)
    agent.cancel(session.id)
    result = await within(agent.run(SessionAgentCall(session.id, "a", accepted=covered)))
    assert result.reason is FinishReason.CANCELED
    result = await within(agent.run(SessionAgentCall(session.id, "b")))
    assert result.reason is FinishReason.END_TURN
    assert agent._dispatch.state(session.id).open_accepts == 0


# -- tools -------------------------------------------------------------------------------------


def echo_tool(log: list | None = None) -> Tool:
    async def run(arguments, context):
        if log is not None:
            log.append((arguments, context.tool_call_id))
        return ToolResult(f"echo: {arguments.get('text', '')}")

    spec = ToolSpec(
        "echo", "Echo text back.", {"type": "object", "properties": {"text": {"type": "string"}}}
    )
    return Tool(spec, run)


async def test_tool_step_then_answer(store):
    session = store.create_session()
    calls = []
    agent, model = make_agent(
        store,
        Reply(text="Let me check.", tool_calls=[ToolCall("echo", {"text": "ping"})]),
        "It said ping.",
        tools=[echo_tool(calls)],
    )
    result = await within(agent.run(SessionAgentCall(session.id, "echo ping")))
    assert result.reason is FinishReason.END_TURN
    assert calls == [({"text": "ping"}, "call_0_0")]
    messages = store.list_messages(session.id)
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert messages[1].finish_reason is FinishReason.TOOL_USE
    assert messages[2].tool_results[0].content == "echo: ping"
    # the second request carried the tool call and its result
    sent = model.requests[1].messages
    assert sent[-1].tool_results[0].tool_call_id == "call_0_0"
    assert [t.name for t in model.requests[0].tools] == ["echo"]


async def test_cancel_during_tool_call_settles_the_call(store):
    session = store.create_session()
    started, never = asyncio.Event(), asyncio.Event()

    async def slow(arguments, context):
        started.set()
        await never.wait()
        return ToolResult("unreachable")

    tool = Tool(ToolSpec("slow", "Slow.", {"type": "object"}), slow, changes_state=False)
    agent, _model = make_agent(
        store,
        Reply(tool_calls=[ToolCall("slow"), ToolCall("slow", {"n": 2})]),
        "never",
        tools=[tool],
    )
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "go")))
    await within(started.wait())
    agent.cancel(session.id)
    result = await within(run)
    assert result.reason is FinishReason.CANCELED
    messages = store.list_messages(session.id)
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    results = messages[2].tool_results
    assert [r.tool_call_id for r in results] == ["call_0_0", "call_0_1"]
    assert all(r.is_error for r in results)
    assert messages[3].finish_reason is FinishReason.CANCELED


async def test_cancel_mid_tool_call_stream_gives_the_call_a_result(store):
    session = store.create_session()
    agent, model = make_agent(
        store,
        Reply(text="calling", tool_calls=[ToolCall("echo", {"text": "x"})]),
        tools=[echo_tool()],
    )
    gate = model.gate(step=0, after_tokens=2)  # after "calling" and the tool-call start
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "go")))
    await within(gate.reached())
    agent.cancel(session.id)
    assert (await within(run)).reason is FinishReason.CANCELED
    messages = store.list_messages(session.id)
    assert messages[1].finish_reason is FinishReason.CANCELED
    assert [c.id for c in messages[1].tool_calls] == [
        r.tool_call_id for r in messages[2].tool_results
    ]


async def test_tool_errors_become_error_results(store):
    session = store.create_session()

    async def broken(arguments, context):
        raise RuntimeError("disk on fire")

    tool = Tool(ToolSpec("broken", "Broken.", {"type": "object"}), broken)
    agent, _model = make_agent(
        store,
        Reply(tool_calls=[ToolCall("broken"), ToolCall("missing")]),
        "Sorry.",
        tools=[tool],
    )
    result = await within(agent.run(SessionAgentCall(session.id, "go")))
    assert result.reason is FinishReason.END_TURN
    results = store.list_messages(session.id)[2].tool_results
    assert results[0].is_error and "disk on fire" in results[0].content
    assert results[1].is_error and "Unknown tool 'missing'" in results[1].content


async def test_repeated_tool_call_loop_is_stopped(store):
    session = store.create_session()
    same = Reply(tool_calls=[ToolCall("echo", {"text": "again"})])
    agent, model = make_agent(store, *[same] * 6, tools=[echo_tool()])
    result = await within(agent.run(SessionAgentCall(session.id, "loop")))
    assert result.reason is FinishReason.ERROR
    assert "repeated the same echo call" in result.message
    assert len(model.requests) == 4
    tool_calls = [c for m in store.list_messages(session.id) for c in m.tool_calls]
    answered = {r.tool_call_id for m in store.list_messages(session.id) for r in m.tool_results}
    assert {c.id for c in tool_calls} <= answered


async def test_step_limit_ends_the_turn(store):
    session = store.create_session()
    replies = [Reply(tool_calls=[ToolCall("echo", {"text": str(i)})]) for i in range(5)]
    agent, model = make_agent(store, *replies, tools=[echo_tool()], max_steps=3)
    result = await within(agent.run(SessionAgentCall(session.id, "go")))
    assert result.reason is FinishReason.ERROR and "3 steps" in result.message
    assert len(model.requests) == 3
    assert store.list_messages(session.id)[-1].finish_reason is FinishReason.ERROR


async def test_permission_denied_ends_the_turn_canceled(store):
    session = store.create_session()

    class Deny:
        async def ask(self, request):
            return Decision.DENY

    ran = []

    async def write(arguments, context):
        ran.append(arguments)
        return ToolResult("written")

    tool = Tool(ToolSpec("write", "Write.", {"type": "object"}), write, changes_state=True)
    agent, _model = make_agent(
        store,
        Reply(tool_calls=[ToolCall("write", {"path": "x"})]),
        "never",
        tools=[tool],
        permissions=Deny(),
    )
    recorder = Recorder()
    result = await within(agent.run(SessionAgentCall(session.id, "write x", observer=recorder)))
    assert result.reason is FinishReason.CANCELED
    assert result.message == "Permission denied for write"
    assert ran == []
    shown = [e.result for e in recorder.events if isinstance(e, ToolFinished)]
    assert [(r.is_error, r.content) for r in shown] == [(True, "Permission denied for write")]
    messages = store.list_messages(session.id)
    assert messages[2].tool_results[0].is_error
    assert messages[-1].finish_reason is FinishReason.CANCELED


async def test_long_sessions_send_only_the_newest_turns_that_fit(store):
    session = store.create_session()
    agent, model = make_agent(
        store,
        "a" * 300,
        Reply(text="b" * 300, tool_calls=[ToolCall("echo", {"text": "c" * 300})]),
        "d" * 300,
        "fits",
        tools=[echo_tool()],
        history_chars=1400,  # turn 2 (~1,240 characters) and 3 fit; turn 1 (~305) does not
    )
    for prompt in ("first", "second", "third"):
        await within(agent.run(SessionAgentCall(session.id, prompt)))
    sent = model.requests[-1].messages
    # The first instruction stays; the answer to it is left out, with a note.
    assert sent[0].text == "first"
    assert "1 earlier messages" in sent[1].text
    assert [m.text for m in sent if m.role is Role.USER][2:] == ["second", "third"]
    # cut at a turn boundary: the tool call and its result stay together
    calls = {c.id for m in sent for c in m.tool_calls}
    assert calls and calls == {r.tool_call_id for m in sent for r in m.tool_results}
    assert len(store.list_messages(session.id)) == 8  # the transcript keeps everything


async def test_an_oversized_prompt_is_still_sent(store):
    session = store.create_session()
    agent, model = make_agent(store, "ok", "ok", history_chars=10)
    await within(agent.run(SessionAgentCall(session.id, "earlier")))
    await within(agent.run(SessionAgentCall(session.id, "x" * 100)))
    assert [m.text for m in model.requests[-1].messages][-1] == "x" * 100


# -- folding queued prompts into a running turn ------------------------------------------------


async def test_queued_prompt_is_folded_between_steps(store):
    session = store.create_session()
    agent, model = make_agent(
        store, Reply(tool_calls=[ToolCall("echo", {"text": "a"})]), "done both", tools=[echo_tool()]
    )
    gate = model.gate(step=0, after_tokens=0)
    first = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first")))
    await within(gate.reached())
    second = Recorder()
    await within(agent.run(SessionAgentCall(session.id, "second", observer=second)))
    gate.release()
    result = await within(first)
    assert result.reason is FinishReason.END_TURN
    assert isinstance(second.events[1], Folded)
    assert second.finished[0].reason is FinishReason.END_TURN
    assert [m.text for m in model.requests[1].messages if m.role is Role.USER] == [
        "first",
        "second",
    ]


async def test_fold_skips_queued_prompts_a_cancel_covers(store):
    """Seed: the drain between steps must not fold a covered prompt into the turn.

    The mark is set during the tool call, as by a cancel from another thread whose
    ``task.cancel()`` has not reached the loop yet when the turn moves to its next step.
    """
    session = store.create_session()
    agent = None

    async def mark_canceled(arguments, context):
        state = agent._dispatch.state(session.id)
        with state.lock:
            state.cancel_mark = state.accept_seq
        return ToolResult("ok")

    tool = Tool(ToolSpec("mark", "Mark.", {"type": "object"}), mark_canceled)
    agent, model = make_agent(store, Reply(tool_calls=[ToolCall("mark")]), "done", tools=[tool])
    gate = model.gate(step=0, after_tokens=0)
    first = asyncio.create_task(agent.run(SessionAgentCall(session.id, "main")))
    await within(gate.reached())
    second = Recorder()
    await within(agent.run(SessionAgentCall(session.id, "queued-followup", observer=second)))
    gate.release()
    assert (await within(first)).reason is FinishReason.CANCELED
    assert len(model.requests) == 1  # a covered turn asks for no further step
    assert second.finished[0].reason is FinishReason.CANCELED
    assert not [e for e in second.events if isinstance(e, Folded)]
    assert agent.queued_prompts(session.id) == 0
    users = [m.text for m in store.list_messages(session.id) if m.role is Role.USER]
    assert users == ["main", "queued-followup"]  # recorded, not destroyed


# -- failures and bad input --------------------------------------------------------------------


async def test_model_error_ends_turn_with_readable_error(store):
    session = store.create_session()
    error = ModelError("Rate limit reached", status_code=429, retry_after=2, provider="openai")
    agent, _ = make_agent(store, Reply(text="partial", error=error))
    result = await within(agent.run(SessionAgentCall(session.id, "hi")))
    assert result.reason is FinishReason.ERROR
    assert result.message == "openai HTTP 429: Rate limit reached"
    messages = store.list_messages(session.id)
    assert messages[0].text == "hi"  # what was accepted is kept
    assert messages[1].text == "partial" and messages[1].finish_reason is FinishReason.ERROR


async def test_unknown_session_is_a_clear_error_and_releases_the_accept(store):
    agent, _ = make_agent(store, "x")
    accepted = agent.begin_accepted("nope")
    with pytest.raises(UnknownSessionError, match="nope"):
        await within(agent.run(SessionAgentCall("nope", "hi", accepted=accepted)))
    assert open_accepts(agent, "nope") == 0


async def test_empty_prompt_is_a_clear_error(store):
    session = store.create_session()
    agent, _model = make_agent(store, "x")
    with pytest.raises(ValueError, match="prompt is empty"):
        await within(agent.run(SessionAgentCall(session.id, "  \n")))
    assert open_accepts(agent, session.id) == 0
    assert store.list_messages(session.id) == []


async def test_a_broken_observer_does_not_break_the_run(store):
    session = store.create_session()
    agent, _ = make_agent(store, "still fine")

    class Broken:
        def on_event(self, event):
            raise RuntimeError("widget exploded")

    result = await within(agent.run(SessionAgentCall(session.id, "hi", observer=Broken())))
    assert result.reason is FinishReason.END_TURN


async def test_two_sessions_run_side_by_side(store):
    a, b = store.create_session("a"), store.create_session("b")
    model = ScriptedModel(["answer a", "answer b"], tokens_per_second=500)
    agent = SessionAgent(model, store)
    results = await asyncio.gather(
        agent.run(SessionAgentCall(a.id, "qa")), agent.run(SessionAgentCall(b.id, "qb"))
    )
    assert [r.reason for r in results] == [FinishReason.END_TURN] * 2
    assert agent.status().running == []
