"""OpenAI chat completions and OpenAI-compatible servers, on the official async SDK."""

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
    Role,
    TextPart,
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
from .history import conversation, result_images, tool_arguments
from .vision import wire_image

_FINISH = {
    "stop": FinishReason.END_TURN,
    "length": FinishReason.MAX_TOKENS,
    "tool_calls": FinishReason.TOOL_USE,
    "function_call": FinishReason.TOOL_USE,
    "content_filter": FinishReason.CONTENT_FILTER,
    "refusal": FinishReason.CONTENT_FILTER,
}

#: Errors the SDK, the transport or a malformed event can raise mid-stream.
_STREAM_ERRORS = (openai.OpenAIError, httpx2.HTTPError, ValueError)


def build_messages(
    messages: Sequence[Message], system: str | None, *, images: bool = True
) -> list[dict[str, Any]]:
    """Chat-completions messages for a transcript.

    Reasoning is not sent back: OpenAI-compatible servers do not accept
    ``reasoning_content`` in requests. Consecutive user or assistant messages
    are merged so every server sees one message per turn. Images go as ``image_url``
    parts of a user message; a tool message takes only text, so a tool result's images
    follow its tool messages in a user message that names the call. With ``images``
    false each image is a line of text instead.
    """
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": system})
    for message in conversation(messages):
        if message.role is Role.TOOL:
            out.extend(_tool_message(result) for result in message.tool_results)
            shown = result_images(message)
            if shown:
                _add_user(out, _user_content(shown, images))
            continue
        if message.role is Role.USER:
            _add_user(out, _user_content(message.parts, images))
            continue
        entry = _assistant_message(message)
        if entry is None:
            continue
        last = out[-1] if out else None
        if last is not None and last["role"] == "assistant":
            if entry.get("content"):
                joined = "\n\n".join(filter(None, [last.get("content"), entry["content"]]))
                last["content"] = joined
            if entry.get("tool_calls"):
                last.setdefault("tool_calls", []).extend(entry["tool_calls"])
        else:
            out.append(entry)
    return out


def _assistant_message(message: Message) -> dict[str, Any] | None:
    text = "".join(p.text for p in message.parts if isinstance(p, TextPart))
    calls = [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(tool_arguments(call))},
            **({"extra_content": _google_signature(call.signature)} if call.signature else {}),
        }
        for call in message.tool_calls
    ]
    if not text.strip() and not calls:
        return None  # reasoning only: nothing an OpenAI-compatible server takes back
    entry: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        entry["tool_calls"] = calls
    return entry


def _google_signature(signature: str) -> dict[str, Any]:
    """Where Gemini's OpenAI-compatible endpoint puts a call's thought signature: Gemini 3
    refuses a conversation whose calls come back without theirs."""
    return {"google": {"thought_signature": signature}}


def _thought_signature(call: Any) -> str:
    """The thought signature a streamed tool call carries (Gemini), or ""."""
    extra = (call.model_extra or {}).get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) else ""


def _user_content(parts: Sequence[Part], images: bool) -> str | list[dict[str, Any]]:
    """A user message's content: plain text, or content parts when it carries an image."""
    content: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, TextPart):
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            wire = wire_image(part, images)
            if isinstance(wire, str):
                content.append({"type": "text", "text": "\n" + wire})  # on a line of its own
            else:
                url = f"data:{wire.media_type};base64,{wire.base64}"
                content.append({"type": "image_url", "image_url": {"url": url}})
    if all(item["type"] == "text" for item in content):
        return "".join(item["text"] for item in content)
    return content


def _add_user(out: list[dict[str, Any]], content: str | list[dict[str, Any]]) -> None:
    """Append a user message, merged into the previous one if that is a user message too."""
    last = out[-1] if out else None
    if last is None or last["role"] != "user":
        out.append({"role": "user", "content": content})
    elif isinstance(last["content"], str) and isinstance(content, str):
        last["content"] += "\n\n" + content
    else:
        last["content"] = _as_parts(last["content"]) + _as_parts(content)


def _as_parts(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _tool_message(result: ToolResultPart) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": result.tool_call_id, "content": result.content}


def build_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
            },
        }
        for tool in tools
    ]


@dataclass
class _Call:
    id: str
    ended: bool = False


