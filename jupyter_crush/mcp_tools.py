"""Tools from MCP servers, offered to the agent and run on the kernel's event loop.

:class:`MCPServers` is the agent's :class:`~jupyter_crush.tools.ToolSource`: at the start
of each turn it reads the configuration (:mod:`.mcp_config`), starts the servers that are
not running yet (all at once, each bounded by its timeout: the first prompt after the
kernel starts waits for them, no cell ever does), and offers each server's tools as
``mcp_<server>_<tool>``. Every server runs in one task of its own that holds the SDK's
transport and session open (the SDK's cancel scopes must be entered and left by one task);
tool calls are requests on that session from the turn's task.

A call ends with an error result naming the server, and the server is marked failed and
stopped, when the server exits, does not answer within its timeout, or writes something
that is not MCP; its next use restarts it, at once after the first failure and then after
1, 2, 4 … 30 seconds. A Stop cancels the turn's task: the SDK sends
``notifications/cancelled`` for the request and the call ends there. Kernel shutdown stops
every stdio server's process group.

The SDK is imported on first use, so ``%load_ext`` does not pay for it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .commands import command
from .mcp_config import MCPServerConfig, describe_sources, load_mcp_servers
from .model import ToolSpec
from .tools import Tool, ToolContext, ToolResult

if TYPE_CHECKING:
    from mcp import ClientSession
    from mcp import types as mcp_types

    from .config import CrushConfig
    from .crush import Crush

#: Tool names reach every provider; OpenAI allows at most 64 of these characters.
_NAME_LIMIT = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
#: The environment variable that marks a stdio server's process as this kernel's.
_MARK = "JUPYTER_CRUSH_MCP_SERVER"
_MAX_BACKOFF = 30.0
#: Seconds a stdio server gets to exit after SIGTERM at kernel shutdown before SIGKILL.
_SHUTDOWN_GRACE = 1.0
_QUIET = logging.NullHandler()


class ServerState(StrEnum):
    NOT_STARTED = "not started"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    DISABLED = "disabled"


class MCPServerError(Exception):
    """A server cannot serve a call; the message names the server and what to do."""


def tool_name(server: str, tool: str) -> str:
    """The name the model sees: ``mcp_<server>_<tool>``, in the characters every provider
    accepts, shortened with a hash when too long."""
    name = _UNSAFE.sub("_", f"mcp_{server}_{tool}")
    if len(name) > _NAME_LIMIT:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: _NAME_LIMIT - 9]}_{digest}"
    return name


def _prefix(server: str) -> str:
    return _UNSAFE.sub("_", f"mcp_{server}_")


class MCPServer:
    """One configured server: its connection, state and listed tools (kernel loop only)."""

    def __init__(self, config: MCPServerConfig) -> None:
        self.config = config
        self.state = ServerState.NOT_STARTED
        self.reason = ""  # why the server failed, for %crush mcp and tool results
        if config.error:
            self.state, self.reason = ServerState.FAILED, config.error
        elif config.disabled:
            self.state = ServerState.DISABLED
        self.tools: list[mcp_types.Tool] = []  # as last listed; kept while failed
        self.pid: int | None = None  # the running stdio server's process
        self.failures = 0  # consecutive failures, for the backoff
        self.retry_at = 0.0  # time.monotonic() before which a failed server is not restarted
        self._session: ClientSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None  # set: the runner closes its connection
        self._ready: asyncio.Future[None] | None = None  # done: the runner's start ended
        # The start in progress, shared by every caller waiting for it.
        self._starting: asyncio.Future[None] | None = None
        # Process groups of stdio servers not yet known to be gone (the running one and any
        # still shutting down): what shutdown() must stop.
        self._pids: set[int] = set()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def usable(self) -> bool:
        return not (self.config.disabled or self.config.error)

    # -- start and stop -------------------------------------------------------------------

    def due(self) -> bool:
        """Whether a turn starting now should (re)start this server."""
        if not self.usable or self.state in (ServerState.RUNNING, ServerState.STARTING):
            return False
        return time.monotonic() >= self.retry_at

    async def ensure_started(self) -> ClientSession:
        """The live session, starting the server if needed (bounded by its timeout)."""
        if not self.usable:
            raise MCPServerError(self.unavailable())
        if self.state is ServerState.RUNNING and self._session is not None:
            if self._alive():
                return self._session
            self._fail("exited while idle")  # the first failure restarts at once, below
        if self._starting is None:
            wait = self.retry_at - time.monotonic()
            if wait > 0:
                raise MCPServerError(self.unavailable())
            self._starting = asyncio.ensure_future(self._start())
        # Shielded: one caller's Stop must not abort a start others wait for.
        await asyncio.shield(self._starting)
        if self._session is None:
            raise MCPServerError(self.unavailable())
        return self._session

    async def _start(self) -> None:
        self.state = ServerState.STARTING
        self.reason = ""
        # Importing the SDK takes seconds on a busy machine: not on the kernel's loop.
        await asyncio.to_thread(_import_sdk)
        loop = asyncio.get_running_loop()
        ready = self._ready = loop.create_future()
        # Read the outcome even when nobody waits for it any more (a start that timed out).
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        stop = self._stop = asyncio.Event()
        self._runner = loop.create_task(self._run(ready, stop), name=f"mcp-server:{self.name}")
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.config.start_timeout)
        except TimeoutError:
            self._fail(f"did not finish starting within {self.config.start_timeout:g} s")
        except Exception as error:
            self._fail(f"could not start: {_describe(error)}")
        else:
            if self.state is ServerState.STARTING:
                self.state = ServerState.RUNNING
        finally:
            self._starting = None

    async def _run(self, ready: asyncio.Future[None], stop: asyncio.Event) -> None:
        """Hold the connection open until ``stop``; owns every SDK context it enters."""
        import tempfile
        import uuid

        from mcp import ClientSession
        from mcp import types as mcp_types

        # The SDK logs what it reports to us anyway (a line it cannot parse, with its
        # traceback); with no handler at all, Python would print that into a cell.
        logging.getLogger("mcp").addHandler(_QUIET)
        pid = None
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as stderr:
            try:
                async with contextlib.AsyncExitStack() as stack:
                    mark = uuid.uuid4().hex
                    read, write = await stack.enter_async_context(self._transport(stderr, mark))
                    if self.config.type == "stdio":
                        pid = self._adopt(_find_child(mark))
                    session = await stack.enter_async_context(
                        ClientSession(
                            read,
                            write,
                            message_handler=self._on_message,
                            client_info=mcp_types.Implementation(
                                name="jupyter-crush", version="0.1"
                            ),
                        )
                    )
                    await session.initialize()
                    self.tools = await _list_tools(session)
                    if stop.is_set():  # stopped or restarted while starting
                        raise RuntimeError("stopped while starting")
                    self._session = session
                    ready.set_result(None)
                    await stop.wait()
            except (Exception, asyncio.CancelledError) as error:
                if not ready.done():
                    ready.set_exception(RuntimeError(_with_stderr(_describe(error), stderr)))
                elif self._runner is asyncio.current_task() and not stop.is_set():
                    self._fail(_with_stderr(f"stopped: {_describe(error)}", stderr))
                if isinstance(error, asyncio.CancelledError):
                    raise
            finally:
                # The SDK's stdio shutdown has stopped the process by now.
                self._pids.discard(pid)
                if self._runner is asyncio.current_task():
                    self._session = None
                    self.pid = None

    def _adopt(self, pid: int | None) -> int | None:
        """Remember the stdio server's process until it is gone (see :meth:`kill`)."""
        self.pid = pid
        if pid is not None:
            self._pids.add(pid)
        return pid

    def _alive(self) -> bool:
        """Whether a running stdio server's process still runs (HTTP servers: assumed)."""
        import psutil

        if self.pid is None:
            return True
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _transport(self, stderr: Any, mark: str) -> contextlib.AbstractAsyncContextManager[Any]:
        config = self.config
        if config.type == "stdio":
            from mcp.client.stdio import StdioServerParameters, stdio_client

            params = StdioServerParameters(
                command=config.command,
                args=list(config.args),
                env={**os.environ, **config.env, _MARK: mark},
            )
            return stdio_client(params, errlog=stderr)
        if config.type == "sse":
            from mcp.client.sse import sse_client

            return sse_client(
                config.url,
                headers=dict(config.headers),
                timeout=config.start_timeout,
                sse_read_timeout=config.call_timeout,
            )
        return _streamable_http(config)

    async def _on_message(self, message: Any) -> None:
        # Transport-level garbage reaches here as an exception; requests and notifications
        # from the server are not used.
        if isinstance(message, Exception):
            self._fail(f"it sent something that is not MCP: {_garbage(message)}")

    def _fail(self, reason: str) -> None:
        """Mark the server failed, close its connection, and schedule the restart backoff."""
        self.state = ServerState.FAILED
        self.reason = reason
        self.failures += 1
        delay = 0.0 if self.failures == 1 else min(2.0 ** (self.failures - 2), _MAX_BACKOFF)
        self.retry_at = time.monotonic() + delay
        self._session = None
        if self._stop is not None:
            self._stop.set()
        # A server stuck before it is ready never reaches the stop wait: cancel its runner
        # (the SDK's stdio shutdown runs shielded, so its process is still stopped).
        if self._ready is not None and not self._ready.done() and self._runner is not None:
            self._runner.cancel()

    def stop(self) -> None:
        """Close the connection (the runner shuts a stdio server down in the background)."""
        if self._stop is not None:
            self._stop.set()
        self._session = None
        if self.usable:
            self.state = ServerState.NOT_STARTED
            self.reason = ""

    async def restart(self) -> None:
        """Stop, forget the backoff, and start again now."""
        self.stop()
        self.failures = 0
        self.retry_at = 0.0
        with contextlib.suppress(MCPServerError):
            await self.ensure_started()

    def kill(self) -> None:
        """Stop every process group this server started, now (kernel shutdown: no loop)."""
        if self._stop is not None:
            self._stop.set()
        _stop_process_groups(self._pids)
        self._pids.clear()

    def unavailable(self) -> str:
        if self.config.error:
            return f"MCP server '{self.name}' is misconfigured: {self.config.error}"
        if self.config.disabled:
            return f"MCP server '{self.name}' is disabled in {self.config.source}"
        wait = self.retry_at - time.monotonic()
        when = f"in {wait:.0f} s" if wait > 0.5 else "on next use"
        return (
            f"MCP server '{self.name}' failed: {self.reason or 'it is not running'}. "
            f"It restarts {when}, or now with %crush mcp restart {self.name}"
        )

    # -- calls ----------------------------------------------------------------------------

    async def call(self, tool: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        """Call ``tool``; a dead, silent or garbled server raises :class:`MCPServerError`."""
        from mcp.shared.exceptions import MCPError
        from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        session = await self.ensure_started()
        stop = self._stop
        assert stop is not None
        timeout = self.config.call_timeout
        request = asyncio.ensure_future(
            session.call_tool(tool, arguments, read_timeout_seconds=timeout)
        )
        # The connection closing (garbage, a restart) ends the call as well as its answer.
        closed = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({request, closed}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # A Stop: cancelling the request makes the SDK send notifications/cancelled.
            request.cancel()
            raise
        finally:
            closed.cancel()
        if not request.done():
            request.cancel()
            raise MCPServerError(self._lost(tool))
        try:
            result = request.result()
        except MCPError as error:
            if error.code == REQUEST_TIMEOUT:
                self._fail(f"no answer within {timeout:g} s")
            elif error.code == CONNECTION_CLOSED:
                self._fail("the connection closed (the server exited)")
            else:  # the server answered with an error: it is still fine
                raise MCPServerError(
                    f"MCP server '{self.name}' refused {tool}: {error.error.message}"
                ) from None
            raise MCPServerError(self._lost(tool)) from None
        except Exception as error:  # an answer the SDK could not read
            self._fail(f"an invalid answer: {_describe(error)[:300]}")
            raise MCPServerError(self._lost(tool)) from None
        self.failures = 0
        return result

    def _lost(self, tool: str) -> str:
        if self.state is not ServerState.FAILED:
            self._fail("the connection closed")
        return (
            f"MCP server '{self.name}' failed during {tool}: {self.reason}. "
            "It restarts on next use; %crush mcp shows its state"
        )


class MCPServers:
    """The kernel's MCP servers: the agent's source of ``mcp_*`` tools (loop thread only)."""

    def __init__(self, load: Callable[[], dict[str, MCPServerConfig]]) -> None:
        self._load = load
        # Name -> server, in line with the configuration after each reload(). Read and
        # written on the kernel's loop thread only (turns, %crush mcp), so no lock.
        self.servers: dict[str, MCPServer] = {}
        self.config_error = ""  # a crush.json that could not be read at all
        # The names this source put into the agent's tool map, so a refresh can replace them.
        self._offered: set[str] = set()
        # Strong references to restarts in flight: the loop keeps only weak ones.
        self._restarts: set[asyncio.Task[None]] = set()

    @classmethod
    def for_config(cls, config: CrushConfig) -> MCPServers:
        return cls(lambda: load_mcp_servers(config.crush_config or None, config.mcp_servers))

    def reload(self) -> None:
        """Bring the servers in line with the configuration: new entries added, removed or
        changed ones stopped."""
        try:
            configs = self._load()
            self.config_error = ""
        except Exception as error:  # a broken crush.json: keep what runs, say why
            self.config_error = _describe(error)
            return
        for name, server in list(self.servers.items()):
            if configs.get(name) != server.config:
                server.stop()
                del self.servers[name]
        for name, config in configs.items():
            if name not in self.servers:
                self.servers[name] = MCPServer(config)

    # -- the ToolSource protocol ----------------------------------------------------------

    async def refresh(self, tools: dict[str, Tool]) -> None:
        """Start the servers that are due, then offer every listed tool in ``tools``."""
        self.reload()
        due = [server.ensure_started() for server in self.servers.values() if server.due()]
        if due:
            await asyncio.gather(*due, return_exceptions=True)
        for name in self._offered:
            tools.pop(name, None)
        self._offered = set()
        for server in sorted(self.servers.values(), key=lambda s: s.name):
            if not server.usable:
                continue
            for listed in server.tools:
                if not server.config.offers(listed.name):
                    continue
                name = tool_name(server.name, listed.name)
                serial = 2
                while name in tools:  # two servers whose names run together
                    name = tool_name(server.name, f"{listed.name}_{serial}")
                    serial += 1
                tools[name] = mcp_tool(server, listed, name)
                self._offered.add(name)

    def unknown_tool(self, name: str) -> str | None:
        """Why a call to ``name`` cannot be served, when it names one of these servers."""
        for server in self.servers.values():
            if name.startswith(_prefix(server.name)):
                if server.state is ServerState.RUNNING:
                    prefix = _prefix(server.name)
                    offered = ", ".join(n for n in self._offered if n.startswith(prefix))
                    return (
                        f"MCP server '{server.name}' has no tool {name!r}; "
                        f"it offers: {offered or 'none'}"
                    )
                return server.unavailable()
        return None

    # -- control --------------------------------------------------------------------------

    def restart(self, server: MCPServer, loop: asyncio.AbstractEventLoop) -> asyncio.Task[None]:
        """Restart ``server`` now, in the background on ``loop``."""
        task = loop.create_task(server.restart(), name=f"mcp-restart:{server.name}")
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)
        return task

    def shutdown(self) -> None:
        """Kernel shutdown or restart: stop every server now, leaving no process behind."""
        for server in self.servers.values():
            server.kill()

    def status(self) -> str:
        """``%crush mcp``: each server, its state, and its tools."""
        self.reload()
        lines = []
        if self.config_error:
            lines.append(f"MCP configuration error: {self.config_error}")
        if not self.servers:
            lines.append(
                'No MCP servers: add them to crush.json\'s "mcp" section or to '
                "CrushConfig.mcp_servers"
            )
            return "\n".join(lines)
        configs = [s.config for s in self.servers.values()]
        lines.append(f"MCP servers (from {describe_sources(configs)}):")
        for server in sorted(self.servers.values(), key=lambda s: s.name):
            state = str(server.state)
            if server.state is ServerState.FAILED:
                state = server.unavailable().split(": ", 1)[-1]
                state = f"failed: {state}"
            elif server.state is ServerState.RUNNING and server.pid is not None:
                state += f" (pid {server.pid})"
            lines.append(f"  {server.name}  [{server.config.type}]  {state}")
            for listed in server.tools:
                if not server.config.offers(listed.name):
                    continue
                hint = " (read-only)" if _read_only(listed) else ""
                about = (listed.description or "").strip().splitlines()
                summary = f"  {about[0][:80]}" if about else ""
                lines.append(f"      {tool_name(server.name, listed.name)}{hint}{summary}")
        return "\n".join(lines)


def mcp_tool(server: MCPServer, listed: mcp_types.Tool, name: str) -> Tool:
    """``listed`` as an agent tool named ``name``; read-only tools skip the permission prompt."""

    async def run(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        try:
            result = await server.call(listed.name, arguments)
        except MCPServerError as error:
            return ToolResult(str(error), is_error=True, metadata={"mcp_server": server.name})
        return tool_result(server.name, result)

    description = listed.description or (listed.annotations and listed.annotations.title) or ""
    return Tool(
        spec=ToolSpec(
            name,
            f"{description}\n(MCP server {server.name}, tool {listed.name})".strip(),
            listed.input_schema or {"type": "object", "properties": {}},
        ),
        run=run,
        changes_state=not _read_only(listed),
    )


def tool_result(server: str, result: mcp_types.CallToolResult) -> ToolResult:
    """An MCP result as a tool result: text, images (checked and downscaled like figures),
    structured content, the error flag; a line of text for what cannot be shown."""
    from mcp import types as mcp_types

    from .images import ImageError, image_part

    texts = []
    images = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            texts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent):
            try:
                data = base64.b64decode(block.data, validate=True)
                images.append(image_part(data, block.mime_type, label=f"from MCP server {server}"))
            except (ValueError, ImageError) as error:  # binascii.Error is a ValueError
                texts.append(f"[image {block.mime_type} not shown: {error}]")
        elif isinstance(block, mcp_types.AudioContent):
            texts.append(f"[audio {block.mime_type} not shown: models here take text and images]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, mcp_types.TextResourceContents):
                texts.append(resource.text)
            else:
                texts.append(f"[resource {resource.uri} ({resource.mime_type or 'binary'})]")
        elif isinstance(block, mcp_types.ResourceLink):
            texts.append(f"[resource link {block.uri}: {block.name}]")
    metadata: dict[str, Any] = {"mcp_server": server}
    if result.structured_content is not None:
        structured = json.dumps(result.structured_content, ensure_ascii=False, default=str)
        metadata["structured_content"] = result.structured_content
        if not texts:  # the spec asks servers to repeat it as text; not all do
            texts.append(structured)
    return ToolResult("\n".join(texts), result.is_error, metadata, images)


def _read_only(listed: mcp_types.Tool) -> bool:
    return bool(listed.annotations and listed.annotations.read_only_hint)


def _import_sdk() -> None:
    import jsonschema  # noqa: F401  (the SDK compiles output schemas with it on first call)
    import mcp.client.sse
    import mcp.client.stdio
    import mcp.client.streamable_http  # noqa: F401


async def _list_tools(session: ClientSession) -> list[mcp_types.Tool]:
    from mcp import types as mcp_types

    tools: list[mcp_types.Tool] = []
    cursor = None
    while True:
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


@contextlib.asynccontextmanager
async def _streamable_http(config: MCPServerConfig) -> Any:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    timeout = httpx2.Timeout(config.start_timeout, read=config.call_timeout)
    client = create_mcp_http_client(headers=dict(config.headers), timeout=timeout)
    async with client, streamable_http_client(config.url, http_client=client) as streams:
        yield streams


def _find_child(mark: str) -> int | None:
    """The pid of the child process started with ``_MARK=mark`` in its environment."""
    import psutil

    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if child.environ().get(_MARK) == mark:
                return child.pid
    return None


def _stop_process_groups(pids: set[int]) -> None:
    """SIGTERM each server's process group (the SDK starts each in a session of its own),
    wait until the servers exit or a grace period ends, then SIGKILL the groups. Never
    reaps: the SDK's child watcher owns that, and warns about a child reaped under it."""
    import psutil

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    for pid in pids:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + _SHUTDOWN_GRACE
    left = [pid for pid in pids if alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [pid for pid in left if alive(pid)]
    for pid in pids:  # the whole group: a server's own children may outlive it
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def _with_stderr(reason: str, stderr: Any) -> str:
    """``reason`` and the last line the server wrote to stderr (a traceback's last line)."""
    with contextlib.suppress(OSError, ValueError):
        stderr.flush()
        stderr.seek(0)
        lines = [line.strip() for line in stderr.read().splitlines() if line.strip()]
        if lines:
            return f"{reason}; its stderr ended with: {lines[-1][:300]}"
    return reason


def _garbage(error: Exception) -> str:
    """What the server sent that could not be read (pydantic keeps the input)."""
    errors = getattr(error, "errors", None)
    with contextlib.suppress(Exception):
        if callable(errors) and errors():
            return repr(errors()[0]["input"])[:120]
    return _describe(error)[:200]


def _describe(error: BaseException) -> str:
    """One line for an error, looking inside the SDK's exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, OSError) and error.strerror:
        target = f" {error.filename!r}" if error.filename else ""
        return f"{error.strerror}{target}"
    text = " ".join(str(error).split())
    return text or type(error).__name__


@command("mcp", "%crush mcp [restart NAME]", "MCP servers, their state and tools; restart one")
def mcp_command(crush: Crush, args: list[str]) -> None:
    from IPython.core.error import UsageError

    servers = crush.mcp
    if not args:
        print(servers.status())
        return
    if args[0] != "restart" or len(args) != 2:
        raise UsageError("Usage: %crush mcp [restart NAME]")
    servers.reload()
    server = servers.servers.get(args[1])
    if server is None:
        names = ", ".join(sorted(servers.servers)) or "none are configured"
        raise UsageError(f"No MCP server {args[1]!r}; configured: {names}")
    if not server.usable:
        raise UsageError(server.unavailable())
    from .run_display import kernel_loop

    servers.restart(server, kernel_loop())
    print(f"Restarting MCP server {server.name}; %crush mcp shows its state")
