"""A run's call and result types: the accept reservation, a prompt's attachments, the call
that runs a prompt, and what the run returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.events import RunObserver
from ..core.message import FinishReason, ImagePart, Usage
from ..core.model import Model
from ..core.tools import Tool


class Releases(Protocol):
    """What an :class:`AcceptedRun` is taken from: the agent's dispatcher."""

    def release(self, accepted: AcceptedRun) -> None: ...


class AcceptedRun:
    """One accept reservation taken by :meth:`SessionAgent.begin_accepted`.

    ``close`` releases it; it is idempotent, and ``AcceptedRun.close(None)`` is a no-op so
    callers holding an optional reservation need no check.
    """

    __slots__ = ("_closed", "_dispatcher", "seq", "session_id")

    def __init__(self, dispatcher: Releases, session_id: str, seq: int) -> None:
        self._dispatcher = dispatcher
        self.session_id = session_id
        self.seq = seq
        self._closed = False  # guarded by the session's lock

    def close(self) -> None:
        if self is None:
            return
        self._dispatcher.release(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<AcceptedRun session={self.session_id!r} seq={self.seq} {state}>"


@dataclass(frozen=True)
class Attachment:
    """Text attached to a prompt (a file, a DataFrame summary, a cell's source), or an
    image (a figure named in the prompt)."""

    name: str
    content: str = ""
    image: ImagePart | None = None


@dataclass
class SessionAgentCall:
    session_id: str
    prompt: str
    attachments: Sequence[Attachment] = ()
    accepted: AcceptedRun | None = None
    observer: RunObserver | None = None
    model: Model | None = None  # overrides the agent's model for this prompt
    tools: Sequence[Tool] = ()  # override the agent's tools of the same names, for this prompt
    metadata: dict[str, Any] = field(default_factory=dict)  # kept on the prompt's message
    compact: bool = False  # summarize the session (``prompt`` is not recorded) and stop
    #: A sub-agent's turn: its own system prompt, and ``tools`` only (neither the agent's
    #: tools nor its tool sources).
    system_prompt: str | None = None
    only_tools: bool = False


@dataclass
class RunResult:
    session_id: str
    reason: FinishReason
    message: str = ""
    text: str = ""  # the turn's answer: the text of its assistant messages
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None
