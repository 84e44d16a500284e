"""OpenAI's Responses API (``client.responses.create(stream=True)``) on the official SDK.

Used for OpenAI's own models (see :mod:`jupyter_crush.providers.apis` for the choice). What it
gives over chat completions: the reasoning summary, streamed into the run view's reasoning
section, and the reasoning itself carried between the steps of a turn. Requests are sent with
``store=False`` and ``include=["reasoning.encrypted_content"]``: OpenAI keeps nothing, and each
reasoning item comes back encrypted at the end of its output item; the transcript keeps it in
the step's :class:`~jupyter_crush.core.message.ReasoningPart` (``item_id``, ``encrypted``) and
the turn's next step sends it back before the calls it led to, so the model goes on from its
own reasoning instead of starting over. Items of earlier turns are not sent: the API drops
them anyway.

Opening the stream, its retries, timeouts, errors and cancel are :class:`SDKModel`'s, as for
chat completions; this module is only the wire format.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai

from ..core.message import (
    FinishReason,
    ImagePart,
    Message,
    Part,
    ReasoningPart,
    Role,
    TextPart,
    ToolCallPart,
    Usage,
)
from ..core.model import (
    ReasoningDelta,
    ReasoningEnd,
    StreamEvent,
    StreamFinish,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolSpec,
)
from ..core.undecodable import encodable
from .apis import is_reasoning_model
from .history import conversation, result_images, tool_arguments
from .openai import _STREAM_ERRORS, OpenAIModel
from .vision import wire_image

#: Why a response stopped short (``response.incomplete``), as our finish reasons.
_INCOMPLETE = {
    "max_output_tokens": FinishReason.MAX_TOKENS,
    "content_filter": FinishReason.CONTENT_FILTER,
}


def build_input(messages: Sequence[Message], *, images: bool = True) -> list[dict[str, Any]]:
    """The Responses ``input`` items for a transcript (the system prompt goes as
    ``instructions``). Each assistant message's parts keep their order: a reasoning item of
    this turn, then the text and function calls that followed it."""
    sendable = conversation(messages)
    prompts = [i for i, m in enumerate(sendable) if m.role is Role.USER]
    turn_start = prompts[-1] if prompts else 0
    items: list[dict[str, Any]] = []
    for index, message in enumerate(sendable):
        if message.role is Role.USER:
            items.append({"role": "user", "content": _user_content(message.parts, images)})
        elif message.role is Role.TOOL:
            for result in message.tool_results:
                items.append(
                    {
                        "type": "function_call_output",
                        "call_id": result.tool_call_id,
                        "output": result.content,
                    }
                )
            shown = result_images(message)
            if shown:
                items.append({"role": "user", "content": _user_content(shown, images)})
        else:
            items.extend(_assistant_items(message, this_turn=index > turn_start))
    return items


def _assistant_items(message: Message, *, this_turn: bool) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, ReasoningPart):
            # Only a complete item can go back (a step cut mid-reasoning has no encrypted
            # content), and only within its turn.
            if this_turn and part.item_id and part.encrypted:
                summary = [{"type": "summary_text", "text": part.text}] if part.text else []
                items.append(
                    {
                        "type": "reasoning",
                        "id": part.item_id,
                        "summary": summary,
                        "encrypted_content": part.encrypted,
                    }
                )
        elif isinstance(part, TextPart):
            if part.text.strip():
                items.append({"role": "assistant", "content": part.text})
        elif isinstance(part, ToolCallPart):
            items.append(
                {
                    "type": "function_call",
                    "call_id": part.id,
                    "name": part.name,
                    "arguments": json.dumps(tool_arguments(part)),
                }
            )
    return items


def _user_content(parts: Sequence[Part], images: bool) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, TextPart):
            content.append({"type": "input_text", "text": part.text})
        elif isinstance(part, ImagePart):
            wire = wire_image(part, images)
            if isinstance(wire, str):
                content.append({"type": "input_text", "text": "\n" + wire})
            else:
                url = f"data:{wire.media_type};base64,{wire.base64}"
                content.append({"type": "input_image", "image_url": url, "detail": "auto"})
    return content


def build_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
            "strict": False,
        }
        for tool in tools
    ]


@dataclass
class _ResponsesState:
    """Turns Responses stream events into our events; one per request."""

    calls: dict[str, str] = field(default_factory=dict)  # output item id -> call_id
    streamed_arguments: set[str] = field(default_factory=set)  # call_ids with deltas
    ended: list[str] = field(default_factory=list)  # call_ids, in order
    reasoning_open: bool = False
    summary_index: int = 0
    refused: bool = False
    finish: FinishReason | None = None
    usage: Usage = field(default_factory=Usage)

    def feed(self, event: Any) -> list[StreamEvent]:
        kind = event.type
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            return self._reasoning(event)
        if kind in ("response.output_text.delta", "response.refusal.delta"):
            self.refused = self.refused or kind == "response.refusal.delta"
            return [*self._end_reasoning(), TextDelta(event.delta)] if event.delta else []
        if kind == "response.output_item.added":
            return self._item_added(event.item)
        if kind == "response.function_call_arguments.delta":
            call_id = self.calls.get(event.item_id)
            if call_id is None or not event.delta:
                return []
            self.streamed_arguments.add(call_id)
            return [ToolCallDelta(call_id, event.delta)]
        if kind == "response.output_item.done":
            return self._item_done(event.item)
        if kind in ("response.completed", "response.incomplete"):
            return self._finished(event.response)
        if kind in ("response.failed", "error"):
            raise _Failed(event)
        return []

    def _reasoning(self, event: Any) -> list[StreamEvent]:
        # Summary parts of one item are paragraphs of one reasoning section.
        index = getattr(event, "summary_index", 0) or 0
        gap = "\n\n" if index != self.summary_index and self.reasoning_open else ""
        self.summary_index = index
        self.reasoning_open = True
        return [ReasoningDelta(gap + event.delta)] if event.delta else []

    def _item_added(self, item: Any) -> list[StreamEvent]:
        if item.type == "function_call":
            self.calls[item.id or item.call_id] = item.call_id
            return [*self._end_reasoning(), ToolCallStart(item.call_id, item.name)]
        if item.type == "reasoning":
            events = self._end_reasoning()  # a new item is a new reasoning section
            self.summary_index = 0
            return events
        return []

    def _item_done(self, item: Any) -> list[StreamEvent]:
        if item.type == "reasoning":
            # The item is kept only when it can be sent back: with its encrypted content.
            encrypted = getattr(item, "encrypted_content", None) or ""
            events: list[StreamEvent] = []
            if encrypted:
                self.reasoning_open = True
                events.append(ReasoningDelta(item_id=item.id, encrypted=encrypted))
            return [*events, *self._end_reasoning()]
        if item.type == "function_call" and item.call_id not in self.ended:
            whole = item.call_id not in self.streamed_arguments and item.arguments
            self.ended.append(item.call_id)
            arguments = [ToolCallDelta(item.call_id, item.arguments)] if whole else []
            return [*arguments, ToolCallEnd(item.call_id)]
        return []

    def _finished(self, response: Any) -> list[StreamEvent]:
        if response.usage is not None:
            self.usage = _responses_usage(response.usage)
        details = response.incomplete_details
        if response.status == "incomplete" and details is not None:
            self.finish = _INCOMPLETE.get(details.reason or "", FinishReason.UNKNOWN)
        elif self.calls:
            self.finish = FinishReason.TOOL_USE
        elif self.refused:
            self.finish = FinishReason.CONTENT_FILTER
        else:
            self.finish = FinishReason.END_TURN
        return self.close()

    def _end_reasoning(self) -> list[StreamEvent]:
        if not self.reasoning_open:
            return []
        self.reasoning_open = False
        return [ReasoningEnd()]

    def close(self) -> list[StreamEvent]:
        """Every call started and not ended is ended (a response that stopped short)."""
        events = self._end_reasoning()
        for call_id in self.calls.values():
            if call_id not in self.ended:
                self.ended.append(call_id)
                events.append(ToolCallEnd(call_id))
        return events


def _responses_usage(raw: Any) -> Usage:
    """Responses usage in chat-completions terms (its output tokens count the reasoning)."""
    details = raw.input_tokens_details
    cached = (details.cached_tokens or 0) if details is not None else 0
    return Usage(
        input_tokens=max((raw.input_tokens or 0) - cached, 0),
        output_tokens=raw.output_tokens or 0,
        cache_read_tokens=cached,
    )


class _Failed(Exception):
    """A ``response.failed`` or ``error`` event: the provider gave up mid-stream."""

    def __init__(self, event: Any) -> None:
        error = event.response.error if event.type == "response.failed" else event
        self.message = getattr(error, "message", None) or "the response failed"
        self.code = getattr(error, "code", None)
        super().__init__(self.message)

    def api_error(self, request: httpx2.Request) -> openai.APIError:
        """The failure as the SDK's own mid-stream error, which SDKModel._error words."""
        return openai.APIError(
            self.message, request, body={"message": self.message, "code": self.code}
        )


