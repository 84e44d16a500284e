"""Test doubles for code that drives the agent: :class:`ScriptedModel`.

``ScriptedModel`` plays scripted replies through the same streaming interface
real providers implement, so notebooks and tests can exercise the agent, the
widget and the store offline and deterministically::

    model = ScriptedModel([
        Reply(tool_calls=[ToolCall("view", {"path": "data.csv"})]),
        "The file has 3 columns.",
    ], tokens_per_second=200)
    gate = model.gate(step=1, after_tokens=2)   # hold the 2nd request after 2 tokens
    ...
    await gate.reached()
    agent.cancel(session_id)                     # lands while the stream is held
    gate.release()
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .core.message import FinishReason, Message, Role, Usage
from .core.model import (
    ModelError,
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

_TOKEN = re.compile(r"\s*\S+|\s+")


def tokenize(text: str) -> list[str]:
    """Split text into word-sized tokens that concatenate back to ``text``."""
    return _TOKEN.findall(text)


def iter_tokens(text: str) -> Iterator[str]:
    """The tokens of :func:`tokenize`, one at a time. A stream takes its reply's tokens so:
    a long reply held as a list (240,000 tokens for a minute at 2,000 tokens/s) held the
    loop ~60 ms to make as the stream started and ~10 ms to free as it stopped."""
    return (match.group() for match in _TOKEN.finditer(text))


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass
class Reply:
    """One scripted model step.

    ``finish`` defaults to ``tool_use`` when there are tool calls, else
    ``end_turn``. ``error`` is raised after the text has streamed.
    """

    text: str = ""
    reasoning: str = ""
    tool_calls: Sequence[ToolCall] = ()
    finish: FinishReason | None = None
    usage: Usage | None = None
    cost: float | None = None
    error: BaseException | None = None


@dataclass
class ScriptedRequest:
    """What the agent sent for one step."""

    messages: list[Message]
    system: str | None
    tools: list[ToolSpec]


class Gate:
    """Holds a scripted stream at a chosen point until released.

    ``release`` may be called from any thread.
    """

    def __init__(self, step: int, after_tokens: int) -> None:
        self.step = step
        self.after_tokens = after_tokens
        self._reached = threading.Event()
        self._released = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    async def reached(self, timeout: float = 10.0) -> None:
        """Wait until the stream is held at the gate."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._reached.is_set():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the scripted stream never reached the gate")
            await asyncio.sleep(0.001)

    @property
    def is_reached(self) -> bool:
        return self._reached.is_set()

    def release(self) -> None:
        self._released.set()
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _hold(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._reached.set()
        if not self._released.is_set():
            await self._wake.wait()


class ScriptedModel:
    """A :class:`~jupyter_crush.core.model.Model` that streams scripted replies.

    Each call to :meth:`stream` plays the next reply; a plain string is a text
    reply. ``tokens_per_second`` paces the stream like a real model (None:
    as fast as the loop allows, still yielding to it between tokens).
    """

    provider = "scripted"

    def __init__(
        self,
        replies: Iterable[Reply | str] = (),
        *,
        tokens_per_second: float | None = None,
        name: str = "scripted-model",
        by_prompt: Mapping[str, Iterable[Reply | str]] | None = None,
    ) -> None:
        self.name = name
        self.replies: list[Reply] = [Reply(text=r) if isinstance(r, str) else r for r in replies]
        #: Replies for the prompts containing a key, played in order before ``replies``: an
        #: offline notebook answers each prompt whichever cells run (a replay asks nothing).
        self.by_prompt: dict[str, list[Reply]] = {
            key: [Reply(text=r) if isinstance(r, str) else r for r in script]
            for key, script in (by_prompt or {}).items()
        }
        self.tokens_per_second = tokens_per_second
        self.requests: list[ScriptedRequest] = []
        self._gates: list[Gate] = []

    def add(self, *replies: Reply | str) -> None:
        self.replies.extend(Reply(text=r) if isinstance(r, str) else r for r in replies)

    def gate(self, step: int = 0, after_tokens: int = 0) -> Gate:
        """Hold request number ``step`` (0-based) once ``after_tokens`` tokens have streamed."""
        gate = Gate(step, after_tokens)
        self._gates.append(gate)
        return gate

    def _scripted_for(self, messages: Sequence[Message], step: int) -> Reply:
        prompts = [m.text for m in messages if m.role is Role.USER]
        for key, script in self.by_prompt.items():
            if script and prompts and key in prompts[-1]:
                return script.pop(0)
        if step >= len(self.replies):
            raise ModelError(
                f"ScriptedModel has no reply for request {step + 1}; script more replies",
                provider=self.provider,
            )
        return self.replies[step]

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        system: str | None = None,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[StreamEvent]:
        step = len(self.requests)
        self.requests.append(ScriptedRequest(list(messages), system, list(tools)))
        reply = self._scripted_for(messages, step)
        gates = [g for g in self._gates if g.step == step]
        emitted = 0
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def tick() -> None:
            nonlocal emitted, started
            for gate in gates:
                if gate.after_tokens == emitted:
                    held = loop.time()
                    await gate._hold()
                    started += loop.time() - held  # pacing resumes after the gate
            emitted += 1
            # Pace against the clock, not per-token sleeps: the loop's timers have ~1 ms
            # resolution, so a fast rate catches up with several tokens per wake-up.
            delay = (
                started + emitted / self.tokens_per_second - loop.time()
                if self.tokens_per_second
                else 0
            )
            await asyncio.sleep(max(delay, 0))

        if reply.reasoning:
            for token in iter_tokens(reply.reasoning):
                await tick()
                yield ReasoningDelta(token)
            yield ReasoningEnd()
        for token in iter_tokens(reply.text):
            await tick()
            yield TextDelta(token)
        for index, call in enumerate(reply.tool_calls):
            call_id = call.id or f"call_{step}_{index}"
            await tick()
            yield ToolCallStart(call_id, call.name)
            yield ToolCallDelta(call_id, json.dumps(call.arguments))
            yield ToolCallEnd(call_id)
        for gate in gates:  # a gate placed past the last token holds before the finish
            if gate.after_tokens >= emitted:
                await gate._hold()
        if reply.error is not None:
            raise reply.error
        finish = reply.finish or (
            FinishReason.TOOL_USE if reply.tool_calls else FinishReason.END_TURN
        )
        usage = reply.usage or Usage(
            input_tokens=sum(len(tokenize(m.text)) for m in messages),
            output_tokens=emitted,
        )
        yield StreamFinish(finish, usage, reply.cost)
