"""What a run tells its observers (the run views, the kernel's tracker): the run events, the
compaction events, and the observer protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .message import FinishReason, Message, ToolCallPart, ToolResultPart, Usage
from .tokens import Meter
from .tools import PermissionRequest


@dataclass(frozen=True)
class Queued:
    position: int


@dataclass(frozen=True)
class Folded:
    """A queued prompt joined the session's running turn; that turn's events follow."""


@dataclass(frozen=True)
class Started:
    user_message_id: str


@dataclass(frozen=True)
class Delta:
    message: Message


@dataclass(frozen=True)
class ToolStarted:
    call: ToolCallPart


@dataclass(frozen=True)
class ToolFinished:
    call: ToolCallPart
    result: ToolResultPart


@dataclass(frozen=True)
class PermissionAsked:
    request: PermissionRequest


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    message: str = ""
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None


@dataclass(frozen=True)
class Spending:
    """Before a model request: what the session and all sessions today have spent, in
    dollars, against their caps (0: no cap); ``note`` says once that a model's price is
    unknown, so no cap holds its requests."""

    session_spent: float
    session_cap: float
    day_spent: float
    day_cap: float
    note: str = ""


@dataclass(frozen=True)
class ContextUsed:
    """The tokens the next request holds, of the model's window."""

    meter: Meter


@dataclass(frozen=True)
class Summarizing:
    """The model is summarizing the session before the request."""


@dataclass(frozen=True)
class Compacted:
    """The request was made to fit: by ``summary`` (stored), or by leaving turns out (``note``)."""

    summary: Message | None
    note: str


CompactionEvent = ContextUsed | Summarizing | Compacted


@dataclass(frozen=True)
class ChildEvent:
    """An event of a sub-agent's turn, run by the tool call ``call_id`` of this turn in the
    session ``session_id`` of its own, on the ``task`` the model handed it."""

    call_id: str
    session_id: str
    task: str
    event: RunEvent


RunEvent = (
    Queued
    | Folded
    | Started
    | Delta
    | ToolStarted
    | ToolFinished
    | PermissionAsked
    | Finished
    | Spending
    | CompactionEvent
    | ChildEvent
)


class RunObserver(Protocol):
    def on_event(self, event: RunEvent) -> None: ...
