"""Fake local model servers on free ports of 127.0.0.1, in a thread of their own (so a
synchronous cell can talk to them): Ollama's ``/api/tags`` and ``/api/show``, the
OpenAI-compatible ``/v1/models`` and ``/v1/chat/completions``, LM Studio's ``/api/v0/models``
and llama.cpp's ``/props``, in the shapes those servers document. A chat request is answered
with a recorded event stream. ``silent_port()`` accepts connections and never answers;
``closed_port()`` is a port nothing listens on."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeServer:
    """``routes``: path -> JSON answer, or a function of the request's JSON body; the
    ``/v1/chat/completions`` route answers with ``chat_stream`` as an event stream."""

    routes: dict[str, Any]
    chat_stream: str = ""
    requests: list[tuple[str, str, Any]] = field(default_factory=list)  # method, path, body
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def ollama_routes(models: dict[str, list[str]]) -> dict[str, Any]:
    """Ollama with ``models`` (name -> the capabilities its /api/show reports)."""
    return {
        "/api/tags": {"models": [{"name": name, "model": name} for name in models]},
        "/api/show": lambda body: {"capabilities": models[body["model"]]},
        "/v1/models": {"object": "list", "data": [{"id": n, "object": "model"} for n in models]},
    }


def openai_models(*names: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": name, "object": "model"} for name in names]}


@contextmanager
def serving(server: FakeServer) -> Iterator[FakeServer]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            server.requests.append((self.command, self.path, body))
            if self.path == "/v1/chat/completions" and server.chat_stream:
                self._send(200, "text/event-stream", server.chat_stream.encode())
                return
            route = server.routes.get(self.path)
            if route is None:
                self._send(404, "application/json", b'{"error": "not found"}')
                return
            answer = route(body) if callable(route) else route
            self._send(200, "application/json", json.dumps(answer).encode())

        def _send(self, status: int, kind: str, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def closed_port() -> int:
    """A port that was free a moment ago: nothing listens on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]
