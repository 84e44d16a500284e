"""Shaping tool output for a model: bounded size, no secrets.

Every tool result goes to the provider and into the transcript store, so two
rules hold for all of them: a result is never unbounded (a model context and a
TinyDB document both suffer), and every secret the extension knows (secret-looking
environment variables, configured API keys and headers) is replaced before the text
leaves the tool.
"""

from __future__ import annotations

import os
import re
import threading
from collections import deque

from .secrets import MIN_SECRET_LEN, known

#: Default cap on one tool result, in characters (about 10k tokens).
MAX_OUTPUT_CHARS = 40_000

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)
REDACTED = "[redacted]"


def truncate(text: str, limit: int = MAX_OUTPUT_CHARS, *, what: str = "output") -> str:
    """Keep the head and tail of ``text`` within ``limit`` characters, saying what was cut."""
    if len(text) <= limit:
        return text
    head = limit * 3 // 4
    tail = limit - head
    dropped = len(text) - head - tail
    return (
        f"{text[:head]}\n... [{what} truncated: {dropped} characters omitted] ...\n"
        f"{text[len(text) - tail :]}"
    )


class CappedBuffer:
    """A text sink that keeps the first and last characters written, in bounded memory.

    Written to from the thread that runs user code while the event loop reads
    it afterwards; the lock keeps ``head``/``tail``/``dropped`` consistent with
    each other across those threads.
    """

    def __init__(self, limit: int = MAX_OUTPUT_CHARS) -> None:
        self._head_limit = limit * 3 // 4
        self._tail_limit = limit - self._head_limit
        self._lock = threading.Lock()  # guards _head, _tail, _tail_len, _dropped together
        self._head: list[str] = []
        self._head_len = 0
        self._tail: deque[str] = deque()
        self._tail_len = 0
        self._dropped = 0

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        written = len(text)
        with self._lock:
            room = self._head_limit - self._head_len
            if room > 0:
                self._head.append(text[:room])
                self._head_len += min(room, len(text))
                text = text[room:]
            if text:
                self._tail.append(text)
                self._tail_len += len(text)
                while self._tail_len - len(self._tail[0]) >= self._tail_limit:
                    self._tail_len -= len(self._tail[0])
                    self._dropped += len(self._tail.popleft())
        return written

    def getvalue(self) -> str:
        with self._lock:
            head = "".join(self._head)
            tail = "".join(self._tail)
            dropped = self._dropped
        extra = len(tail) - self._tail_limit
        if extra > 0:
            tail = tail[extra:]
            dropped += extra
        if dropped:
            return f"{head}\n... [output truncated: {dropped} characters omitted] ...\n{tail}"
        return head + tail


def format_size(n: int) -> str:
    """A size in bytes as people read it: ``512 B``, ``1.5 KB``, ``3.2 GB``."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def secret_values(environ: dict[str, str] | os._Environ[str] | None = None) -> list[str]:
    """Every secret to redact, longest first: values of environment variables whose names
    look like credentials, and the keys, headers and URL credentials the extension was
    configured with (:mod:`jupyter_crush.core.secrets`)."""
    env = os.environ if environ is None else environ
    values = {
        value
        for name, value in env.items()
        if _SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LEN
    }
    return sorted(values | known(), key=len, reverse=True)


def redact(text: str, environ: dict[str, str] | os._Environ[str] | None = None) -> str:
    """Replace every known secret (see :func:`secret_values`) in ``text``."""
    for value in secret_values(environ):
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def scrubbed_environ(environ: dict[str, str] | os._Environ[str] | None = None) -> dict[str, str]:
    """A copy of the environment without credential-like variables, for subprocesses."""
    env = os.environ if environ is None else environ
    return {name: value for name, value in env.items() if not _SECRET_NAME.search(name)}


def clean(text: str, limit: int = MAX_OUTPUT_CHARS, *, what: str = "output") -> str:
    """Redact, then truncate: the last step before text becomes a tool result."""
    return truncate(redact(text), limit, what=what)
