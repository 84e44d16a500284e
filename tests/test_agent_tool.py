"""The ``agent`` tool: a sub-agent's turn in a child session, run by the parent's tool call.

Scripted: one ScriptedModel answers the parent's requests and the child's, in the order they
are made, so ``model.requests`` is every request either turn sent.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from support.bounded import until, within
from test_dispatch import eager_task_factory
from test_nothing_starts_when_covered import Events, a_stop_lands_with_the_answer

from jupyter_crush import FinishReason, Role, SessionAgent, SessionAgentCall
from jupyter_crush.agent.records import TOOL_CANCELED
from jupyter_crush.core.events import ChildEvent, Finished, ToolStarted
from jupyter_crush.core.message import CANCELED_MESSAGE, Usage
from jupyter_crush.core.model import ToolSpec
from jupyter_crush.core.tools import Tool, ToolResult
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall
from jupyter_crush.tools import default_tools
from jupyter_crush.tools.agent import TASK_PROMPT, AgentTool

TASK = "Which columns has data.csv? Report their names."
ASK = Reply(text="Asking a sub-agent.", tool_calls=[ToolCall("agent", {"prompt": TASK})])
READ = Reply(tool_calls=[ToolCall("view", {"path": "data.csv"})])
#: The file tools and bash: made without a shell (the process's IPython, if a test started
#: one, would add notebook and variables).
FILE_TOOLS = ["view", "glob", "grep", "ls", "write", "edit", "bash"]


def file_tools(tmp_path):
    return default_tools(None, tmp_path, include=FILE_TOOLS)


def agent_with_sub_agent(store, tmp_path, *replies, tools=None, **options):
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    model = ScriptedModel(replies)
    tools = tools if tools is not None else file_tools(tmp_path)
    agent = SessionAgent(model, store, tools=tools)
    agent.tools["agent"] = AgentTool(lambda: agent, **options).tool()
    return agent, model


def child_session(store, parent_id):
    (child,) = [s for s in store.list_sessions() if s.parent_session_id == parent_id]
    return child


def waiting_tool(name: str, started: asyncio.Event, finish: asyncio.Event) -> Tool:
    """A read-only tool that runs until ``finish`` is set."""

    async def run(arguments, context):
        started.set()
        await finish.wait()
        return ToolResult("read")

    return Tool(ToolSpec(name, "reads", {"type": "object", "properties": {}}), run)


async def test_the_sub_agent_reads_a_file_and_its_answer_is_the_tool_result(store, tmp_path):
    agent, model = agent_with_sub_agent(
        store, tmp_path, ASK, READ, "Columns a and b.", "data.csv has columns a and b."
    )
    session = store.create_session()
    result = await within(agent.run(SessionAgentCall(session.id, "what is in data.csv?")))
    assert (result.reason, result.text) == (
        FinishReason.END_TURN,
        "Asking a sub-agent.data.csv has columns a and b.",
    )
    parent_first, child_first, child_second, parent_second = model.requests
    # The child starts afresh: its own system prompt and the task alone, no parent history.
    assert [(m.role, m.text) for m in child_first.messages] == [(Role.USER, TASK)]
    assert child_first.system == AgentTool(lambda: agent).system_prompt(
        [agent.tools[n] for n in ("view", "ls", "glob", "grep")]
    )
    assert child_first.system.startswith(TASK_PROMPT[:40])
    # It reads with the tools that only read: nothing that changes state, no sub-agent.
    assert {t.name for t in parent_first.tools} >= {"agent", "write", "edit", "bash", "view"}
    assert [t.name for t in child_first.tools] == ["view", "ls", "glob", "grep"]
    assert child_second.messages[-1].tool_results[0].content == "     1|a,b\n     2|1,2"
    # The parent gets the child's final answer as the call's result.
    sent = parent_second.messages[-1].tool_results[0]
    assert (sent.name, sent.content, sent.is_error) == ("agent", "Columns a and b.", False)
    child = child_session(store, session.id)
    assert sent.metadata["session_id"] == child.id
    assert sent.metadata["finish_reason"] == "end_turn"


async def test_the_child_session_is_linked_to_the_parents_call(store, tmp_path):
    agent, _ = agent_with_sub_agent(store, tmp_path, ASK, READ, "Columns a and b.", "Done.")
    session = store.create_session()
    await within(agent.run(SessionAgentCall(session.id, "what is in data.csv?")))
    call = store.list_messages(session.id)[1].tool_calls[0]
    child = child_session(store, session.id)
    assert (child.parent_tool_call_id, child.title) == (call.id, f"agent: {TASK}")
    roles = [(m.role, m.finish_reason) for m in store.list_messages(child.id)]
    assert roles == [
        (Role.USER, None),
        (Role.ASSISTANT, FinishReason.TOOL_USE),
        (Role.TOOL, None),
        (Role.ASSISTANT, FinishReason.END_TURN),
    ]
    # The link is durable: a store opened afresh reads it back.
    store.close()
    from jupyter_crush import TranscriptStore

    with TranscriptStore(store.path) as reopened:
        again = reopened.get_session(child.id)
        assert (again.parent_session_id, again.parent_tool_call_id) == (session.id, call.id)
        assert reopened.get_session(session.id).parent_session_id == ""


async def test_a_session_record_without_a_link_reads_as_before(store):
    session = store.create_session("plain")
    assert "parent_session_id" not in session.to_dict()  # written as before the link
    from jupyter_crush.core.message import Session

    assert Session.from_dict(session.to_dict()).parent_session_id == ""


async def test_the_childs_usage_and_cost_add_to_the_parent_turns(store, tmp_path):
    agent, _ = agent_with_sub_agent(
        store,
        tmp_path,
        Reply(**vars(ASK) | {"usage": Usage(100, 10), "cost": 0.01}),
        Reply(**vars(READ) | {"usage": Usage(50, 5), "cost": 0.005}),
        Reply(text="Columns a and b.", usage=Usage(60, 6), cost=0.006),
        Reply(text="Done.", usage=Usage(200, 20), cost=0.02),
    )
    session = store.create_session()
    events = Events()
    result = await within(agent.run(SessionAgentCall(session.id, "q", observer=events)))
    assert result.usage == Usage(410, 41)
    assert round(result.cost, 6) == 0.041
    (finished,) = events.of(Finished)  # what the status line shows
    assert (finished.usage, round(finished.cost, 6)) == (Usage(410, 41), 0.041)
    # Each request's tokens are stored once: the parent's messages and the child's.
    assert store.get_session(session.id).usage == Usage(300, 30)
    child = child_session(store, session.id)
    assert (store.get_session(child.id).usage, round(store.get_session(child.id).cost, 6)) == (
        Usage(110, 11),
        0.011,
    )
    result_part = store.list_messages(session.id)[2].tool_results[0]
    assert result_part.metadata["usage"]["input_tokens"] == 110
    assert round(result_part.metadata["cost"], 6) == 0.011


async def test_the_childs_events_reach_the_parents_observers(store, tmp_path):
    agent, _ = agent_with_sub_agent(store, tmp_path, ASK, READ, "Columns a and b.", "Done.")
    session = store.create_session()
    events = Events()
    await within(agent.run(SessionAgentCall(session.id, "q", observer=events)))
    child = child_session(store, session.id)
    forwarded = events.of(ChildEvent)
    assert {(e.call_id, e.session_id, e.task) for e in forwarded} == {
        (child.parent_tool_call_id, child.id, TASK)
    }
    kinds = [type(e.event).__name__ for e in forwarded]
    assert kinds[0] == "Started" and kinds[-1] == "Finished"
    assert {"Delta", "ToolStarted", "ToolFinished"} <= set(kinds)


async def test_a_sub_agent_cannot_start_a_sub_agent(store, tmp_path):
    agent, model = agent_with_sub_agent(
        store,
        tmp_path,
        ASK,
        Reply(tool_calls=[ToolCall("agent", {"prompt": "deeper"})]),
        "No deeper agent.",
        "Done.",
    )
    session = store.create_session()
    await within(agent.run(SessionAgentCall(session.id, "q")))
    assert "agent" not in {t.name for t in model.requests[1].tools}
    refused = model.requests[2].messages[-1].tool_results[0]
    assert refused.is_error and refused.content.startswith("Unknown tool 'agent'")
    assert len([s for s in store.list_sessions() if s.parent_session_id]) == 1


async def test_fetch_goes_to_the_sub_agent_only_when_it_runs_without_asking(store, tmp_path):
    async def fetch(arguments, context):
        return ToolResult("page")

    asking = Tool(ToolSpec("fetch", "GET", {"type": "object"}), fetch, changes_state=True)
    allowed: set[tuple[str, str]] = set()
    agent, _ = agent_with_sub_agent(
        store,
        tmp_path,
        tools=[*file_tools(tmp_path), asking],
        allowed=lambda session_id, tool: (session_id, tool) in allowed,
    )
    sub_agent = AgentTool(lambda: agent, allowed=lambda s, t: (s, t) in allowed)
    assert "fetch" not in [t.name for t in sub_agent.tools_for(agent, "s1")]
    allowed.add(("s1", "fetch"))
    given = {t.name: t for t in sub_agent.tools_for(agent, "s1")}
    assert list(given) == ["view", "ls", "glob", "grep", "fetch"]
    assert not given["fetch"].changes_state  # allowed already: the child never asks
    assert "fetch" not in [t.name for t in sub_agent.tools_for(agent, "s2")]


async def test_an_empty_task_is_refused_without_a_child(store, tmp_path):
    agent, model = agent_with_sub_agent(
        store, tmp_path, Reply(tool_calls=[ToolCall("agent", {"prompt": " "})]), "Sorry."
    )
    session = store.create_session()
    await within(agent.run(SessionAgentCall(session.id, "q")))
    refused = model.requests[1].messages[-1].tool_results[0]
    assert refused.is_error and refused.content.startswith("prompt is required")
    assert [s.id for s in store.list_sessions()] == [session.id]


# -- a Stop of the parent ------------------------------------------------------------------


def assert_both_canceled(store, session_id, result, model, requests):
    """Both turns end canceled, each call settled, and no request after the Stop."""
    assert (result.reason, result.message) == (FinishReason.CANCELED, CANCELED_MESSAGE)
    parent = store.list_messages(session_id)
    assert [(r.name, r.is_error, r.content) for r in parent[2].tool_results] == [
        ("agent", True, TOOL_CANCELED)
    ]
    assert parent[-1].finish_reason is FinishReason.CANCELED
    child = store.list_messages(child_session(store, session_id).id)
    assert child[-1].finish_reason is FinishReason.CANCELED
    answered = {r.tool_call_id for m in child for r in m.tool_results}
    assert all(c.id in answered for m in child for c in m.tool_calls)
    if model is not None:  # a scripted model: every request either turn sent
        assert len(model.requests) == requests


async def test_stop_while_the_child_streams_stops_both(store, tmp_path):
    agent, model = agent_with_sub_agent(store, tmp_path, ASK, "Columns a and", "never")
    gate = model.gate(step=1, after_tokens=2)
    session = store.create_session()
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "q")))
    await gate.reached()
    agent.cancel(session.id)
    result = await within(run)
    gate.release()
    assert_both_canceled(store, session.id, result, model, 2)
    child = store.list_messages(child_session(store, session.id).id)
    assert child[1].text == "Columns a"  # what had streamed is kept


async def test_stop_while_the_childs_tool_runs_stops_both_and_settles_its_call(store, tmp_path):
    started, finish = asyncio.Event(), asyncio.Event()
    tools = [waiting_tool("view", started, finish)]
    agent, model = agent_with_sub_agent(store, tmp_path, ASK, READ, "never", tools=tools)
    session = store.create_session()
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "q")))
    await within(started.wait())
    threading.Thread(target=agent.cancel, args=(session.id,)).start()  # a click's thread
    result = await within(run)
    assert_both_canceled(store, session.id, result, model, 2)
    child = store.list_messages(child_session(store, session.id).id)
    assert [(r.is_error, r.content) for r in child[2].tool_results] == [(True, TOOL_CANCELED)]
    # What the child spent before the Stop counts in the canceled turn too.
    spent = [m.usage for m in store.list_messages(session.id) + child]
    assert result.usage == sum(spent, Usage()) and child[1].usage.total_tokens


async def test_stop_as_the_childs_tool_ends_sends_no_next_request(store, tmp_path):
    # The click's thread raises the marks while the tool's answer wakes the child, its
    # task.cancel() queued behind: only the child's own mark, raised with its parent's,
    # keeps it from its next request.
    async def read_as_stop_lands(arguments, context):
        return ToolResult(await a_stop_lands_with_the_answer(stop, "a,b"))

    spec = ToolSpec("view", "reads", {"type": "object", "properties": {}})
    agent, model = agent_with_sub_agent(
        store, tmp_path, ASK, READ, "never", tools=[Tool(spec, read_as_stop_lands)]
    )
    session = store.create_session()

    def stop():
        agent.cancel(session.id)

    result = await within(agent.run(SessionAgentCall(session.id, "q")))
    assert_both_canceled(store, session.id, result, model, 2)
    child = store.list_messages(child_session(store, session.id).id)
    assert [(r.is_error, r.content) for r in child[2].tool_results] == [(False, "a,b")]


class StopOn:
    """An observer that clicks Stop (on another thread, waiting for it) at an event."""

    def __init__(self, agent, session_id, matches) -> None:
        self.stop = lambda: agent.cancel(session_id)
        self.matches = matches

    def on_event(self, event) -> None:
        if self.matches(event):
            click = threading.Thread(target=self.stop)
            click.start()
            click.join()


async def test_stop_as_the_agent_call_starts_makes_no_child(store, tmp_path):
    agent, model = agent_with_sub_agent(store, tmp_path, ASK, "never")
    session = store.create_session()
    stop = StopOn(agent, session.id, lambda e: isinstance(e, ToolStarted))
    result = await within(agent.run(SessionAgentCall(session.id, "q", observer=stop)))
    assert result.reason is FinishReason.CANCELED
    assert [s.id for s in store.list_sessions()] == [session.id]
    assert len(model.requests) == 1


async def test_stop_before_the_child_is_accepted_records_it_canceled_unasked(store, tmp_path):
    # The click lands after the child's session is made, before the child is linked to its
    # parent: the cancel misses the link, and the child must still not ask its model.
    agent, model = agent_with_sub_agent(
        store, tmp_path, Reply(**vars(ASK) | {"cost": 0.01}), "never"
    )
    session = store.create_session()
    create = store.create_session

    def create_then_click(*args, **kwargs):
        made = create(*args, **kwargs)
        click = threading.Thread(target=agent.cancel, args=(session.id,))
        click.start()
        click.join()
        return made

    store.create_session = create_then_click
    # An eager task factory starts the child's turn inside create_task, before the click's
    # queued task.cancel() reaches the loop.
    loop = asyncio.get_running_loop()
    loop.set_task_factory(eager_task_factory)
    try:
        result = await within(agent.run(SessionAgentCall(session.id, "q")))
    finally:
        loop.set_task_factory(None)
    assert_both_canceled(store, session.id, result, model, 1)
    child = store.list_messages(child_session(store, session.id).id)
    assert [m.role for m in child] == [Role.USER, Role.ASSISTANT]  # canceled on entry
    assert result.cost == 0.01  # a child that sent nothing leaves the turn's cost known


async def test_stop_as_the_child_finishes_keeps_its_answer_and_asks_no_more(store, tmp_path):
    agent, model = agent_with_sub_agent(store, tmp_path, ASK, "Columns a and b.", "never")
    session = store.create_session()

    def child_finished(event):
        return isinstance(event, ChildEvent) and isinstance(event.event, Finished)

    stop = StopOn(agent, session.id, child_finished)
    result = await within(agent.run(SessionAgentCall(session.id, "q", observer=stop)))
    assert result.reason is FinishReason.CANCELED
    assert len(model.requests) == 2
    child = store.list_messages(child_session(store, session.id).id)
    assert child[-1].finish_reason is FinishReason.END_TURN  # it had answered before the Stop
    parent = store.list_messages(session.id)
    assert [(r.is_error, r.content) for r in parent[2].tool_results] == [(True, TOOL_CANCELED)]


async def test_a_stop_of_the_child_alone_is_the_calls_error_and_the_parent_goes_on(store, tmp_path):
    agent, model = agent_with_sub_agent(store, tmp_path, ASK, "Columns a", "Went on.")
    gate = model.gate(step=1, after_tokens=1)
    session = store.create_session()
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "q")))
    await gate.reached()
    agent.cancel(child_session(store, session.id).id)
    gate.release()
    result = await within(run)
    assert (result.reason, result.text) == (FinishReason.END_TURN, "Asking a sub-agent.Went on.")
    sent = model.requests[2].messages[-1].tool_results[0]
    assert sent.is_error and sent.content.startswith("The sub-agent did not finish (canceled")


async def test_the_sub_agent_uses_the_parent_turns_model_or_its_own(store, tmp_path):
    agent, default = agent_with_sub_agent(store, tmp_path)
    turn_model = ScriptedModel([ASK, "from the turn's model", "Done."])
    session = store.create_session()
    await within(agent.run(SessionAgentCall(session.id, "q", model=turn_model)))
    assert len(turn_model.requests) == 3 and not default.requests
    own = ScriptedModel(["from the agent model"])
    agent.tools["agent"] = AgentTool(lambda: agent, model=lambda: own).tool()
    turn_model.add(ASK, "Done.")
    await within(agent.run(SessionAgentCall(session.id, "again", model=turn_model)))
    assert len(own.requests) == 1
    await until(lambda: not agent.is_session_busy(session.id))


async def test_a_prompt_with_its_sub_agent_counts_as_one_run(store, tmp_path):
    agent, model = agent_with_sub_agent(store, tmp_path, ASK, "Columns a and b.", "Done.")
    gate = model.gate(step=1, after_tokens=1)
    session = store.create_session()
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "q")))
    await gate.reached()
    child = child_session(store, session.id)
    assert agent.is_session_busy(child.id)  # %crush sessions shows it running
    assert agent.status().running == [session.id]  # the status bar counts one run
    gate.release()
    await within(run)
    assert agent.status().running == []


async def test_outside_a_running_turn_the_tool_fails_and_leaves_no_dispatch_state(store, tmp_path):
    from jupyter_crush.core.tools import ToolContext

    agent, model = agent_with_sub_agent(store, tmp_path)
    session = store.create_session()
    sub_agent = AgentTool(lambda: agent)
    with pytest.raises(RuntimeError, match="has no running turn"):
        await sub_agent.run({"prompt": TASK}, ToolContext(session.id, "call_x"))
    assert agent._dispatch.session_ids() == [] and not model.requests
