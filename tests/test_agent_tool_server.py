"""The agent tool against a local OpenAI-compatible server: the official SDK parses real-shaped
streams for the parent's requests and the sub-agent's, and the server sees every request
either turn sends (and none after a Stop)."""

from __future__ import annotations

import asyncio

from support.bounded import until, within
from support.openai_chunks import openai_step
from support.replay_server import ReplayServer
from test_agent_tool import TASK, assert_both_canceled, file_tools, waiting_tool
from test_nothing_starts_when_covered import Events
from test_providers import _isolated_env, protocol_model

from jupyter_crush import FinishReason, SessionAgent, SessionAgentCall
from jupyter_crush.core.events import ChildEvent, Delta
from jupyter_crush.core.message import Usage
from jupyter_crush.tools.agent import AgentTool

__all__ = ["_isolated_env"]  # the autouse fixture: no developer keys leak into these tests

ASK = openai_step(1, tool=("agent", {"prompt": TASK}))
READ = openai_step(2, tool=("view", {"path": "data.csv"}))


def agent_on(server, store, tmp_path, tools=None) -> SessionAgent:
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    tools = tools if tools is not None else file_tools(tmp_path)
    agent = SessionAgent(protocol_model("openai", server.url), store, tools=tools)
    agent.tools["agent"] = AgentTool(lambda: agent).tool()
    return agent


async def test_the_sub_agent_reads_a_file_through_the_server(store, tmp_path):
    steps = [ASK, READ, openai_step(3, "Columns a and b."), openai_step(4, "It has a and b.")]
    async with ReplayServer(steps) as server:
        agent = agent_on(server, store, tmp_path)
        session = store.create_session()
        result = await within(agent.run(SessionAgentCall(session.id, "what is in data.csv?")))
        bodies = [request.json() for request in server.requests]
    assert (result.reason, result.text) == (FinishReason.END_TURN, "It has a and b.")
    parent_first, child_first, child_second, parent_second = bodies
    # The child's request: its own system prompt and the task, the tools that only read.
    system, task = child_first["messages"]
    assert system["role"] == "system" and system["content"].startswith("You are a sub-agent")
    assert task == {"role": "user", "content": TASK}
    assert [t["function"]["name"] for t in child_first["tools"]] == ["view", "ls", "glob", "grep"]
    assert "agent" in [t["function"]["name"] for t in parent_first["tools"]]
    assert child_second["messages"][-1]["content"] == "     1|a,b\n     2|1,2"
    # The parent's next request carries the child's answer as the agent call's result.
    answered = parent_second["messages"][-1]
    assert (answered["role"], answered["content"]) == ("tool", "Columns a and b.")
    assert answered["tool_call_id"] == "call_test1"
    # Four requests of 50 tokens in, 10 out: the parent turn counts all four.
    assert result.usage == Usage(200, 40)


async def test_stop_while_the_child_streams_reaches_the_server(store, tmp_path):
    stalling = openai_step(2, "Columns a and b, and more to come.")
    stalling.fault, stalling.fault_after = "stall", 3  # the child's answer stops mid-stream
    async with ReplayServer([ASK, stalling, openai_step(3, "never")]) as server:
        agent = agent_on(server, store, tmp_path)
        session = store.create_session()
        events = Events()
        run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "q", observer=events)))

        def child_text() -> bool:
            deltas = [e.event for e in events.of(ChildEvent) if isinstance(e.event, Delta)]
            return any(d.message.text for d in deltas)

        await until(child_text)
        agent.cancel(session.id)
        result = await within(run)
        await within(server.requests[1].hung_up.wait())  # the child's stream was closed
        assert len(server.requests) == 2  # nothing was asked after the Stop
    assert_both_canceled(store, session.id, result, None, None)


async def test_stop_while_the_childs_tool_runs_sends_nothing_more(store, tmp_path):
    started, finish = asyncio.Event(), asyncio.Event()
    tools = [waiting_tool("view", started, finish)]
    async with ReplayServer([ASK, READ, openai_step(3, "never")]) as server:
        agent = agent_on(server, store, tmp_path, tools)
        session = store.create_session()
        run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "q")))
        await within(started.wait())
        agent.cancel(session.id)
        result = await within(run)
        assert len(server.requests) == 2
    assert_both_canceled(store, session.id, result, None, None)


async def test_the_spending_cap_refuses_the_childs_request_before_it_is_sent(store, tmp_path):
    from jupyter_crush.agent.budget import SpendingCaps

    # The parent's first answer costs $0.09 (20k tokens in, 4k out at gpt-4o's prices): the
    # child's first request could pass the session's $0.08 cap, so it is never sent.
    steps = [openai_step(1, tool=("agent", {"prompt": TASK}), tokens=20_000), READ]
    async with ReplayServer(steps) as server:
        agent = agent_on(server, store, tmp_path)
        agent.budget.caps = lambda: SpendingCaps(session=0.08)
        session = store.create_session()
        result = await within(agent.run(SessionAgentCall(session.id, "q")))
        assert len(server.requests) == 1
    assert result.reason is FinishReason.ERROR
    assert result.message.startswith("stopped: this session has spent $0.09 of its $0.08 cap")
    refused = store.list_messages(session.id)[2].tool_results[0]
    assert refused.is_error and "stopped: this session has spent $0.09" in refused.content
