"""Anthropic Messages API, on the official async SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2

from ..core.message import (
    FinishReason,
    ImagePart,
    Message,
    ReasoningPart,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
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
from .base import SDKModel
from .history import conversation, tool_arguments
from .vision import wire_image

_FINISH = {
    "end_turn": FinishReason.END_TURN,
    "stop_sequence": FinishReason.END_TURN,
    "max_tokens": FinishReason.MAX_TOKENS,
    "model_context_window_exceeded": FinishReason.MAX_TOKENS,
    "tool_use": FinishReason.TOOL_USE,
    "refusal": FinishReason.CONTENT_FILTER,
}

_STREAM_ERRORS = (anthropic.AnthropicError, httpx2.HTTPError, ValueError)

#: Anthropic requires max_tokens; this is what we ask for when the settings leave it open.
DEFAULT_MAX_TOKENS = 4096

#: A prompt-cache breakpoint. Each step of a turn resends the system prompt, the tools and
#: the conversation so far; cached input is billed at a tenth of the price and read faster.
_CACHE = {"type": "ephemeral"}


def _assistant_blocks(message: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, ReasoningPart):
            # Thinking goes back verbatim with its signature (the API checks it, and
            # requires it before tool_use when thinking is on); redacted thinking goes back
            # as its encrypted data. Unsigned thinking is a stream cut mid-thought: the API
            # would reject it, so it is dropped.
            if part.redacted:
                blocks.append({"type": "redacted_thinking", "data": part.redacted})
            elif part.signature:
                blocks.append(
                    {"type": "thinking", "thinking": part.text, "signature": part.signature}
                )
        elif isinstance(part, TextPart):
            if part.text.strip():
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ToolCallPart):
            blocks.append(
                {
                    "type": "tool_use",
                    "id": part.id,
                    "name": part.name,
                    "input": tool_arguments(part),
                }
            )
    return blocks


def _image_block(image: ImagePart, images: bool) -> dict[str, Any]:
    """An image block, or the text block that stands in for it (see :func:`wire_image`)."""
    wire = wire_image(image, images)
    if isinstance(wire, str):
        return {"type": "text", "text": wire}
    source = {"type": "base64", "media_type": wire.media_type, "data": wire.base64}
    return {"type": "image", "source": source}


def _tool_result_block(result: ToolResultPart, images: bool) -> dict[str, Any]:
    content: str | list[dict[str, Any]] = result.content
    if result.images:
        # A tool result may carry image blocks of its own: the figure stays with its call.
        content = [{"type": "text", "text": result.content}]
        content += [_image_block(image, images) for image in result.images]
    return {
        "type": "tool_result",
        "tool_use_id": result.tool_call_id,
        "content": content,
        "is_error": result.is_error,
    }


def build_messages(messages: Sequence[Message], *, images: bool = True) -> list[dict[str, Any]]:
    """Messages API content for a transcript.

    Anthropic requires user/assistant alternation: tool results travel in a
    user message, and consecutive messages of one wire role are merged (tool
    results first, as the API requires). Images are image blocks, in the user's
    message or inside their tool result; with ``images`` false, a line of text each.
    """
    out: list[dict[str, Any]] = []
    for message in conversation(messages):
        if message.role is Role.ASSISTANT:
            role, blocks = "assistant", _assistant_blocks(message)
        elif message.role is Role.TOOL:
            role = "user"
            blocks = [_tool_result_block(r, images) for r in message.tool_results]
        else:
            role = "user"
            blocks = [
                {"type": "text", "text": p.text}
                if isinstance(p, TextPart)
                else _image_block(p, images)
                for p in message.parts
                if (isinstance(p, TextPart) and p.text.strip()) or isinstance(p, ImagePart)
            ]
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for entry in out:
        if entry["role"] == "user":
            # tool_result blocks must open a user message; merging may have put text first.
            entry["content"].sort(key=lambda block: block["type"] != "tool_result")
    return out


def build_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in tools
    ]


@dataclass
class _StreamState:
    """Turns Messages API stream events into ours; one per request."""

    #: content block index -> (its type: "thinking", "text", "tool_use", ..., tool call id)
    blocks: dict[int, tuple[str, str]] = field(default_factory=dict)
    stop_reason: str | None = None
    stopped: bool = False
    usage: Usage = field(default_factory=Usage)

    def feed(self, event: Any) -> list[StreamEvent]:
        kind = event.type
        if kind == "message_start":
            self.usage = _usage(event.message.usage, self.usage)
        elif kind == "content_block_start":
            block = event.content_block
            if block.type == "tool_use":
                self.blocks[event.index] = ("tool_use", block.id)
                return [ToolCallStart(block.id, block.name)]
            self.blocks[event.index] = (block.type, "")
            if block.type == "thinking" and (block.thinking or block.signature):
                return [ReasoningDelta(block.thinking or "", block.signature or "")]
            if block.type == "redacted_thinking":
                return [ReasoningDelta(redacted=block.data)]
            if block.type == "text" and block.text:
                return [TextDelta(block.text)]
        elif kind == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta":
                return [TextDelta(delta.text)] if delta.text else []
            if delta.type == "thinking_delta":
                return [ReasoningDelta(delta.thinking)] if delta.thinking else []
            if delta.type == "signature_delta":
                return [ReasoningDelta("", delta.signature)]
            if delta.type == "input_json_delta":
                _, call_id = self.blocks.get(event.index, ("", ""))
                if call_id and delta.partial_json:
                    return [ToolCallDelta(call_id, delta.partial_json)]
        elif kind == "content_block_stop":
            block_type, call_id = self.blocks.get(event.index, ("", ""))
            if block_type == "tool_use":
                return [ToolCallEnd(call_id)]
            if block_type in ("thinking", "redacted_thinking"):
                return [ReasoningEnd()]
        elif kind == "message_delta":
            if event.delta.stop_reason:
                self.stop_reason = event.delta.stop_reason
            if event.usage is not None:
                self.usage = _usage(event.usage, self.usage)
        elif kind == "message_stop":
            self.stopped = True
        return []


def _usage(raw: Any, previous: Usage) -> Usage:
    """message_start carries the input side, message_delta the cumulative totals."""

    def pick(name: str, old: int) -> int:
        value = getattr(raw, name, None)
        return old if value is None else int(value)

    return Usage(
        input_tokens=pick("input_tokens", previous.input_tokens),
        output_tokens=pick("output_tokens", previous.output_tokens),
        cache_read_tokens=pick("cache_read_input_tokens", previous.cache_read_tokens),
        cache_write_tokens=pick("cache_creation_input_tokens", previous.cache_write_tokens),
    )


class AnthropicModel(SDKModel):
    """A Claude model (or an Anthropic-compatible endpoint)."""

    def _make_client(self, **options: Any) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(**options)

    def request_params(
        self,
        messages: Sequence[Message],
        *,
        system: str | None = None,
        tools: Sequence[ToolSpec] = (),
    ) -> dict[str, Any]:
        budget = self.settings.thinking_budget
        max_tokens = self.settings.max_tokens or DEFAULT_MAX_TOKENS
        if budget and max_tokens <= budget:
            max_tokens = budget + DEFAULT_MAX_TOKENS  # the API requires max_tokens > budget
        wire = build_messages(messages, images=self.accepts_images)
        params: dict[str, Any] = {
            "model": self.name,
            "max_tokens": max_tokens,
            "messages": wire,
            "stream": True,
        }
        caching = self.settings.prompt_caching
        if system:
            params["system"] = [
                {"type": "text", "text": system, **({"cache_control": _CACHE} if caching else {})}
            ]
        if tools:
            params["tools"] = build_tools(tools)
        if caching:
            # Breakpoints (at most 4 allowed): after the tools, which cover the system prompt
            # too, and after the newest message, so the next step reads all of it from cache.
            if tools:
                params["tools"][-1]["cache_control"] = _CACHE
            last = wire[-1]["content"][-1] if wire and wire[-1]["content"] else None
            if last is not None and last["type"] in ("text", "tool_result", "image"):
                last["cache_control"] = _CACHE
        if budget:
            params["thinking"] = {"type": "enabled", "budget_tokens": budget}
        return params

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        system: str | None = None,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[StreamEvent]:
        # UTF-8 JSON on the wire: undecodable characters go as visible marks.
        params = encodable(self.request_params(messages, system=system, tools=tools))
        state = _StreamState()
        try:
            # SDK retries (408/409/429/5xx, overloaded, connection errors) happen inside
            # create(), before the caller has seen any event.
            # ``async with`` closes the HTTP stream on every exit, cancel included.
            async with self._answer(self._client().messages.create(**params)) as response:
                async for event in response:
                    for ours in state.feed(event):
                        yield ours
        except _STREAM_ERRORS as exc:
            raise self._error(exc) from exc
        if not state.stopped or state.stop_reason is None:
            raise self._ended_early(response)
        yield StreamFinish(
            _FINISH.get(state.stop_reason, FinishReason.UNKNOWN),
            state.usage,
            self._cost(state.usage),
        )
