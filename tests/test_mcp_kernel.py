"""MCP servers in a real kernel: configured in crush.json, started on the first prompt, their
tools called by a scripted model through the permission prompt, and every way a server can
go wrong (exit, hang, bad command, a Stop mid-call, kernel shutdown and restart) ending the
call with a clear error while the turn, the session and the kernel go on."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
import pytest
from support.kernel_harness import ROOT, SETUP, Kernel
from test_kernel import wait_view

pytestmark = pytest.mark.slow

SERVER = str(ROOT / "tests" / "support" / "mcp_server.py")


def write_crush_json(folder: Path) -> None:
    # The shape Crush users have, with $ENV references expanded like the rest of the file.
    server = {"type": "stdio", "command": "$MCP_PYTHON", "args": [SERVER]}
    config = {
        "mcp": {
            "demo": {**server, "env": {"MCP_TEST_MARKS": "$MCP_TEST_MARKS"}, "timeout": 30},
            "stuck": {**server, "timeout": 10},
            "broken": {"type": "stdio", "command": "no-such-mcp-server-command"},
            "off": {**server, "disabled": True},
        }
    }
    (folder / "crush.json").write_text(json.dumps(config))


def start_kernel(folder: Path) -> Kernel:
    marks = folder / "marks"
    marks.mkdir(exist_ok=True)
    write_crush_json(folder)
    kernel = Kernel(
        folder,
        env={
            "MCP_PYTHON": sys.executable,
            "MCP_TEST_MARKS": str(marks),
            "XDG_CONFIG_HOME": str(folder / "xdg"),  # no user-wide crush.json
            "CRUSH_TRUST_PROJECT_CONFIG": "1",  # the folder's file is the test's own
        },
    )
    kernel.run(SETUP)
    return kernel


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    k = start_kernel(tmp_path_factory.mktemp("mcp-kernel"))
    yield k
    k.shutdown()


def script(kernel: Kernel, *steps: str) -> None:
    kernel.run(
        "from jupyter_crush.testing import Reply, ToolCall\n"
        f"crush.use_model(ScriptedModel([{', '.join(steps)}]))"
    )


def turn(kernel: Kernel) -> list:
    """(role, [(tool, is_error, content)], finish reason) of each message of the session."""
    return kernel.value(
        "[(str(m.role), [(r.name, r.is_error, r.content) for r in m.tool_results], "
        "m.finish_reason and str(m.finish_reason)) "
        "for m in crush.store.list_messages(crush.current_session_id)]"
    )


def results(kernel: Kernel) -> list:
    return [r for message in turn(kernel) for r in message[1]]


def test_tools_are_offered_and_called_with_permission(kernel):
    kernel.iopub.clear()
    script(
        kernel,
        "Reply(tool_calls=[ToolCall('mcp_demo_add', {'a': 2, 'b': 40}), "
        "ToolCall('mcp_demo_write_note', {'text': 'hello'}), ToolCall('mcp_demo_pixel', {})])",
        "'The sum is 42.'",
    )
    kernel.run("%%crush --new\nadd and note")
    # add is read-only (readOnlyHint): no prompt. write_note changes state: the prompt.
    # The first prompt starts the servers (seconds each on a busy machine).
    kernel.decide(kernel.wait_ask(timeout=60)["id"], "allow")
    wait_view(kernel, timeout=60)
    messages = turn(kernel)
    assert [m[0] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[2][1][0][:2] == ["mcp_demo_add", False]
    assert messages[2][1][0][2].startswith("42")
    assert messages[2][1][1] == ["mcp_demo_write_note", False, "noted: hello"]
    # The image is kept in the store like a figure, and read back from it.
    image = kernel.value(
        "(lambda r: [r.name, r.images[0].media_type, len(r.images[0].read())])"
        "(crush.store.list_messages(crush.current_session_id)[2].tool_results[2])"
    )
    assert image == ["mcp_demo_pixel", "image/png", 69]
    assert messages[-1][2] == "end_turn"
    specs = kernel.value("sorted(t for t in crush.agent.tools if t.startswith('mcp_'))")
    assert "mcp_demo_add" in specs and "mcp_stuck_hang" in specs
    assert not any(name.startswith(("mcp_off_", "mcp_broken_")) for name in specs)
    records = kernel.value(
        "[(r.request.tool_name, r.source) for r in crush.permissions.records "
        "if r.request.tool_name.startswith('mcp_')]"
    )
    assert records == [["mcp_demo_write_note", "user"]]


def test_status_command_lists_servers_states_and_tools(kernel):
    out = kernel.run("%crush mcp")
    servers = [line for line in out.splitlines() if line.startswith("  ") and line[2] != " "]
    lines = {line.split()[0]: line for line in servers}
    assert "running (pid" in lines["demo"]
    assert "failed: could not start: No such file or directory" in lines["broken"]
    assert "no-such-mcp-server-command" in lines["broken"]
    assert "disabled" in lines["off"]
    assert "mcp_demo_add (read-only)" in out
    assert "crush.json" in out.splitlines()[0]


def test_misconfigured_server_gives_a_clear_tool_result(kernel):
    script(
        kernel,
        "Reply(tool_calls=[ToolCall('mcp_broken_query', {'sql': 'select 1'})])",
        "'It is broken.'",
    )
    kernel.run("%%crush --new\nquery")
    wait_view(kernel, timeout=60)
    [(name, is_error, content)] = results(kernel)
    assert is_error and name == "mcp_broken_query"
    assert content.startswith("MCP server 'broken' failed: could not start: No such file")
    assert "%crush mcp restart broken" in content
    assert turn(kernel)[-1][2] == "end_turn"


def test_stop_during_a_slow_call_cancels_it_on_the_server(kernel, tmp_path_factory):
    marks = Path(kernel.value("__import__('os').environ['MCP_TEST_MARKS']"))
    script(kernel, "Reply(tool_calls=[ToolCall('mcp_demo_slow', {'seconds': 60})])", "'never'")
    kernel.iopub.clear()
    kernel.run("%%crush --new\nwait a minute")
    deadline = time.monotonic() + 60
    while not list(marks.glob("slow-*")):
        assert time.monotonic() < deadline, "the slow call never reached the server"
        time.sleep(0.05)
    clicked = time.time()
    kernel.stop()
    wait_view(kernel)
    reason, finished = kernel.value(
        "(lambda m: (str(m.finish_reason), m.finish.time))"
        "(crush.store.list_messages(crush.current_session_id)[-1])"
    )
    assert reason == "canceled"
    ended = finished - clicked
    print(f"Stop click to canceled turn: {ended * 1000:.0f} ms")
    assert ended < 5  # not the 60 s the call would take
    deadline = time.monotonic() + 10
    while not list(marks.glob("cancelled-*")):  # the SDK sent notifications/cancelled
        assert time.monotonic() < deadline, "the server never saw the cancellation"
        time.sleep(0.05)
    # The server is still the same running process and serves the next call.
    script(kernel, "Reply(tool_calls=[ToolCall('mcp_demo_add', {'a': 1, 'b': 1})])", "'2'")
    kernel.run("%%crush --new\nadd")
    wait_view(kernel, timeout=60)
    assert results(kernel)[0][2].startswith("2")


def test_server_that_exits_mid_call_is_restarted_on_next_use(kernel):
    pid = kernel.value("crush.mcp.servers['demo'].pid")
    script(
        kernel,
        "Reply(tool_calls=[ToolCall('mcp_demo_crash', {})])",
        "Reply(tool_calls=[ToolCall('mcp_demo_add', {'a': 3, 'b': 4})])",
        "'Recovered.'",
    )
    kernel.run("%%crush --new\ncrash it")
    wait_view(kernel, timeout=60)
    crashed, added = results(kernel)
    assert crashed[1] is True
    assert crashed[2].startswith("MCP server 'demo' failed during crash: the connection closed")
    assert added[1] is False and added[2].startswith("7")  # restarted on next use
    assert turn(kernel)[-1][2] == "end_turn"
    assert kernel.value("crush.mcp.servers['demo'].pid") != pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_hanging_server_times_out_and_the_session_goes_on(kernel):
    script(kernel, "Reply(tool_calls=[ToolCall('mcp_stuck_hang', {})])", "'It hung.'")
    kernel.run("%%crush --new\nhang")
    wait_view(kernel, timeout=60)
    [(_, is_error, content)] = results(kernel)
    assert is_error
    assert content.startswith("MCP server 'stuck' failed during hang: no answer within 10 s")
    assert turn(kernel)[-1][2] == "end_turn"
    out = kernel.run("%crush mcp")
    assert "failed: no answer within 10 s" in out
    kernel.run("%crush mcp restart stuck")
    kernel.run(
        "import asyncio\nfor _ in range(600):\n"
        "    if str(crush.mcp.servers['stuck'].state) != 'starting': break\n"
        "    await asyncio.sleep(0.05)",
        timeout=60,
    )
    assert kernel.value("str(crush.mcp.servers['stuck'].state)") == "running"


def server_pids(kernel: Kernel) -> list[int]:
    kernel.run("await crush.mcp.refresh({})", timeout=60)  # start them without a model
    pids = kernel.value("[s.pid for s in crush.mcp.servers.values() if s.pid]")
    assert len(pids) == 2  # demo and stuck; broken never started, off is disabled
    # A server blocked in a call does not exit when its stdin closes with the kernel.
    kernel.run(
        "import asyncio\n"
        "hung = asyncio.ensure_future(crush.mcp.servers['stuck'].call('hang', {}))\n"
        "await asyncio.sleep(1)"
    )
    return pids


def gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_kernel_restart_and_shutdown_leave_no_server_behind(tmp_path):
    k = start_kernel(tmp_path)
    try:
        before_restart = server_pids(k)
        k.km.restart_kernel(now=False)
        k.kc.wait_for_ready(timeout=60)
        assert gone(before_restart), "a server outlived the kernel restart"
        k.run(SETUP)
        before_shutdown = server_pids(k)
    finally:
        k.shutdown()
    assert gone(before_shutdown), "a server outlived the kernel"
