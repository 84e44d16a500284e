"""One MCP server: its connection, lifecycle and calls, on the kernel's event loop.

Every server runs in one task of its own that holds the SDK's transport and session open
(the SDK's cancel scopes must be entered and left by one task); tool calls are requests on
that session from the turn's task. A call ends with :class:`MCPServerError`, and the server
is marked failed and stopped, when the server exits, does not answer within its timeout, or
writes something that is not MCP; its next use restarts it, at once after the first failure
and then after 1, 2, 4 … 30 seconds. A Stop cancels the turn's task: the SDK sends
``notifications/cancelled`` for the request and the call ends there. Kernel shutdown stops
every stdio server's process group.

The SDK is imported on first use, so ``%load_ext`` does not pay for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .config import MCPServerConfig

if TYPE_CHECKING:
    from mcp import ClientSession
    from mcp import types as mcp_types

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
            self._fail(f"could not start: {describe_error(error)}")
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
                    ready.set_exception(RuntimeError(_with_stderr(describe_error(error), stderr)))
                elif self._runner is asyncio.current_task() and not stop.is_set():
                    self._fail(_with_stderr(f"stopped: {describe_error(error)}", stderr))
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
                env={
                    **{k: v for k, v in os.environ.items() if k not in config.withheld_env},
                    **config.env,
                    _MARK: mark,
                },
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

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any],
        stop_if_covered: Callable[[], None] = lambda: None,
    ) -> mcp_types.CallToolResult:
        """Call ``tool``; a dead, silent or garbled server raises :class:`MCPServerError`.
        ``stop_if_covered`` (the turn's stop check) runs once the server is up, right before
        the call is sent: a Stop during a start or restart sends nothing."""
        from mcp.shared.exceptions import MCPError
        from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        session = await self.ensure_started()
        stop_if_covered()
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
            self._fail(f"an invalid answer: {describe_error(error)[:300]}")
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
    return describe_error(error)[:200]


def describe_error(error: BaseException) -> str:
    """One line for an error, looking inside the SDK's exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, OSError) and error.strerror:
        target = f" {error.filename!r}" if error.filename else ""
        return f"{error.strerror}{target}"
    text = " ".join(str(error).split())
    return text or type(error).__name__