@dataclass
class _StreamState:
    """Turns chat-completion chunks into our events; one per request."""

    calls: list[_Call] = field(default_factory=list)  # in order of their first delta
    by_index: dict[int, _Call] = field(default_factory=dict)  # the call a delta's index means
    reasoning_open: bool = False
    refused: bool = False
    finish: str | None = None
    usage: Usage = field(default_factory=Usage)

    def feed(self, chunk: Any) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if chunk.usage is not None:
            self.usage = _usage(chunk.usage)
        for choice in chunk.choices or ():
            delta = choice.delta
            if delta is not None:
                reasoning = _reasoning_text(delta)
                if reasoning:
                    self.reasoning_open = True
                    events.append(ReasoningDelta(reasoning))
                # A refusal is the model's answer too: show it as text.
                for text in (delta.content, getattr(delta, "refusal", None)):
                    if text:
                        events.extend(self._end_reasoning())
                        events.append(TextDelta(text))
                if getattr(delta, "refusal", None):
                    self.refused = True
                for call in delta.tool_calls or ():
                    events.extend(self._end_reasoning())
                    events.extend(self._tool_delta(call))
            if choice.finish_reason:
                self.finish = choice.finish_reason
                events.extend(self.close())
        return events

    def _tool_delta(self, call: Any) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        index = call.index if call.index is not None else len(self.calls)
        function = call.function
        known = self.by_index.get(index)
        # A new id at a known index is a new call: some servers send every parallel
        # call complete, each at index 0.
        if known is None or (call.id and call.id != known.id):
            call_id = call.id or f"call_{len(self.calls)}"
            known = self.by_index[index] = _Call(call_id)
            self.calls.append(known)
            name = (function.name if function else None) or ""
            events.append(ToolCallStart(call_id, name, _thought_signature(call)))
        if function is not None and function.arguments:
            events.append(ToolCallDelta(known.id, function.arguments))
        return events

    def _end_reasoning(self) -> list[StreamEvent]:
        if not self.reasoning_open:
            return []
        self.reasoning_open = False
        return [ReasoningEnd()]

    def close(self) -> list[StreamEvent]:
        events = self._end_reasoning()
        for call in self.calls:
            if not call.ended:
                call.ended = True
                events.append(ToolCallEnd(call.id))
        return events

    def reason(self) -> FinishReason:
        assert self.finish is not None
        reason = _FINISH.get(self.finish, FinishReason.UNKNOWN)
        if self.refused and reason is FinishReason.END_TURN:
            return FinishReason.CONTENT_FILTER
        # Some compatible servers (older Ollama) say "stop" after calling tools.
        if self.calls and reason is FinishReason.END_TURN:
            return FinishReason.TOOL_USE
        return reason


def _reasoning_text(delta: Any) -> str:
    """``reasoning_content`` (llama.cpp, vLLM, DeepSeek, Z.ai) or ``reasoning`` (OpenRouter)."""
    extra = delta.model_extra or {}
    for key in ("reasoning_content", "reasoning"):
        value = getattr(delta, key, None) if key in type(delta).model_fields else extra.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _usage(raw: Any) -> Usage:
    prompt = raw.prompt_tokens or 0
    details = getattr(raw, "prompt_tokens_details", None)
    cached = (getattr(details, "cached_tokens", None) or 0) if details is not None else 0
    return Usage(
        input_tokens=max(prompt - cached, 0),
        output_tokens=raw.completion_tokens or 0,
        cache_read_tokens=cached,
    )


class OpenAIModel(SDKModel):
    """A chat-completions model: OpenAI itself or any OpenAI-compatible server."""

    def _make_client(self, **options: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(**options)

    def request_params(
        self,
        messages: Sequence[Message],
        *,
        system: str | None = None,
        tools: Sequence[ToolSpec] = (),
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.name,
            "messages": build_messages(messages, system, images=self.accepts_images),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            params["tools"] = build_tools(tools)
        if self.settings.max_tokens:
            # OpenAI's reasoning models only take max_completion_tokens; most
            # compatible servers only know max_tokens.
            first_party = self.config.type in ("openai", "azure")
            key = "max_completion_tokens" if first_party else "max_tokens"
            params[key] = self.settings.max_tokens
        if self.settings.reasoning_effort:
            params["reasoning_effort"] = self.settings.reasoning_effort
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
            # The SDK retries 408/409/429/5xx and connection failures here, before any
            # event reached the caller; a failure after that is not retried because the
            # caller already holds part of the answer.
            # ``async with`` closes the HTTP response on every exit, including a
            # CancelledError raised at the await inside the loop.
            async with self._answer(self._client().chat.completions.create(**params)) as response:
                async for chunk in response:
                    for event in state.feed(chunk):
                        yield event
        except _STREAM_ERRORS as exc:
            raise self._error(exc) from exc
        if state.finish is None:
            raise self._ended_early(response)
        for event in state.close():
            yield event
        yield StreamFinish(
            state.reason(),
            state.usage,
            self._cost(state.usage),
        )
