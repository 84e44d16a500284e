"""What both wire formats need from a transcript before converting it.

The transcript keeps everything that happened, including turns that were cut
short; a provider request must be well-formed. The rules shared by all
providers live here; the provider modules add their own (role merging,
reasoning blocks).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..core.limits import capped
from ..core.message import (
    Message,
    Part,
    ReasoningPart,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
)

#: ``metadata["event"]`` of the system row that records a ``%crush undo``
#: (:mod:`jupyter_crush.kernel.undo`): the one system row a request carries, as a note.
UNDO_EVENT = "undo"


def tool_arguments(part: ToolCallPart) -> dict[str, Any]:
    """The call's arguments as an object.

    A stream cut mid-call leaves half a JSON text; the provider rejects the
    whole request if we echo it, so such calls go back as ``{}`` (the call
    carries an error result saying it was interrupted).
    """
    try:
        value = json.loads(part.input) if part.input.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def has_content(message: Message) -> bool:
    """Whether an assistant message has anything a provider could be sent.

    A turn canceled before the model answered holds only its finish part.
    """
    for part in message.parts:
        if isinstance(part, TextPart) and part.text.strip():
            return True
        if isinstance(part, ToolCallPart):
            return True
        if isinstance(part, ReasoningPart) and part.text:
            return True
    return False


def result_images(message: Message) -> list[Part]:
    """The images of a tool message's results, each call's headed by a line naming it: for
    the APIs whose tool results take only text, a user message after them carries these."""
    shown: list[Part] = []
    for result in message.tool_results:
        if result.images:
            shown.append(TextPart(f"Images from the {result.name} call {result.tool_call_id}:"))
            shown.extend(result.images)
    return shown


#: The result sent for a call that has none in the transcript.
INTERRUPTED = "The tool call was interrupted before it returned a result."


def conversation(messages: Sequence[Message]) -> list[Message]:
    """The messages worth sending, in order, with every tool call answered exactly once,
    each within the request's limits (:mod:`jupyter_crush.core.limits`).

    Empty assistant turns and system rows are skipped. Both APIs reject a tool call
    without a result right after it, and a result whose call is not in the message
    before; the agent settles calls it interrupts, and this keeps the request valid
    for any transcript (one written by an older version, a kernel killed mid-tool).
    """
    out: list[Message] = []
    pending: dict[str, ToolCallPart] = {}  # calls of the last assistant message, unanswered
    for message in messages:
        if message.role is Role.SYSTEM:
            if message.metadata.get("event") != UNDO_EVENT:
                continue  # the system prompt is passed separately
            message = _undo_note(message)  # what the model did is gone: it must know
        if message.role is Role.ASSISTANT and not has_content(message):
            continue
        if message.role is Role.TOOL:
            results = [r for r in message.tool_results if pending.pop(r.tool_call_id, None)]
            results += [_interrupted(call) for call in pending.values()]
            pending = {}
            if results:
                out.append(replace(message, parts=list(results)))
            continue
        if pending:
            out.append(_settle(message.session_id, pending))
            pending = {}
        if message.role is Role.ASSISTANT:
            pending = {call.id: call for call in message.tool_calls}
        out.append(message)
    if pending:
        out.append(_settle(out[-1].session_id, pending))
    return capped(out)


def _undo_note(undo: Message) -> Message:
    note = f"[Not a request: the user ran %crush undo on the turn before.]\n{undo.text}"
    return replace(undo, role=Role.USER, parts=[TextPart(note)])


def _interrupted(call: ToolCallPart) -> ToolResultPart:
    return ToolResultPart(call.id, call.name, INTERRUPTED, is_error=True)


def _settle(session_id: str, pending: dict[str, ToolCallPart]) -> Message:
    return Message(session_id, Role.TOOL, [_interrupted(call) for call in pending.values()])
