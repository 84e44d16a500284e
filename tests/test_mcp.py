"""MCP servers: crush.json's "mcp" section, tool names and results, a misconfigured server
through the real agent, and a server over streamable HTTP on 127.0.0.1 (slow)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mcp import types
from support.kernel_harness import ROOT
from support.mcp_server import PIXEL

from jupyter_crush import FinishReason, SessionAgent, SessionAgentCall
from jupyter_crush.core.tools import ToolContext
from jupyter_crush.mcp.config import MCPServerConfig, load_mcp_servers
from jupyter_crush.mcp.server import MCPServer, ServerState
from jupyter_crush.mcp.tools import MCPServers, tool_name, tool_result
from jupyter_crush.providers.config import CrushConfigError
from jupyter_crush.providers.trust import TRUST_ENV
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall

SERVER = str(ROOT / "tests" / "support" / "mcp_server.py")


@pytest.fixture
def crush_home(tmp_path, monkeypatch):
    """A working directory and XDG home of our own, so no real crush.json is read."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_crush_json_mcp_section_in_crushs_shape(crush_home, monkeypatch):
    monkeypatch.setenv(TRUST_ENV, "1")  # a folder's file untrusted: test_trust.py
    monkeypatch.setenv("GH_PAT", "secret-token")
    monkeypatch.setenv("DB_URL", "postgres://db")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    write(
        crush_home / "xdg" / "crush" / "crush.json",
        {"mcp": {"files": {"type": "stdio", "command": "node", "args": ["old.js"]}}},
    )
    write(
        crush_home / "crush.json",
        {
            "mcp": {
                "files": {
                    "type": "stdio",
                    "command": "node",
                    "args": ["server.js", "$DB_URL"],
                    "env": {"DB": "$DB_URL", "GONE": "$UNSET_VAR"},
                    "timeout": 30,
                },
                "github": {
                    "type": "http",
                    "url": "https://example.com/mcp/",
                    "headers": {"Authorization": "Bearer $GH_PAT", "X-Opt": "$UNSET_VAR"},
                    "disabled_tools": ["delete_repo"],
                },
                "legacy": {"type": "sse", "url": "https://example.com/sse", "disabled": True},
            }
        },
    )
    servers = load_mcp_servers()
    files, github, legacy = servers["files"], servers["github"], servers["legacy"]
    assert files.args == ("server.js", "postgres://db")  # the project file wins by name
    assert dict(files.env) == {"DB": "postgres://db"}  # an unset whole "$VAR" is left out
    assert (files.start_timeout, files.call_timeout) == (30, 30)
    assert dict(github.headers) == {"Authorization": "Bearer secret-token"}
    assert (github.start_timeout, github.call_timeout) == (10, 120)  # Crush's 10 s to connect
    assert not github.offers("delete_repo") and github.offers("list_issues")
    assert legacy.disabled and legacy.type == "sse"
    assert "secret-token" not in repr(github)


def test_trait_entries_win_by_name_and_bad_entries_fail_alone(crush_home, monkeypatch):
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    write(crush_home / "crush.json", {"mcp": {"db": {"type": "stdio", "command": "db-server"}}})
    servers = load_mcp_servers(
        None,
        {
            "db": {"type": "stdio", "command": "other-db-server"},
            "typo": {"type": "websocket", "url": "ws://x"},
            "nocmd": {"type": "stdio"},
            "token": {"type": "http", "url": "http://x", "headers": {"A": "Bearer $NO_SUCH_TOKEN"}},
            "slow": {"command": "x", "timeout": -1},
        },
    )
    assert servers["db"].command == "other-db-server"
    assert servers["db"].source == "CrushConfig.mcp_servers"
    assert 'has type \'websocket\'; use one of "stdio", "http", "sse"' in servers["typo"].error
    assert 'has no "command"' in servers["nocmd"].error
    assert "refers to $NO_SUCH_TOKEN, which is not set" in servers["token"].error
    assert "timeout must be a positive number of seconds" in servers["slow"].error


