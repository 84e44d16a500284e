"""NOTHING-STARTS-WHEN-COVERED: once a cancel covers a turn, nothing new starts for it.

A Stop click arrives on another thread: it raises the turn's cancel mark at once, while its
``task.cancel()`` reaches the loop through ``call_soon_threadsafe``. When what the turn was
awaiting completes in the same loop iteration (the user's Allow, a summary's last bytes, an
MCP server's restart), the turn's task wakes up before that ``task.cancel()`` runs: only a
look at the mark stands between the Stop and the next side effect. Each test here lands the
answer and the click together with :func:`a_stop_lands_with_the_answer`, deterministically.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from mcp import types as mcp_types
from support.bounded import within
from test_compaction import ANSWER, FIRST, WINDOW, is_summary_request

from jupyter_crush import FinishReason, Role, SessionAgent, SessionAgentCall
from jupyter_crush.agent.compaction import ContextPolicy
from jupyter_crush.agent.records import TOOL_CANCELED
from jupyter_crush.core.events import PermissionAsked, ToolStarted
from jupyter_crush.core.message import CANCELED_MESSAGE
from jupyter_crush.core.model import ToolSpec
from jupyter_crush.core.tools import Decision, Tool, ToolResult
from jupyter_crush.kernel.display import code_to_next_cell
from jupyter_crush.mcp.config import MCPServerConfig
from jupyter_crush.mcp.server import ServerState
from jupyter_crush.mcp.tools import MCPServers
from jupyter_crush.notebook.provenance import cell_proposer
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall
from jupyter_crush.tools import file_writing
from jupyter_crush.tools.cells import InsertCellTool
from jupyter_crush.tools.files import FileTools
from jupyter_crush.tools.permissions import PermissionPolicy
from jupyter_crush.tools.workspace import Workspace


async def a_stop_lands_with_the_answer(stop: Callable[[], None], answer: object = None) -> object:
    """Wait for ``answer``, which the loop delivers in the same callback as a Stop click on
    another thread (``stop``): the waiting task wakes up with the cancel mark raised and the
    click's ``task.cancel()`` queued behind its wake-up."""
    loop = asyncio.get_running_loop()
    answered = loop.create_future()

    def answer_then_click() -> None:
        answered.set_result(answer)
        click = threading.Thread(target=stop)
        click.start()
        click.join()

    loop.call_soon(answer_then_click)
    return await answered


class Events:
    def __init__(self) -> None:
        self.events: list[object] = []

    def on_event(self, event: object) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[object]:
        return [e for e in self.events if isinstance(e, kind)]


def assert_canceled_with_the_call_answered(store, session_id: str, result) -> None:
    """The turn is recorded canceled, and its tool call has its error result (Crush #529)."""
    assert (result.reason, result.message) == (FinishReason.CANCELED, CANCELED_MESSAGE)
    messages = store.list_messages(session_id)
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert [(r.is_error, r.content) for r in messages[2].tool_results] == [(True, TOOL_CANCELED)]
    assert messages[-1].finish_reason is FinishReason.CANCELED


async def test_stop_after_allow_never_starts_the_tool(store):
    """Issue 31: the user answers Allow and clicks Stop before the turn runs again."""
    session = store.create_session()
    ran: list[str] = []
    agent: SessionAgent

    async def run_code(arguments, context):
        ran.append(arguments["code"])
        return ToolResult("ran")

    class AllowThenStop:
        async def ask(self, request):
            return await a_stop_lands_with_the_answer(
                lambda: agent.cancel(session.id), Decision.ALLOW
            )

    python = Tool(ToolSpec("python", "Run.", {"type": "object"}), run_code, changes_state=True)
    model = ScriptedModel([Reply(tool_calls=[ToolCall("python", {"code": "rm()"})]), "more"])
    policy = PermissionPolicy(AllowThenStop())
    agent = SessionAgent(model, store, tools=[python], permissions=policy)
    events = Events()
    result = await within(agent.run(SessionAgentCall(session.id, "go", observer=events)))

    assert ran == []
    assert len(events.of(PermissionAsked)) == 1 and events.of(ToolStarted) == []
    assert [(r.decision, r.source) for r in policy.records] == [(Decision.ALLOW, "user")]
    assert len(model.requests) == 1
    assert_canceled_with_the_call_answered(store, session.id, result)


