"""The interface every model provider implements.

A model turns a conversation (our own :class:`~jupyter_crush.core.message.Message`
objects) plus tool specs into an async stream of events. Providers translate
to and from their wire format; the agent only ever sees these events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .message import FinishReason, Message, ToolCallPart, Usage


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    text: str = ""
    signature: str = ""  # Anthropic sends the thinking signature as a delta too
    redacted: str = ""  # the opaque data of a redacted thinking block
    item_id: str = ""  # an OpenAI Responses reasoning item's id
    encrypted: str = ""  # and its encrypted content


@dataclass(frozen=True)
class ReasoningEnd:
    pass


@dataclass(frozen=True)
class ToolCallStart:
    id: str
    name: str
    signature: str = ""  # Gemini's thought signature of the call, sent back with it


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


def apply_event(message: Message, event: StreamEvent) -> bool:
    """Apply one streamed event to the assistant ``message`` being built.

    Returns True at a terminal point of the stream (a tool call complete, the finish),
    where the message should be written at once rather than coalesced.
    """
    if isinstance(event, TextDelta):
        message.append_text(event.text)
    elif isinstance(event, ReasoningDelta):
        message.append_reasoning(
            event.text,
            event.signature,
            event.redacted,
            item_id=event.item_id,
            encrypted=event.encrypted,
        )
    elif isinstance(event, ReasoningEnd):
        message.finish_reasoning()
    elif isinstance(event, ToolCallStart):
        message.parts.append(ToolCallPart(event.id, event.name, signature=event.signature))
    elif isinstance(event, ToolCallDelta):
        _streamed_call(message, event.id).input += event.input_delta
    elif isinstance(event, ToolCallEnd):
        _streamed_call(message, event.id).finished = True
        return True
    elif isinstance(event, StreamFinish):
        for call in message.tool_calls:
            call.finished = True
        message.usage = event.usage
        message.cost = event.cost
        message.add_finish(event.reason)
        return True
    return False


def _streamed_call(message: Message, call_id: str) -> ToolCallPart:
    call = message.tool_call(call_id)
    if call is None:
        raise ModelError(f"the model streamed a delta for an unknown tool call {call_id!r}")
    return call


@runtime_checkable
class Model(Protocol):
    """A streaming chat model.

    ``stream`` yields events for one step (one provider request). It must end
    with exactly one :class:`StreamFinish` unless it raises. Cancellation
    arrives as ``asyncio.CancelledError`` at an ``await``; implementations
    close their HTTP stream when that happens (``async with`` does).

    A model may also have ``tools``, a sequence of :class:`~jupyter_crush.core.tools.Tool`
    offered beside the agent's own (a replay's recorded tools answer its recorded calls).
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


class closing_stream:
    """``async with closing_stream(model.stream(...))``: closes the stream (and the provider's
    HTTP response with it) on every exit, like :func:`contextlib.aclosing`, except when the
    coroutine itself is being closed.

    That (``GeneratorExit``) happens to a turn stranded on an event loop that was closed: the
    garbage collector closes its coroutine mid-stream. The stream is then suspended inside
    its own step, so ``aclose()`` fails ("already running"), and nothing may be awaited while
    closing: an error there would end the turn a second time, as an error, and Python would
    report the coroutine as having ignored ``GeneratorExit``. The stream is finalized by the
    garbage collector on its own.
    """

    def __init__(self, stream: AsyncIterator[StreamEvent]) -> None:
        self.stream = stream

    async def __aenter__(self) -> AsyncIterator[StreamEvent]:
        return self.stream

    async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not GeneratorExit:
            await self.stream.aclose()  # type: ignore[attr-defined]