def test_unreadable_crush_json_is_one_clear_error(crush_home):
    (crush_home / "crush.json").write_text('{"mcp": {')
    with pytest.raises(CrushConfigError, match="is not valid JSON"):
        load_mcp_servers()
    manager = MCPServers(load_mcp_servers)
    assert manager.status().startswith("MCP configuration error: ")


def test_tool_names_are_safe_and_bounded():
    assert tool_name("my server", "get.item") == "mcp_my_server_get_item"
    long = tool_name("warehouse", "x" * 100)
    assert len(long) == 64 and long.startswith("mcp_warehouse_xxx")
    assert long != tool_name("warehouse", "x" * 99)


def listed(name: str, read_only: bool = False) -> types.Tool:
    annotations = types.ToolAnnotations(read_only_hint=True) if read_only else None
    return types.Tool(name=name, input_schema={"type": "object"}, annotations=annotations)


async def test_colliding_names_get_a_suffix_and_read_only_skips_permission():
    configs = {
        "a_b": MCPServerConfig("a_b", command="x"),
        "a": MCPServerConfig("a", command="y"),
    }
    manager = MCPServers(lambda: configs)
    manager.reload()
    for server, tool in (("a_b", "c"), ("a", "b_c")):
        manager.servers[server].state = ServerState.RUNNING  # listed as if started
        manager.servers[server].tools = [listed(tool, read_only=server == "a")]
    tools = {}
    await manager.refresh(tools)
    assert sorted(tools) == ["mcp_a_b_c", "mcp_a_b_c_2"]
    assert tools["mcp_a_b_c"].changes_state is False  # "a" sorts first; read-only
    assert tools["mcp_a_b_c_2"].changes_state is True
    # A removed server's tools leave the map on the next refresh.
    del configs["a"]
    await manager.refresh(tools)
    assert sorted(tools) == ["mcp_a_b_c"]


def test_results_become_tool_results():
    result = types.CallToolResult(
        content=[
            types.TextContent(text="two rows"),
            types.ImageContent(data=base64.b64encode(PIXEL).decode(), mime_type="image/png"),
            types.ImageContent(data=base64.b64encode(b"not a png").decode(), mime_type="image/png"),
            types.AudioContent(data="", mime_type="audio/wav"),
            types.EmbeddedResource(
                resource=types.TextResourceContents(uri="file:///a.txt", text="embedded text")
            ),
            types.ResourceLink(uri="file:///b.csv", name="b.csv"),
        ],
        structured_content={"rows": 2},
    )
    converted = tool_result("db", result)
    lines = converted.content.splitlines()
    assert lines[0] == "two rows"
    assert lines[1].startswith("[image image/png not shown: ")
    assert lines[2:] == [
        "[audio audio/wav not shown: models here take text and images]",
        "embedded text",
        "[resource link file:///b.csv: b.csv]",
    ]
    assert converted.metadata == {"mcp_server": "db", "structured_content": {"rows": 2}}
    [image] = converted.images
    assert (image.media_type, image.width, image.height) == ("image/png", 1, 1)
    assert image.label == "from MCP server db"
    structured_only = tool_result("db", types.CallToolResult(content=[], structured_content=[1]))
    assert structured_only.content == "[1]"
    error = tool_result(
        "db", types.CallToolResult(content=[types.TextContent(text="bad")], is_error=True)
    )
    assert (error.content, error.is_error) == ("bad", True)


