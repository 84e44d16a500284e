"""A scripted HTTP/1.1 server on 127.0.0.1 for provider tests.

It answers requests in order from a script of :class:`Step` s: a recorded
go-vcr response, an HTTP error, or a fault (connection reset, stall, early
close) after some number of server-sent events. It records every request and
whether the client hung up before the response was complete, so tests can
count retries and observe a cancel reaching the network.

It runs on the test's own event loop (``async with ReplayServer(...)``) and
answers with chunked transfer encoding, one chunk per event, so a cut is
visible to the client as an incomplete body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

from jupyter_crush.providers.replay import load_recording, split_events

#: reset: TCP RST mid-body; close: clean FIN mid-body; stall: stop sending mid-body;
#: stall_head: never send the status line.
Fault = Literal["reset", "stall", "close", "stall_head"]


@dataclass
class Step:
    """One response. ``fault`` strikes after ``fault_after`` events have been sent."""

    body: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "text/event-stream"})
    event_delay: float = 0.0
    fault: Fault | None = None
    fault_after: int = 0


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    completed: bool = False  # the whole response was written
    client_closed: bool = False  # the client hung up before that
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)

    def json(self) -> Any:
        return json.loads(self.body or b"null")


def recording_steps(path: Path, **overrides: Any) -> list[Step]:
    """One step per recorded interaction, in recorded order."""
    return [
        Step(body=i.body, status=i.status, headers=dict(i.headers), **overrides)
        for i in load_recording(path).interactions
    ]


def error_step(status: int, message: str, **headers: str) -> Step:
    """A JSON error body in the shape both OpenAI and Anthropic use."""
    body = json.dumps({"type": "error", "error": {"type": "api_error", "message": message}})
    return Step(body=body, status=status, headers={"content-type": "application/json", **headers})


class ReplayServer:
    """``async with ReplayServer(steps) as server:`` then point a client at ``server.url``."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = list(steps)
        self.requests: list[SeenRequest] = []
        self.disconnected = asyncio.Event()  # set when a client hangs up mid-response
        self._server: asyncio.Server | None = None
        # Handler tasks, so close() can end stalls and never leave one running.
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ReplayServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only close() cancels a handler; ending quietly keeps asyncio's
            # connection callback from logging the cancellation as an error.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        seen = SeenRequest(method, path, headers, body)
        self.requests.append(seen)
        index = len(self.requests) - 1
        if index >= len(self.steps):
            step = error_step(500, f"replay script exhausted at request {index + 1}")
        else:
            step = self.steps[index]

        watcher = asyncio.create_task(self._watch_hangup(reader, seen))
        try:
            await self._respond(writer, step, seen)
        finally:
            watcher.cancel()

    async def _watch_hangup(self, reader: asyncio.StreamReader, seen: SeenRequest) -> None:
        # After the request the client sends nothing more: EOF means it hung up.
        with contextlib.suppress(ConnectionError):
            await reader.read(1)
        if not seen.completed:
            seen.client_closed = True
            seen.hung_up.set()
            self.disconnected.set()

    async def _respond(self, writer: asyncio.StreamWriter, step: Step, seen: SeenRequest) -> None:
        if step.fault == "stall_head":
            await self._strike(writer, "stall", seen)
            return
        head = [f"HTTP/1.1 {step.status} {HTTPStatus(step.status).phrase}", "connection: close"]
        head += [f"{k}: {v}" for k, v in step.headers.items() if k != "content-length"]
        head.append("transfer-encoding: chunked")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()
        chunks = split_events(step.body)
        for i, chunk in enumerate(chunks):
            if step.fault is not None and i == step.fault_after:
                await self._strike(writer, step.fault, seen)
                return
            if step.event_delay and i:
                await asyncio.sleep(step.event_delay)
            if seen.client_closed:
                return
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
        if step.fault is not None:
            await self._strike(writer, step.fault, seen)
            return
        seen.completed = True
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _strike(self, writer: asyncio.StreamWriter, fault: Fault, seen: SeenRequest) -> None:
        if fault == "stall":
            # Send nothing more until the client gives up (or the test ends).
            closing = asyncio.ensure_future(self._closing.wait())
            hangup = asyncio.ensure_future(seen.hung_up.wait())
            await asyncio.wait({closing, hangup}, return_when=asyncio.FIRST_COMPLETED)
            closing.cancel()
            hangup.cancel()
            return
        if fault == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER 0: close() sends RST, a real "connection reset by peer".
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        writer.close()  # "close": a clean FIN in the middle of the chunked body


@contextlib.contextmanager
def serving(steps: list[Step]) -> Iterator[ReplayServer]:
    """A ReplayServer on a loop of its own thread, for clients in other processes (kernels)."""
    loop = asyncio.new_event_loop()
    server = ReplayServer(steps)
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.__aenter__())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