@pytest.mark.parametrize("asks", [False, True], ids=["read-only", "state-changing"])
async def test_stop_as_a_tool_ends_neither_asks_for_nor_starts_the_next_call(store, asks):
    session = store.create_session()
    ran: list[str] = []
    asked: list[str] = []
    agent: SessionAgent

    async def read(arguments, context):
        await a_stop_lands_with_the_answer(lambda: agent.cancel(session.id))
        return ToolResult("read")

    async def change(arguments, context):
        ran.append("change")
        return ToolResult("changed")

    class Broker:
        async def ask(self, request):
            asked.append(request.tool_name)
            return Decision.ALLOW

    tools = [
        Tool(ToolSpec("read", "Read.", {"type": "object"}), read),
        Tool(ToolSpec("change", "Change.", {"type": "object"}), change, changes_state=asks),
    ]
    model = ScriptedModel([Reply(tool_calls=[ToolCall("read"), ToolCall("change")]), "more"])
    agent = SessionAgent(model, store, tools=tools, permissions=PermissionPolicy(Broker()))
    result = await within(agent.run(SessionAgentCall(session.id, "go")))

    assert (ran, asked) == ([], [])
    assert result.reason is FinishReason.CANCELED
    results = store.list_messages(session.id)[2].tool_results
    assert [(r.is_error, r.content) for r in results] == [(False, "read"), (True, TOOL_CANCELED)]


async def test_stop_as_the_turn_becomes_active_starts_neither_its_tools_nor_its_request(store):
    """A click whose lock section runs after the turn was made active (the mark read by the
    starter) and whose task.cancel() waits behind the turn's first step."""
    session = store.create_session()
    refreshed: list[int] = []

    class Servers:
        async def refresh(self, tools):
            refreshed.append(len(tools))

        def unknown_tool(self, name):
            return None

    model = ScriptedModel(["answer"])
    agent = SessionAgent(model, store)
    agent.tool_sources.append(Servers())

    def stop_once_running(status):
        if status.running and not agent._dispatch.state(session.id).cancel_mark:
            click = threading.Thread(target=agent.cancel, args=(session.id,))
            click.start()
            click.join()

    agent.add_status_listener(stop_once_running)
    result = await within(agent.run(SessionAgentCall(session.id, "go")))

    assert (refreshed, model.requests) == ([], [])
    assert result.reason is FinishReason.CANCELED
    assert [(m.role, m.finish_reason) for m in store.list_messages(session.id)] == [
        (Role.USER, None),
        (Role.ASSISTANT, FinishReason.CANCELED),
    ]


@pytest.mark.parametrize("past_its_window", [False, True], ids=["request", "summary request"])
async def test_stop_while_the_mcp_servers_start_sends_no_model_request(store, past_its_window):
    """The first request of a turn follows the servers' start: the step's own, or the
    summary's when the session is past its window."""
    session = store.create_session()
    model = ScriptedModel([ANSWER] * 4 + ["The summary.", "the answer"])
    agent = SessionAgent(model, store, context=ContextPolicy(context_window=WINDOW))
    prompts = [FIRST, "second", "third", "fourth"] if past_its_window else []
    for prompt in prompts:
        await within(agent.run(SessionAgentCall(session.id, prompt)))
    before = len(model.requests)

    class SlowServers:
        async def refresh(self, tools):
            await a_stop_lands_with_the_answer(lambda: agent.cancel(session.id))

        def unknown_tool(self, name):
            return None

    agent.tool_sources.append(SlowServers())
    result = await within(agent.run(SessionAgentCall(session.id, "go")))

    assert len(model.requests) == before
    assert result.reason is FinishReason.CANCELED
    stored = store.list_messages(session.id)
    assert [(m.role, m.text) for m in stored[2 * len(prompts) :]] == [
        (Role.USER, "go"),
        (Role.ASSISTANT, ""),
    ]


class EndsWithAStop:
    """Plays ``model``'s replies; request number ``step``, after its last event, waits while
    its stream's end and a Stop click land together."""

    def __init__(self, model: ScriptedModel, step: int, stop: Callable[[], None]) -> None:
        self.model, self.step, self.stop = model, step, stop
        self.name, self.provider = model.name, model.provider

    async def stream(self, messages, *, system=None, tools=()):
        step = len(self.model.requests)
        async for event in self.model.stream(messages, system=system, tools=tools):
            yield event
        if step == self.step:
            await a_stop_lands_with_the_answer(self.stop)


async def test_stop_as_a_summary_ends_stores_no_summary_and_sends_no_request(store):
    session = store.create_session()
    scripted = ScriptedModel([ANSWER] * 4 + ["The summary.", "the answer"])
    model = EndsWithAStop(scripted, 4, lambda: agent.cancel(session.id))
    agent = SessionAgent(model, store, context=ContextPolicy(context_window=WINDOW))
    for prompt in [FIRST, "second", "third", "fourth"]:
        await within(agent.run(SessionAgentCall(session.id, prompt)))
    result = await within(agent.run(SessionAgentCall(session.id, "fifth")))

    assert result.reason is FinishReason.CANCELED
    assert is_summary_request(scripted.requests[-1])  # the summary's, and none after it
    stored = store.list_messages(session.id)
    assert not [m for m in stored if m.role is Role.SUMMARY]
    assert [(m.role, m.text) for m in stored[-2:]] == [(Role.USER, "fifth"), (Role.ASSISTANT, "")]


