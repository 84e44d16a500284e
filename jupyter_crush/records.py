"""A turn's records: what it has written to the transcript store and how it is closed.

Every write a turn makes goes through its :class:`TurnRecords`: the prompt (once), each
step's assistant message and tool results while streaming, and — in :meth:`TurnRecords.close`
— the terminal record. The closing rules live here and nowhere else:

- a turn the model had already ended keeps the model's own finish;
- an assistant message left open gets the turn's finish, its tool calls marked finished;
- every tool call sent to the model gets a result, so the next request is well-formed;
- a turn stopped before the model answered (or between steps) ends in an assistant message
  holding only the finish;
- everything is flushed before the turn reports its end.

Touched on the event loop's thread only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .message import (
    TERMINAL_REASONS,
    FinishReason,
    Message,
    Role,
    TextPart,
    ToolResultPart,
    Usage,
)
from .store import TranscriptStore

if TYPE_CHECKING:
    from .agent import Attachment
    from .model import Model

TOOL_CANCELED = "Tool call canceled: the run was stopped before it finished"
TOOL_FAILED = "Tool call not completed: the run failed before it finished"


@dataclass(frozen=True)
class TurnOutcome:
    """How a closed turn ended, as its records say."""

    reason: FinishReason
    detail: str
    usage: Usage
    cost: float | None
    text: str


def prompt_message(session_id: str, prompt: str, attachments: Sequence[Attachment]) -> Message:
    parts = [TextPart(prompt)]
    parts += [
        TextPart(f'\n<attachment name="{a.name}">\n{a.content}\n</attachment>') for a in attachments
    ]
    return Message(session_id, Role.USER, parts=list(parts))


@dataclass(eq=False)
class TurnRecords:
    """The records of one turn, in the order written."""

    store: TranscriptStore
    session_id: str
    prompt: str
    attachments: Sequence[Attachment] = ()
    messages: list[Message] = field(default_factory=list)
    prompt_recorded: bool = False

    def record_prompt(self) -> None:
        """Write the turn's user message, once: it is always the turn's first record."""
        if not self.prompt_recorded:
            self.prompt_recorded = True
            self.add(prompt_message(self.session_id, self.prompt, self.attachments))

    def add(self, message: Message) -> None:
        self.store.add_message(message)
        self.messages.append(message)

    def save(self, message: Message, *, force: bool = True) -> None:
        """Write the latest state of a message already added (coalesced unless ``force``)."""
        self.store.update_message(message, force=force)

    def close(self, reason: FinishReason, detail: str, model: Model) -> TurnOutcome:
        """Write the terminal record with ``reason`` and flush; return how the turn ended."""
        self.record_prompt()
        assistants = [m for m in self.messages if m.role is Role.ASSISTANT]
        last = assistants[-1] if assistants else None
        if last is not None and last.finish_reason in TERMINAL_REASONS:
            # The model had already ended the turn: a cancel arriving after that changes nothing.
            reason, detail = last.finish_reason, last.finish.message
        elif last is not None and not last.is_finished:
            for call in last.tool_calls:
                call.finished = True
            last.add_finish(reason, detail)
            self.save(last)
        answered = {r.tool_call_id for m in self.messages for r in m.tool_results}
        unanswered = [c for m in assistants for c in m.tool_calls if c.id not in answered]
        if unanswered:
            results = self.messages[-1]
            if results.role is not Role.TOOL:
                results = Message(self.session_id, Role.TOOL)
                self.add(results)
            note = TOOL_CANCELED if reason is FinishReason.CANCELED else TOOL_FAILED
            results.parts.extend(
                ToolResultPart(c.id, c.name, note, is_error=True) for c in unanswered
            )
            self.save(results)
        if last is None or last.finish_reason is FinishReason.TOOL_USE:
            terminal = Message(
                self.session_id, Role.ASSISTANT, model=model.name, provider=model.provider
            )
            terminal.add_finish(reason, detail)
            self.add(terminal)
            assistants.append(terminal)
        self.store.flush()
        usage = Usage()
        for message in assistants:
            usage += message.usage
        costs = [m.cost for m in assistants if m.parts and not _finish_only(m)]
        cost = sum(costs) if costs and None not in costs else None  # unknown when any step is
        text = "".join(m.text for m in assistants)
        return TurnOutcome(FinishReason(reason), detail, usage, cost, text)


def _finish_only(message: Message) -> bool:
    return all(p.type == "finish" for p in message.parts)
