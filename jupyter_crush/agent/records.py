"""A turn's records: what it has written to the transcript store and how it is closed.

Every write a turn makes goes through its :class:`TurnRecords`: the prompt (once), each
step's assistant message and tool results while streaming, and — in :meth:`TurnRecords.close`
— the terminal record. The closing rules live here and nowhere else:

- a turn the model had already ended keeps the model's own finish;
- an assistant message left open gets the turn's finish, its tool calls marked finished;
- every tool call sent to the model gets a result, so the next request is well-formed;
- a turn stopped before the model answered (or between steps) ends in an assistant message
  holding only the finish;
- everything is flushed before the turn reports its end;
- the store may fail (disk full, I/O error): ``close`` still attempts every write, retries
  those that failed before, never raises, and its outcome says what was and wasn't saved.

Touched on the event loop's thread only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.message import (
    TERMINAL_REASONS,
    FinishReason,
    Message,
    Part,
    Role,
    TextPart,
    ToolResultPart,
    Usage,
)
from ..core.output import redact
from ..store.transcript import TranscriptStore

if TYPE_CHECKING:
    from ..core.model import Model
    from .calls import Attachment

TOOL_CANCELED = "Tool call canceled: the run was stopped before it finished"
TOOL_FAILED = "Tool call not completed: the run failed before it finished"


class StoreFailed(Exception):
    """A transcript store call failed while the turn was running; ends the turn."""


@dataclass(frozen=True)
class TurnOutcome:
    """How a closed turn ended, as its records say."""

    reason: FinishReason
    detail: str
    usage: Usage
    cost: float | None
    text: str


def prompt_message(
    session_id: str,
    prompt: str,
    attachments: Sequence[Attachment],
    metadata: dict[str, Any] | None = None,
) -> Message:
    parts: list[Part] = [TextPart(prompt)]
    parts += [
        a.image
        if a.image is not None
        else TextPart(f'\n<attachment name="{a.name}">\n{a.content}\n</attachment>')
        for a in attachments
    ]
    return Message(session_id, Role.USER, parts=parts, metadata=dict(metadata or {}))


@dataclass(eq=False)
class TurnRecords:
    """The records of one turn, in the order written."""

    store: TranscriptStore
    session_id: str
    prompt: str
    attachments: Sequence[Attachment] = ()
    metadata: dict[str, Any] = field(default_factory=dict)  # the user message's
    messages: list[Message] = field(default_factory=list)
    prompt_recorded: bool = False
    failure: Exception | None = None  # the first store error this turn met
    # ids of messages whose last write failed: still open, retried by close()
    unsaved: set[str] = field(default_factory=set)
    flush_failed: bool = False
    #: What the sub-agents its tool calls ran spent (usage, cost): part of the turn's own.
    child_spend: list[tuple[Usage, float | None]] = field(default_factory=list)

    def record_prompt(self) -> None:
        """Write the turn's user message, once: it is always the turn's first record."""
        if not self.prompt_recorded:
            self.prompt_recorded = True
            self.add(prompt_message(self.session_id, self.prompt, self.attachments, self.metadata))

    def add(self, message: Message) -> None:
        """Add a new record: the turn owns it from now on, even if the write fails."""
        self.messages.append(message)
        self._write(message, self.store.add_message)

    def save(self, message: Message, *, force: bool = True) -> None:
        """Write the latest state of a message already added (coalesced unless ``force``)."""
        self._write(message, lambda m: self.store.update_message(m, force=force))

    def history(self) -> list[Message]:
        """The session's messages so far, to send with the turn's first request."""
        try:
            return self.store.list_messages(self.session_id)
        except Exception as error:
            self.failure = self.failure or error
            raise StoreFailed(
                f"The transcript store failed reading the session: {describe(error)}"
            ) from error

    def _write(self, message: Message, write: Callable[[Message], object]) -> None:
        try:
            write(message)
        except Exception as error:
            self.unsaved.add(message.id)
            self.failure = self.failure or error
            raise StoreFailed(
                f"The transcript store failed saving {_label(message)}: {describe(error)}"
            ) from error
        self.unsaved.discard(message.id)

    def close(self, reason: FinishReason, detail: str, model: Model) -> TurnOutcome:
        """Write the terminal record with ``reason`` and flush; return how the turn ended.

        Never raises for a store failure: the outcome's reason is then ``error`` and its
        detail says what the store failed to save.
        """
        with contextlib.suppress(StoreFailed):
            self.record_prompt()
        for message in [m for m in self.messages if m.id in self.unsaved]:
            with contextlib.suppress(StoreFailed):  # still open: try again
                self._write(message, self.store.add_message)
        assistants = [m for m in self.messages if m.role is Role.ASSISTANT]
        last = assistants[-1] if assistants else None
        if last is not None and last.finish_reason in TERMINAL_REASONS:
            # The model had already ended the turn: a cancel arriving after that changes nothing.
            reason, detail = last.finish_reason, last.finish.message
        elif last is not None and not last.is_finished:
            for call in last.tool_calls:
                call.finished = True
            last.add_finish(reason, detail)
            with contextlib.suppress(StoreFailed):
                self.save(last)
        answered = {r.tool_call_id for m in self.messages for r in m.tool_results}
        unanswered = [c for m in assistants for c in m.tool_calls if c.id not in answered]
        if unanswered:
            results = self.messages[-1]
            if results.role is not Role.TOOL:
                results = Message(self.session_id, Role.TOOL)
                self.messages.append(results)
            note = TOOL_CANCELED if reason is FinishReason.CANCELED else TOOL_FAILED
            results.parts.extend(
                ToolResultPart(c.id, c.name, note, is_error=True) for c in unanswered
            )
            with contextlib.suppress(StoreFailed):
                self._write(results, self.store.add_message)
        if last is None or last.finish_reason is FinishReason.TOOL_USE:
            terminal = Message(
                self.session_id, Role.ASSISTANT, model=model.name, provider=model.provider
            )
            terminal.add_finish(reason, detail)
            with contextlib.suppress(StoreFailed):
                self.add(terminal)
            assistants.append(terminal)
        try:
            self.store.flush()
        except Exception as error:
            self.failure = self.failure or error
            self.flush_failed = True
        usage = Usage()
        for message in assistants:
            usage += message.usage
        costs = [m.cost for m in assistants if m.parts and not _finish_only(m)]
        for child_usage, child_cost in self.child_spend:
            usage += child_usage
            costs.append(child_cost)
        cost = sum(costs) if costs and None not in costs else None  # unknown when any step is
        text = "".join(m.text for m in assistants)
        if self.failure is not None:
            reason, detail = FinishReason.ERROR, self._failure_detail(reason, detail)
        return TurnOutcome(FinishReason(reason), detail, usage, cost, text)

    def _failure_detail(self, reason: FinishReason, detail: str) -> str:
        """How the turn ended and what the store did not save, in one line."""
        assert self.failure is not None
        saved = _labels(m for m in self.messages if m.id not in self.unsaved)
        lost = _labels(m for m in self.messages if m.id in self.unsaved)
        if self.flush_failed:
            lost.append("the latest streamed updates")
        failed = f"the transcript store failed ({describe(self.failure)})"
        if reason is FinishReason.ERROR and not detail:  # the failure itself ended the turn
            parts = [failed[0].upper() + failed[1:]]
        else:
            ended = _REASON_WORDS.get(reason, str(reason))
            parts = [f"{ended} ({detail}); {failed}" if detail else f"{ended}; {failed}"]
        if saved:
            parts.append(f"saved: {', '.join(saved)}")
        if lost:
            parts.append(f"not saved: {', '.join(lost)}")
        return "; ".join(parts)


def describe(error: BaseException) -> str:
    # Shown in the cell and stored: an error message may quote a key it was given.
    return redact(str(error).strip() or type(error).__name__)


_REASON_WORDS = {
    FinishReason.END_TURN: "Answered",
    FinishReason.CANCELED: "Canceled",
    FinishReason.ERROR: "Failed",
    FinishReason.MAX_TOKENS: "Stopped at the token limit",
}


def _label(message: Message) -> str:
    if message.role is Role.USER:
        return "the prompt"
    if message.role is Role.TOOL:
        return "the tool results"
    if message.role is Role.SUMMARY:
        return "the summary"
    return "the finish record" if _finish_only(message) else "the answer"


def _labels(messages: Iterable[Message]) -> list[str]:
    return list(dict.fromkeys(_label(m) for m in messages))


def _finish_only(message: Message) -> bool:
    return all(p.type == "finish" for p in message.parts)
