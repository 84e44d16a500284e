"""The interface every model provider implements.

A model turns a conversation (our own :class:`~jupyter_crush.message.Message`
objects) plus tool specs into an async stream of events. Providers translate
to and from their wire format; the agent only ever sees these events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .message import FinishReason, Message, Usage


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    text: str = ""
    signature: str = ""  # Anthropic sends the thinking signature as a delta too


@dataclass(frozen=True)
class ReasoningEnd:
    pass


@dataclass(frozen=True)
class ToolCallStart:
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallDelta:
    id: str
    input_delta: str


@dataclass(frozen=True)
class ToolCallEnd:
    id: str


@dataclass(frozen=True)
class StreamFinish:
    reason: FinishReason
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None  # None when the price of the model is unknown


StreamEvent = (
    TextDelta
    | ReasoningDelta
    | ReasoningEnd
    | ToolCallStart
    | ToolCallDelta
    | ToolCallEnd
    | StreamFinish
)


@dataclass(frozen=True)
class ToolSpec:
    """What the model is told about a tool."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object


class ModelError(Exception):
    """A provider failed. ``status_code`` is the HTTP status when there was one."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        provider: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after
        self.provider = provider

    def __str__(self) -> str:
        where = f"{self.provider} " if self.provider else ""
        status = f"HTTP {self.status_code}: " if self.status_code else ""
        return f"{where}{status}{self.message}".strip()


@runtime_checkable
class Model(Protocol):
    """A streaming chat model.

    ``stream`` yields events for one step (one provider request). It must end
    with exactly one :class:`StreamFinish` unless it raises. Cancellation
    arrives as ``asyncio.CancelledError`` at an ``await``; implementations
    close their HTTP stream when that happens (``async with`` does).
    """

    provider: str
    name: str

    def stream(
        self,
        messages: Sequence[Message],
        *,
        system: str | None = None,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[StreamEvent]: ...
