"""The cancel and finish rules a user relies on, one test per rule, named for it.

Each test here kills mutants that scripts/mutation.sh found surviving the rest of the suite
(tests/mutation-survivors.md lists the few left and why they cannot change behaviour).
Written against the public surface: SessionAgent, its run events, ScriptedModel and the
transcript store.

Several tests cancel from an observer or a tool, on the turn's own task: the cancel marks
the turn at once while its ``task.cancel()`` waits for the turn's next ``await``, which is
how a cancel from another thread lands between the model's last event and the turn's end.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from support.bounded import within

from jupyter_crush import FinishReason, Role, SessionAgent, SessionAgentCall, Usage
from jupyter_crush.agent.records import TOOL_CANCELED, TOOL_FAILED
from jupyter_crush.agent.session import AgentStatus
from jupyter_crush.core.events import Delta, Finished
from jupyter_crush.core.message import CANCELED_MESSAGE
from jupyter_crush.core.model import ModelError, TextDelta, ToolCallDelta, ToolCallStart, ToolSpec
from jupyter_crush.core.tools import Tool, ToolResult
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall

ERROR = ModelError("Rate limit reached", status_code=429, provider="openai")


def observer(on_event) -> SimpleNamespace:
    return SimpleNamespace(on_event=on_event)


def tool(name: str, run) -> Tool:
    return Tool(ToolSpec(name, f"{name}.", {"type": "object"}), run)


# -- rule 1: a turn a cancel covers is recorded canceled, however it ended since -------------


async def test_covered_turn_that_then_fails_at_the_provider_is_recorded_canceled(store):
    """The newest prompt (its seq equals the cancel mark) is canceled as the model's stream
    breaks: the user asked it to stop, so the record says canceled, not the provider error."""
    session = store.create_session()
    agent = SessionAgent(ScriptedModel([Reply(text="partial answer", error=ERROR)]), store)

    def cancel_at_last_token(event):
        if isinstance(event, Delta) and event.message.text == "partial answer":
            agent.cancel(session.id)

    call = SessionAgentCall(session.id, "hi", observer=observer(cancel_at_last_token))
    result = await within(agent.run(call))

    assert (result.reason, result.message) == (FinishReason.CANCELED, CANCELED_MESSAGE)
    assistant = store.list_messages(session.id)[-1]
    assert assistant.text == "partial answer"
    assert (assistant.finish_reason, assistant.finish.message) == (
        FinishReason.CANCELED,
        CANCELED_MESSAGE,
    )


async def test_covered_turn_that_then_hits_the_step_limit_is_recorded_canceled(store):
    session = store.create_session()
    agent = None

    async def stop_my_session(arguments, context):
        agent.cancel(context.session_id)
        return ToolResult("stopped")

    model = ScriptedModel([Reply(tool_calls=[ToolCall("stop")])])
    agent = SessionAgent(model, store, tools=[tool("stop", stop_my_session)], max_steps=1)
    result = await within(agent.run(SessionAgentCall(session.id, "stop yourself")))

    assert (result.reason, result.message) == (FinishReason.CANCELED, CANCELED_MESSAGE)
    messages = store.list_messages(session.id)
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert messages[2].tool_results[0].content == "stopped"  # the finished call keeps its result
    assert messages[-1].finish_reason is FinishReason.CANCELED


# -- rule 2: a turn the model had already ended keeps its own finish ------------------------


@pytest.mark.parametrize("finish", [FinishReason.END_TURN, FinishReason.MAX_TOKENS])
async def test_cancel_after_the_model_ended_the_turn_keeps_the_models_finish(store, finish):
    session = store.create_session()
    agent = SessionAgent(ScriptedModel([Reply(text="complete answer", finish=finish)]), store)
    events = []

    def cancel_at_the_finish(event):
        events.append(event)
        if isinstance(event, Delta) and event.message.finish_reason is finish:
            agent.cancel(session.id)  # lands after the model's finish, before the turn's end

    call = SessionAgentCall(session.id, "hi", observer=observer(cancel_at_the_finish))
    result = await within(agent.run(call))

    assert (result.reason, result.text) == (finish, "complete answer")
    assert [e.reason for e in events if isinstance(e, Finished)] == [finish]
    messages = store.list_messages(session.id)
    assert [(m.role, m.finish_reason) for m in messages] == [
        (Role.USER, None),
        (Role.ASSISTANT, finish),
    ]


# -- rule 4: every tool call of a stopped turn is answered and finished ---------------------


class StopsMidCall:
    """A model that starts a tool call and stops (or fails) before the call's end."""

    name, provider = "mid-call", "test"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.in_call = asyncio.Event()

    async def stream(self, messages, *, system=None, tools=()):
        yield TextDelta("calling")
        yield ToolCallStart("call_1", "echo")
        yield ToolCallDelta("call_1", '{"text": "pi')
        self.in_call.set()
        if self.error is not None:
            raise self.error
        await asyncio.Event().wait()


