"""The notebook tools and the permission policy driven by the real agent (and a real kernel)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from support.bounded import until, within

from jupyter_crush import FinishReason, Role, SessionAgent, SessionAgentCall
from jupyter_crush.core.tools import Decision
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall
from jupyter_crush.tools import default_tools
from jupyter_crush.tools.permissions import HEADLESS_REASON, PermissionPolicy


class HeldBroker:
    """A UI broker that keeps its prompt open until answered."""

    def __init__(self) -> None:
        self.shown = asyncio.Event()
        self.answer: asyncio.Future[Decision] | None = None
        self.open = 0
        self.asked = []

    async def ask(self, request):
        self.asked.append(request)
        self.answer = asyncio.get_running_loop().create_future()
        self.open += 1
        self.shown.set()
        try:
            return await self.answer
        finally:
            self.open -= 1


def agent_with(store, tools, *replies, permissions=None):
    model = ScriptedModel(replies)
    agent = SessionAgent(model, store, tools=tools, permissions=permissions)
    return agent, model


async def test_view_result_reaches_the_next_step_and_the_store(store, shell, tmp_path):
    tools = default_tools(shell, tmp_path)
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    agent, model = agent_with(
        store,
        tools,
        Reply(text="Reading.", tool_calls=[ToolCall("view", {"path": "data.csv"})]),
        "It has columns a and b.",
        permissions=PermissionPolicy(None),  # view is read-only: never asks
    )
    session = store.create_session()
    result = await within(agent.run(SessionAgentCall(session.id, "what is in data.csv?")))
    assert result.reason is FinishReason.END_TURN
    expected = "     1|a,b\n     2|1,2"
    sent = model.requests[1].messages[-1].tool_results[0]
    assert (sent.content, sent.is_error) == (expected, False)
    messages = store.list_messages(session.id)
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert messages[2].tool_results[0].content == expected
    assert messages[-1].text == "It has columns a and b."
    # the model was told about every default tool
    assert {t.name for t in model.requests[0].tools} >= {"python", "view", "bash", "edit"}


async def test_headless_deny_ends_the_turn_canceled_with_a_clear_record(store, shell, tmp_path):
    tools = default_tools(shell, tmp_path)
    policy = PermissionPolicy(HeldBroker(), headless=True, tools=tools)
    agent, _ = agent_with(
        store,
        tools,
        Reply(tool_calls=[ToolCall("bash", {"command": "touch ran.txt"})]),
        "never",
        permissions=policy,
    )
    session = store.create_session()
    result = await within(agent.run(SessionAgentCall(session.id, "touch a file")))
    assert result.reason is FinishReason.CANCELED
    assert result.message == f"Permission denied for bash: {HEADLESS_REASON}"
    assert not (tmp_path / "ran.txt").exists()
    messages = store.list_messages(session.id)
    call = messages[1].tool_calls[0]
    assert messages[2].tool_results[0].is_error
    assert messages[2].tool_results[0].content == result.message
    assert messages[-1].finish_reason is FinishReason.CANCELED
    assert policy.denial_reason(call.id) == HEADLESS_REASON
    assert policy.records[-1].request.summary == "touch ran.txt"


async def test_python_tool_through_the_agent_with_allow_for_session(store, shell, tmp_path):
    tools = default_tools(shell, tmp_path)
    broker = HeldBroker()
    policy = PermissionPolicy(broker, tools=tools)
    agent, _ = agent_with(
        store,
        tools,
        Reply(tool_calls=[ToolCall("python", {"code": "total = 6 * 7\nprint(total)"})]),
        Reply(tool_calls=[ToolCall("python", {"code": "total + 1"})]),
        "43.",
        permissions=policy,
    )
    session = store.create_session()
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "compute")))
    await within(broker.shown.wait())
    assert broker.asked[0].summary == "total = 6 * 7\nprint(total)"
    broker.answer.set_result(Decision.ALLOW_SESSION)
    result = await within(run)
    assert result.reason is FinishReason.END_TURN
    assert len(broker.asked) == 1  # the second python call was allowed for the session
    results = [r.content for m in store.list_messages(session.id) for r in m.tool_results]
    assert results == ["42", "Out: 43"]
    assert shell.user_ns["total"] == 42


async def test_cancel_while_the_prompt_is_open(store, shell, tmp_path):
    tools = default_tools(shell, tmp_path)
    broker = HeldBroker()
    policy = PermissionPolicy(broker, tools=tools)
    agent, _ = agent_with(
        store,
        tools,
        Reply(tool_calls=[ToolCall("write", {"path": "x.txt", "content": "x"})]),
        "never",
        permissions=policy,
    )
    session = store.create_session()
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "write x")))
    await within(broker.shown.wait())
    agent.cancel(session.id)
    result = await within(run)
    assert result.reason is FinishReason.CANCELED
    assert broker.open == 0 and broker.answer.cancelled()
    assert policy.records[-1].source == "canceled"
    assert not (tmp_path / "x.txt").exists()
    messages = store.list_messages(session.id)
    assert messages[2].tool_results[0].is_error  # the call is settled for the next request


async def test_stop_during_python_stops_the_worker(store, shell, tmp_path):
    tools = default_tools(shell, tmp_path)
    shell.user_ns["started"] = threading.Event()
    code = "import threading\nworker = threading.current_thread()\nstarted.set()\nwhile True: pass"
    agent, _ = agent_with(
        store,
        tools,
        Reply(tool_calls=[ToolCall("python", {"code": code})]),
        "never",
        permissions=PermissionPolicy(None, allowed_tools=["python"]),
    )
    session = store.create_session()
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "spin")))
    await until(shell.user_ns["started"].is_set)
    agent.cancel(session.id)
    result = await within(run)
    assert result.reason is FinishReason.CANCELED
    shell.user_ns["worker"].join(timeout=10)
    assert not shell.user_ns["worker"].is_alive()


# -- a real kernel, clicking the permission buttons over comm messages ---------------------


FIRST_CODE = (
    "secret_answer = 6 * 7\n"
    "print('tool says', secret_answer)\n"
    "from IPython.display import display, clear_output\n"
    "display({'shown': 1})\n"
    "clear_output()"
)
SECOND_CODE = "print('again', secret_answer)"
TWO_PROMPTS = (
    "from jupyter_crush.testing import Reply, ToolCall\n"
    "crush.use_model(ScriptedModel(["
    f"Reply(tool_calls=[ToolCall('python', {{'code': {FIRST_CODE!r}}})]), 'First done.', "
    f"Reply(tool_calls=[ToolCall('python', {{'code': {SECOND_CODE!r}}})]), 'Second done.']))"
)


@pytest.mark.slow
def test_allow_for_session_click_in_a_real_kernel(tmp_path):
    from support.kernel_harness import SETUP, Kernel, view_ops

    kernel = Kernel(tmp_path)
    try:
        kernel.run(SETUP)
        kernel.run(TWO_PROMPTS)
        kernel.iopub.clear()
        kernel.run("%%crush --new\nfirst")
        ask = kernel.wait_ask()
        kernel.decide(ask["id"], "allow_session", subshell_id=kernel.create_subshell())
        kernel.run("import asyncio; await asyncio.wait_for(crush.last_view.wait(), 20)", 25)
        kernel.drain()
        mark = len(kernel.iopub)
        kernel.run("%%crush\nsecond")  # same session: no prompt this time
        kernel.run("import asyncio; await asyncio.wait_for(crush.last_view.wait(), 20)", 25)
        kernel.drain()
        prompts = [v for m in kernel.iopub[mark:] for op, v in view_ops(m) if op == "ask"]
        assert prompts == []
        # The tool's prints went into its result, never into a cell's output.
        streams = [m["content"]["text"] for m in kernel.iopub if m["msg_type"] == "stream"]
        assert not any("tool says" in text or "again" in text for text in streams)
        displays = [
            m for m in kernel.iopub if m["msg_type"] in ("display_data", "update_display_data")
        ]
        # (the run widget's own display shows the tool result; the tool's display() is not)
        assert not any(m["content"]["data"].get("text/plain") == "{'shown': 1}" for m in displays)
        assert not [m for m in kernel.iopub if m["msg_type"] == "clear_output"]
        turns = kernel.value(
            "[(str(m.role), [r.content for r in m.tool_results], m.finish_reason and "
            "str(m.finish_reason)) for m in crush.store.list_messages(crush.current_session_id)]"
        )
        tool_results = [t[1][0] for t in turns if t[0] == "tool"]
        assert tool_results == ["tool says 42\n[display] {'shown': 1}", "again 42"]
        assert [t[2] for t in turns if t[2]][-2:] == ["tool_use", "end_turn"]
        sources = kernel.value(
            "[r.source for r in crush.permissions.records if r.request.tool_name == 'python']"
        )
        assert sources == ["user", "session"]
    finally:
        kernel.shutdown()


SPINNER = (
    "import pathlib, time\n"
    "pathlib.Path('tool-started').touch()\n"
    "for i in range(60):\n"
    "    print('tool line', i)\n"
    "    time.sleep(0.025)"
)


@pytest.mark.slow
def test_a_cell_running_beside_the_python_tool_keeps_its_output(tmp_path):
    import time

    from support.kernel_harness import SETUP, Kernel

    kernel = Kernel(tmp_path)
    try:
        kernel.run(SETUP)
        kernel.run(
            "from jupyter_crush.testing import Reply, ToolCall\n"
            "crush.use_model(ScriptedModel(["
            f"Reply(tool_calls=[ToolCall('python', {{'code': {SPINNER!r}}})]), 'Done.']))"
        )
        kernel.run("%%crush --new --yolo\nspin")
        deadline = time.monotonic() + 20
        while not (tmp_path / "tool-started").exists():
            assert time.monotonic() < deadline, "the python tool never started"
            time.sleep(0.01)
        cell = kernel.execute(
            "import time\nfor i in range(20):\n    print('mine', i)\n    time.sleep(0.02)"
        )
        assert "mine 19" in cell.stdout and "tool line" not in cell.stdout
        kernel.run("import asyncio; await asyncio.wait_for(crush.last_view.wait(), 20)", 25)
        kernel.drain()
        streams = "".join(m["content"]["text"] for m in kernel.iopub if m["msg_type"] == "stream")
        assert "tool line" not in streams
        result = kernel.value(
            "[r.content for m in crush.store.list_messages(crush.current_session_id) "
            "for r in m.tool_results]"
        )[0]
        assert "tool line 0" in result and "tool line 59" in result and "mine" not in result
    finally:
        kernel.shutdown()


@pytest.mark.slow
def test_insert_cell_payload_rides_on_the_next_execute_reply(tmp_path):
    from support.kernel_harness import SETUP, Kernel

    cell = "df = load()\ndf.plot()"
    kernel = Kernel(tmp_path)
    try:
        kernel.run(SETUP)
        kernel.run(
            "from jupyter_crush.testing import Reply, ToolCall\n"
            "crush.use_model(ScriptedModel(["
            f"Reply(tool_calls=[ToolCall('insert_cell', {{'code': {cell!r}}})]), 'Proposed.']))"
        )
        kernel.run("%%crush --new --yolo\npropose")
        # The proposal arrives while this cell executes, so it rides on this cell's reply
        # (a front end inserts it below the cell); the next reply has none left.
        waiting = "import asyncio; await asyncio.wait_for(crush.last_view.wait(), 20)"
        reply = kernel.execute(waiting, timeout=25).reply["content"]
        assert reply["payload"] == [{"source": "set_next_input", "text": cell, "replace": False}]
        assert kernel.execute("1").reply["content"]["payload"] == []
        assert "df" not in kernel.value("list(get_ipython().user_ns)")  # proposed, never run
    finally:
        kernel.shutdown()
