"""Session titles: a short one from a small model, made beside the first answer.

A new session is named after its first prompt's first line. Once the first token of that
prompt's answer arrives, a background request asks a model (``CrushConfig.title_model``,
else crush.json's ``models.small``, else the session's own model) for a title of at most
:data:`MAX_TITLE_CHARS` characters. It never holds up the answer: it starts only after the
answer's first token (so its own work, building the request and reading its stream, never
lands on the loop before that token), runs as a task of its own beside the turn, and the
answer's stream does not wait for it. A cancel of the session cancels it; a failure, or an
answer that ends before its first token, leaves the prompt's title. A title the user set
(``-s NAME``, ``%crush rename``) is never replaced.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..core.message import Message, Role, TextPart
from ..core.model import Model, StreamFinish, TextDelta, closing_stream
from ..store.transcript import TranscriptStore
from .dispatch import call_on_loop

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

#: Checks a request (session id, model, messages) before it is sent: raises to send nothing.
BudgetCheck = Callable[[str, Model, list[Message]], None]

MAX_TITLE_CHARS = 50
#: Longest prompt-derived title, before the model's arrives.
MAX_PROMPT_TITLE_CHARS = 60
#: Characters of the prompt the title request quotes.
PROMPT_EXCERPT_CHARS = 2000

#: Quotes a model may put around its title: ASCII, and typographic single and double ones.
_QUOTES = "\"' \u201c\u201d\u2018\u2019"
#: Reasoning some local models (through OpenAI-compatible servers) write into the answer
#: itself: a <think> block, or only its end when the server dropped the opening tag.
_THINKING = re.compile(r"<think>.*?</think>|^.*?</think>", re.DOTALL)

TITLE_REQUEST = """\
Write a short title, at most {limit} characters, for a conversation that starts with the \
message below. Use the message's language. Answer with the title only: no quotes, no \
Markdown, no final period.

<message>
{prompt}
</message>"""


def prompt_title(prompt: str) -> str:
    """A session's title until a better one arrives: the prompt's first non-empty line."""
    first = next((line.strip() for line in prompt.splitlines() if line.strip()), "")
    limit = MAX_PROMPT_TITLE_CHARS
    return first if len(first) <= limit else first[: limit - 1] + "…"


def clean_title(text: str) -> str:
    """The model's answer as a title: one line, no reasoning, quotes or Markdown, at most
    50 chars."""
    text = _THINKING.sub("", text)
    line = next((line for line in text.splitlines() if line.strip()), "")
    line = line.strip().strip("#*`_ ").strip(_QUOTES).rstrip(".").strip()
    if len(line) > MAX_TITLE_CHARS:
        cut = line[: MAX_TITLE_CHARS - 1]
        line = (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(" ,;:-") + "…"
    return line


class Titler:
    """Title requests in flight, one per session at most."""

    def __init__(self, store: TranscriptStore, check: BudgetCheck | None = None) -> None:
        self.store = store
        #: Called with each title request before it is sent; raises to send nothing (a
        #: spending cap): the prompt's title stays.
        self.check: BudgetCheck = check or _no_check
        #: Called on the loop thread with (session id, title) once a title is stored.
        self.listeners: list[Callable[[str, str], None]] = []
        # Guards _tasks: start (loop thread) and cancel (any thread) must agree on which
        # task is a session's, so a cancel never misses one that just started.
        self._lock = threading.Lock()
        self._tasks: dict[str, asyncio.Task[None]] = {}  # session id -> its title request

    def after_prompt(
        self, session_id: str, prompt: str, history: list[Message], model: Model | None
    ) -> TitleOnFirstToken | None:
        """If ``prompt`` is the session's first and the session still has the title made from
        it, the turn observer that starts its title request with ``model`` on the answer's
        first token (loop thread). None: no title to make (``model`` None: titles are off)."""
        if model is None:
            return None
        if sum(1 for m in history if m.role is Role.USER) != 1:
            return None
        try:
            title = self.store.get_session(session_id).title
        except Exception:  # the turn's own records report a failing store
            return None
        if title != prompt_title(prompt):
            return None
        return TitleOnFirstToken(lambda: self.start(session_id, prompt, model))

    def start(self, session_id: str, prompt: str, model: Model) -> None:
        """Ask ``model`` for a title of ``session_id`` in the background (loop thread)."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._title(session_id, prompt, model), name="crush-title")
        with self._lock:
            self._tasks[session_id] = task
        task.add_done_callback(lambda done: self._forget(session_id, done))

    def cancel(self, session_id: str) -> None:
        """Stop the title request of ``session_id``, if one runs. Safe from any thread."""
        with self._lock:
            task = self._tasks.get(session_id)
        if task is not None:
            call_on_loop(task.get_loop(), task.cancel)

    def cancel_all(self) -> None:
        with self._lock:
            sessions = list(self._tasks)
        for session_id in sessions:
            self.cancel(session_id)

    def running(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._tasks

    def _forget(self, session_id: str, task: asyncio.Task[None]) -> None:
        with self._lock:
            if self._tasks.get(session_id) is task:
                del self._tasks[session_id]

    async def _title(self, session_id: str, prompt: str, model: Model) -> None:
        before = prompt_title(prompt)
        try:
            title = clean_title(await _ask(session_id, prompt, model, self.check))
        except asyncio.CancelledError:
            return  # canceled with the session: the prompt's title stays
        except Exception:  # any failure leaves the prompt's title; nothing to tell the user
            log.debug("title request for session %s failed", session_id, exc_info=True)
            return
        if not title:
            return
        try:
            if self.store.get_session(session_id).title != before:
                return  # the user named it meanwhile
            self.store.rename_session(session_id, title)
        except Exception:
            log.debug("storing the title of session %s failed", session_id, exc_info=True)
            return
        for listener in self.listeners:
            try:
                listener(session_id, title)
            except Exception:
                log.exception("title listener failed")


class TitleOnFirstToken:
    """A turn observer that starts a title request when the answer's first token arrives."""

    def __init__(self, start: Callable[[], None]) -> None:
        from ..core.events import Delta  # the agent imports this module

        self._token = Delta
        self._start: Callable[[], None] | None = start

    def on_event(self, event: object) -> None:
        if self._start is not None and isinstance(event, self._token):
            start, self._start = self._start, None
            start()


async def _ask(session_id: str, prompt: str, model: Model, check: BudgetCheck) -> str:
    question = TITLE_REQUEST.format(limit=MAX_TITLE_CHARS, prompt=prompt[:PROMPT_EXCERPT_CHARS])
    chunks: list[str] = []
    finished = False
    request = [Message(session_id, Role.USER, [TextPart(question)])]
    check(session_id, model, request)
    stream = model.stream(request)
    async with closing_stream(stream):
        async for event in stream:
            if isinstance(event, TextDelta):
                chunks.append(event.text)
            elif isinstance(event, StreamFinish):
                finished = True
    if not finished:
        raise RuntimeError("the title stream ended without a finish")
    return "".join(chunks)


def _no_check(session_id: str, model: Model, messages: list[Message]) -> None:
    """No spending cap: every title request may be sent."""


def title_model_for(configured: Model | None, session_model: Model) -> Model | None:
    """The model that titles a session: the configured one, else the session's own when it
    is a provider's (a replay plays recorded answers, a scripted one its script)."""
    if configured is not None:
        return configured
    if session_model.provider == "replay" or getattr(session_model, "settings", None) is None:
        return None
    return session_model