async def test_a_call_canceled_while_streaming_is_finished_and_answered_canceled(store):
    session = store.create_session()
    model = StopsMidCall()
    agent = SessionAgent(model, store)
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "go")))
    await within(model.in_call.wait())
    agent.cancel(session.id)
    assert (await within(run)).reason is FinishReason.CANCELED

    _, assistant, results, *rest = store.list_messages(session.id)
    assert rest == []  # the open assistant message is the terminal record
    assert [(c.id, c.finished) for c in assistant.tool_calls] == [("call_1", True)]
    assert assistant.finish_reason is FinishReason.CANCELED
    assert results.role is Role.TOOL
    assert [(r.tool_call_id, r.is_error, r.content) for r in results.tool_results] == [
        ("call_1", True, TOOL_CANCELED)
    ]


async def test_a_call_cut_short_by_a_failed_stream_is_finished_and_answered_failed(store):
    session = store.create_session()
    agent = SessionAgent(StopsMidCall(ERROR), store)
    result = await within(agent.run(SessionAgentCall(session.id, "go")))
    assert (result.reason, result.message) == (FinishReason.ERROR, str(ERROR))

    _, assistant, results = store.list_messages(session.id)
    assert assistant.finish_reason is FinishReason.ERROR
    assert [(c.id, c.finished) for c in assistant.tool_calls] == [("call_1", True)]
    assert [(r.tool_call_id, r.is_error, r.content) for r in results.tool_results] == [
        ("call_1", True, TOOL_FAILED)
    ]


async def test_calls_canceled_while_a_tool_runs_are_answered_in_the_open_results(store):
    session = store.create_session()
    started, never = asyncio.Event(), asyncio.Event()

    async def done(arguments, context):
        return ToolResult("done")

    async def hang(arguments, context):
        started.set()
        await never.wait()

    model = ScriptedModel([Reply(tool_calls=[ToolCall("done"), ToolCall("hang"), ToolCall("x")])])
    agent = SessionAgent(model, store, tools=[tool("done", done), tool("hang", hang)])
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "go")))
    await within(started.wait())
    agent.cancel(session.id)
    assert (await within(run)).reason is FinishReason.CANCELED

    messages = store.list_messages(session.id)
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert [(r.tool_call_id, r.is_error, r.content) for r in messages[2].tool_results] == [
        ("call_0_0", False, "done"),
        ("call_0_1", True, TOOL_CANCELED),
        ("call_0_2", True, TOOL_CANCELED),
    ]
    assert messages[3].parts and all(p.type == "finish" for p in messages[3].parts)


# -- rule 5: cancel_all stops every session ------------------------------------------------


