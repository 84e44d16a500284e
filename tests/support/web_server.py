"""A small HTTP server on 127.0.0.1 with fixed pages, for the ``fetch`` tool's tests.

Each route is a path with its status, headers and body; a route may instead hold its answer
until the server closes (a server that never answers). Every request is recorded with its
path and headers, so a test can tell that nothing was sent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Page:
    body: bytes = b""
    content_type: str = "text/plain"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False  # never answer: the handler waits until the server closes


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


class WebServer:
    def __init__(self, pages: dict[str, Page]) -> None:
        self.pages = pages
        self.requests: list[Seen] = []
        self.released = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(Seen(self.path, dict(self.headers)))
                page = server.pages.get(self.path, Page(b"not found", status=404))
                if page.hold:
                    server.released.wait(30)
                    return
                self.send_response(page.status)
                self.send_header("Content-Type", page.content_type)
                self.send_header("Content-Length", str(len(page.body)))
                for name, value in page.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(page.body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@contextmanager
def web_serving(pages: dict[str, Page]) -> Iterator[WebServer]:
    """``with web_serving({"/a": Page(b"text")}) as server:`` then GET ``server.url + "/a"``."""
    server = WebServer(pages)
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.released.set()
        server.httpd.shutdown()
        server.httpd.server_close()
        thread.join(10)