async def test_stop_as_a_compaction_summary_ends_stores_no_summary(store):
    session = store.create_session()
    scripted = ScriptedModel(["one", "two", "The summary."])
    model = EndsWithAStop(scripted, 2, lambda: agent.cancel(session.id))
    agent = SessionAgent(model, store)
    for prompt in ["first", "second"]:
        await within(agent.run(SessionAgentCall(session.id, prompt)))
    call = SessionAgentCall(session.id, "(compact the session)", compact=True)
    result = await within(agent.run(call))

    assert result.reason is FinishReason.CANCELED
    assert len(scripted.requests) == 3  # the summary was asked for, and streamed to its end
    assert not [m for m in store.list_messages(session.id) if m.role is Role.SUMMARY]


def one_call(name: str, arguments: dict) -> ScriptedModel:
    return ScriptedModel([Reply(tool_calls=[ToolCall(name, arguments)]), "more"])


async def test_stop_while_an_mcp_server_restarts_sends_it_no_call(store):
    session = store.create_session()
    sent: list[str] = []
    agent: SessionAgent
    servers = MCPServers(lambda: {"db": MCPServerConfig("db", command="db-server")})
    servers.reload()
    server = servers.servers["db"]
    server.state = ServerState.RUNNING  # listed as if started
    server.tools = [mcp_types.Tool(name="drop", input_schema={"type": "object"})]

    async def call_tool(tool, arguments, read_timeout_seconds=None):
        sent.append(tool)
        return mcp_types.CallToolResult(content=[])

    async def restart():  # the server had exited: the call waits for its restart
        server._stop = asyncio.Event()
        await a_stop_lands_with_the_answer(lambda: agent.cancel(session.id))
        return SimpleNamespace(call_tool=call_tool)

    server.ensure_started = restart
    agent = SessionAgent(one_call("mcp_db_drop", {}), store)
    agent.tool_sources.append(servers)
    result = await within(agent.run(SessionAgentCall(session.id, "go")))

    assert sent == []
    assert_canceled_with_the_call_answered(store, session.id, result)


async def test_stop_while_the_page_does_not_answer_inserts_no_cell(store, monkeypatch):
    """insert_cell asks the notebook page first; a Stop while it waits for the page's answer
    must not send the cell by IPython's payload instead."""
    session = store.create_session()
    proposed: list[str] = []
    agent: SessionAgent

    async def page_does_not_answer(shell, data, timeout):
        return await a_stop_lands_with_the_answer(lambda: agent.cancel(session.id))

    monkeypatch.setattr("jupyter_crush.notebook.provenance.labcomm.request", page_does_not_answer)
    shell = SimpleNamespace(set_next_input=lambda code, replace: proposed.append(code))
    tool = InsertCellTool(shell, cell_proposer(store, shell)).tool()
    agent = SessionAgent(one_call("insert_cell", {"code": "x = 1"}), store, tools=[tool])
    result = await within(agent.run(SessionAgentCall(session.id, "go")))

    assert proposed == []
    assert_canceled_with_the_call_answered(store, session.id, result)


async def test_stop_while_edit_reads_the_file_leaves_it_unwritten(store, tmp_path, monkeypatch):
    session = store.create_session()
    (tmp_path / "data.py").write_text("x = 1\n")
    agent: SessionAgent

    async def to_thread(function, *args):  # on the loop: a write starts when it is called
        result = function(*args)
        if function.__name__ == "_edit_plan":  # the read ends as the Stop lands
            await a_stop_lands_with_the_answer(lambda: agent.cancel(session.id))
        return result

    monkeypatch.setattr(file_writing.asyncio, "to_thread", to_thread)
    edit = FileTools(Workspace(tmp_path)).edit_tool()
    arguments = {"path": "data.py", "old_string": "x = 1", "new_string": "x = 2"}
    agent = SessionAgent(one_call("edit", arguments), store, tools=[edit])
    result = await within(agent.run(SessionAgentCall(session.id, "go")))

    assert Path(tmp_path / "data.py").read_text() == "x = 1\n"
    assert_canceled_with_the_call_answered(store, session.id, result)


@pytest.mark.parametrize("reason", [FinishReason.END_TURN, FinishReason.CANCELED])
def test_format_code_inserts_no_cell_for_a_stopped_turn(store, reason):
    """``-f code`` puts an answer's code below the cell: not the code of a stopped turn."""
    session = store.create_session()
    inserted: list[str] = []
    shell = SimpleNamespace(set_next_input=lambda code, replace: inserted.append(code))
    view = SimpleNamespace(
        finish_reason=reason,
        answer_markdown="Here:\n```python\nx = 1\n```\n",
        session_id=session.id,
    )
    no_turns = SimpleNamespace(latest=lambda session_id: None)  # nothing for undo to track
    code_to_next_cell(SimpleNamespace(store=store, shell=shell, undo=no_turns), view)
    assert inserted == ([] if reason is FinishReason.CANCELED else ["x = 1"])