async def test_cancel_all_stops_every_running_session_and_spares_the_idle_one(store):
    a, b, idle = (store.create_session(t).id for t in ("a", "b", "idle"))
    model = ScriptedModel(["answer a is long", "answer b is long", "idle answer"])
    gates = [model.gate(step=0, after_tokens=1), model.gate(step=1, after_tokens=1)]
    agent = SessionAgent(model, store)
    agent.cancel(idle)  # the idle session is known to the agent, with nothing to stop
    run_a = asyncio.create_task(agent.run(SessionAgentCall(a, "qa")))
    await gates[0].reached()
    run_b = asyncio.create_task(agent.run(SessionAgentCall(b, "qb")))
    await gates[1].reached()

    agent.cancel_all()

    assert [(await within(run_a)).reason, (await within(run_b)).reason] == [
        FinishReason.CANCELED
    ] * 2
    later = await within(agent.run(SessionAgentCall(idle, "still answered")))
    assert (later.reason, later.text) == (FinishReason.END_TURN, "idle answer")


# -- rule 6: status listeners hear every change of what runs and waits -----------------------


async def test_status_is_announced_on_activate_queue_fold_and_end(store):
    session = store.create_session()
    model = ScriptedModel([Reply(tool_calls=[ToolCall("echo")]), "both answered"])
    gate = model.gate(step=0, after_tokens=0)
    agent = SessionAgent(model, store)
    heard: list[AgentStatus] = []
    agent.add_status_listener(heard.append)

    first = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first")))
    await within(gate.reached())
    assert heard == [AgentStatus([session.id], {})]  # activated
    assert await within(agent.run(SessionAgentCall(session.id, "second"))) is None
    assert heard[1:] == [AgentStatus([session.id], {session.id: 1})]  # queued
    gate.release()
    assert (await within(first)).reason is FinishReason.END_TURN
    assert heard[2:] == [
        AgentStatus([session.id], {}),  # folded into the running turn, which goes on
        AgentStatus([], {}),  # ended
    ]


# -- rule 7: a turn's usage and cost add up its steps ----------------------------------------


async def test_usage_and_cost_add_up_over_the_turns_steps(store):
    session = store.create_session()
    model = ScriptedModel(
        [
            Reply(tool_calls=[ToolCall("echo")], usage=Usage(100, 10, 5, 1), cost=0.25),
            Reply(text="done", usage=Usage(200, 20, 7, 2), cost=0.5),
        ]
    )
    agent = SessionAgent(model, store)
    events = []
    call = SessionAgentCall(session.id, "go", observer=observer(events.append))
    result = await within(agent.run(call))
    assert (result.usage, result.cost) == (Usage(300, 30, 12, 3), 0.75)
    finished = next(e for e in events if isinstance(e, Finished))
    assert (finished.usage, finished.cost) == (Usage(300, 30, 12, 3), 0.75)


async def test_a_finish_only_record_leaves_the_turns_cost_known(store):
    """Stopped between steps, the terminal record holds only the finish and no cost: the
    turn's cost is still that of the step it paid for."""
    session = store.create_session()
    agent = None

    async def stop_my_session(arguments, context):
        agent.cancel(context.session_id)
        return ToolResult("stopped")

    model = ScriptedModel([Reply(tool_calls=[ToolCall("stop")], usage=Usage(9, 3), cost=0.5)])
    agent = SessionAgent(model, store, tools=[tool("stop", stop_my_session)])
    result = await within(agent.run(SessionAgentCall(session.id, "go")))
    assert result.reason is FinishReason.CANCELED
    assert (result.usage, result.cost) == (Usage(9, 3), 0.5)


async def test_a_step_without_a_cost_makes_the_turns_cost_unknown(store):
    session = store.create_session()
    model = ScriptedModel([Reply(tool_calls=[ToolCall("echo")], cost=0.5), Reply(text="done")])
    result = await within(SessionAgent(model, store).run(SessionAgentCall(session.id, "go")))
    assert result.reason is FinishReason.END_TURN and result.cost is None


# -- accept reservations ---------------------------------------------------------------------


def test_an_accept_reservation_says_its_session_number_and_whether_it_is_open(store):
    agent = SessionAgent(ScriptedModel(), store)
    agent.begin_accepted("sid").close()
    accepted = agent.begin_accepted("sid")
    assert repr(accepted) == "<AcceptedRun session='sid' seq=2 open>"
    accepted.close()
    assert repr(accepted) == "<AcceptedRun session='sid' seq=2 closed>"