async def test_misconfigured_server_fails_with_its_reason_and_the_turn_goes_on(store):
    servers = MCPServers(
        lambda: {"broken": MCPServerConfig("broken", command="no-such-mcp-command-here")}
    )
    model = ScriptedModel([Reply(tool_calls=[ToolCall("mcp_broken_query", {})]), "It failed."])
    agent = SessionAgent(model, store)
    agent.tool_sources.append(servers)
    session = store.create_session()
    result = await agent.run(SessionAgentCall(session.id, "query"))
    assert result.reason is FinishReason.END_TURN
    sent = model.requests[1].messages[-1].tool_results[0]
    assert sent.is_error
    assert sent.content.startswith(
        "MCP server 'broken' failed: could not start: No such file or directory "
        "'no-such-mcp-command-here'"
    )
    assert "%crush mcp restart broken" in sent.content
    assert "failed: could not start" in servers.status()
    # The next use retries: at once after the first failure, then with a growing backoff.
    server = servers.servers["broken"]
    assert server.failures == 1
    await servers.refresh({})
    assert server.failures == 2 and server.retry_at > time.monotonic()
    await servers.refresh({})
    assert server.failures == 2  # not retried inside its backoff


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def http_server(tmp_path):
    port = free_port()
    marks = tmp_path / "marks"
    marks.mkdir()
    process = subprocess.Popen(
        [sys.executable, SERVER, "http", str(port)],
        env={**__import__("os").environ, "MCP_TEST_MARKS": str(marks)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert process.poll() is None and time.monotonic() < deadline, "HTTP server did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/mcp", marks
    process.terminate()
    process.wait(10)


@pytest.mark.slow
async def test_streamable_http_server_results_and_stop(http_server):
    url, marks = http_server
    config = MCPServerConfig("web", type="http", url=url, headers={"X-Test": "1"}, timeout=30)
    servers = MCPServers(lambda: {"web": config})
    tools = {}
    await servers.refresh(tools)
    assert servers.servers["web"].state is ServerState.RUNNING, servers.status()
    context = ToolContext("s", "c")
    added = await tools["mcp_web_add"].run({"a": 20, "b": 22}, context)
    assert (added.content, added.metadata["structured_content"]) == ("42", {"result": 42})
    pixel = await tools["mcp_web_pixel"].run({}, context)
    assert [(i.media_type, i.width) for i in pixel.images] == [("image/png", 1)]
    failed = await tools["mcp_web_fail"].run({"reason": "nope"}, context)
    assert failed.is_error
    # A Stop (the turn's task cancelled) ends the call at once and cancels it on the server.
    call = asyncio.ensure_future(tools["mcp_web_slow"].run({"seconds": 60}, context))
    while not list(marks.glob("slow-*")):
        await asyncio.sleep(0.02)
    started = time.perf_counter()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert time.perf_counter() - started < 0.5
    deadline = time.monotonic() + 10
    while not list(marks.glob("cancelled-*")):
        assert time.monotonic() < deadline, "the server never saw notifications/cancelled"
        await asyncio.sleep(0.05)
    assert (await tools["mcp_web_add"].run({"a": 1, "b": 1}, context)).content == "2"
    servers.servers["web"].stop()


def test_a_server_entry_is_replaced_when_its_config_changes():
    configs = {"x": MCPServerConfig("x", command="a")}
    manager = MCPServers(lambda: configs)
    manager.reload()
    first = manager.servers["x"]
    manager.reload()
    assert manager.servers["x"] is first
    configs["x"] = MCPServerConfig("x", command="b")
    manager.reload()
    assert manager.servers["x"] is not first and isinstance(manager.servers["x"], MCPServer)


@pytest.mark.slow
async def test_stdio_server_garbage_and_an_idle_exit():
    config = MCPServerConfig("t", command=sys.executable, args=(SERVER,), timeout=60)
    servers = MCPServers(lambda: {"t": config})
    tools = {}
    await servers.refresh(tools)
    server = servers.servers["t"]
    context = ToolContext("s", "c")
    try:
        # A line that is not JSON-RPC ends the call at once (not after the 60 s timeout).
        started = time.perf_counter()
        garbage = await tools["mcp_t_garbage"].run({}, context)
        assert time.perf_counter() - started < 10
        assert garbage.is_error
        assert garbage.content.startswith(
            "MCP server 't' failed during garbage: it sent something that is not MCP: "
            "'this is not MCP'"
        )
        assert server.state is ServerState.FAILED
        assert (await tools["mcp_t_add"].run({"a": 1, "b": 2}, context)).content == "3"
        # A server that died between calls is restarted by the next one, which succeeds.
        pid = server.pid
        process = psutil.Process(pid)
        process.kill()
        with contextlib.suppress(psutil.NoSuchProcess):  # reaped by the SDK's child watcher
            while process.status() != psutil.STATUS_ZOMBIE:
                await asyncio.sleep(0.01)
        assert (await tools["mcp_t_add"].run({"a": 2, "b": 2}, context)).content == "4"
        assert server.pid != pid
    finally:
        servers.shutdown()