class _SummaryRefused(Exception):
    """OpenAI refused the request for its reasoning summary (an unverified organization)."""


def _refuses_summary(exc: Exception) -> bool:
    return isinstance(exc, openai.BadRequestError) and "summar" in str(exc).lower()


class ResponsesModel(OpenAIModel):
    """An OpenAI model spoken to through the Responses API."""

    #: Set once OpenAI refused this model's reasoning summary: later requests ask for none.
    summary_refused = False

    def request_params(
        self,
        messages: Sequence[Message],
        *,
        system: str | None = None,
        tools: Sequence[ToolSpec] = (),
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.name,
            "input": build_input(messages, images=self.accepts_images),
            "stream": True,
            "store": False,
        }
        if system:
            params["instructions"] = system
        if tools:
            params["tools"] = build_tools(tools)
        if self.settings.max_tokens:
            params["max_output_tokens"] = self.settings.max_tokens
        if is_reasoning_model(self.name):
            reasoning: dict[str, str] = {}
            if self.settings.reasoning_effort:
                reasoning["effort"] = self.settings.reasoning_effort
            if self.settings.reasoning_summary and not self.summary_refused:
                reasoning["summary"] = self.settings.reasoning_summary
            if reasoning:
                params["reasoning"] = reasoning
            params["include"] = ["reasoning.encrypted_content"]
        return params

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        system: str | None = None,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[StreamEvent]:
        try:
            async for event in self._stream(messages, system, tools):
                yield event
        except _SummaryRefused:
            # An organization OpenAI has not verified gets no summaries; the request is
            # refused before any event, so it is made again once without one.
            self.summary_refused = True
            async for event in self._stream(messages, system, tools):
                yield event

    async def _stream(
        self, messages: Sequence[Message], system: str | None, tools: Sequence[ToolSpec]
    ) -> AsyncIterator[StreamEvent]:
        params = encodable(self.request_params(messages, system=system, tools=tools))
        state = _ResponsesState()
        try:
            # Retries, the answer timeout and closing the response on every exit (a Stop
            # included) are SDKModel._answer's, as for chat completions.
            async with self._answer(self._client().responses.create(**params)) as response:
                async for event in response:
                    for ours in state.feed(event):
                        yield ours
        except _Failed as failed:
            raise self._error(failed.api_error(response.response.request)) from None
        except _STREAM_ERRORS as exc:
            if _refuses_summary(exc) and "summary" in params.get("reasoning", {}):
                raise _SummaryRefused from exc
            raise self._error(exc) from exc
        if state.finish is None:
            raise self._ended_early(response)
        yield StreamFinish(state.finish, state.usage, self._cost(state.usage))
