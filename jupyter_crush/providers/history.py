"""What both wire formats need from a transcript before converting it.

The transcript keeps everything that happened, including turns that were cut
short; a provider request must be well-formed. The rules shared by all
providers live here; the provider modules add their own (role merging,
reasoning blocks).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from ..message import Message, ReasoningPart, Role, TextPart, ToolCallPart


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


def conversation(messages: Sequence[Message]) -> Iterator[Message]:
    """The messages worth sending, in order: empty assistant turns and system rows skipped."""
    for message in messages:
        if message.role is Role.SYSTEM:
            continue  # the system prompt is passed separately
        if message.role is Role.ASSISTANT and not has_content(message):
            continue
        yield message


def text_of(message: Message) -> str:
    return "".join(p.text for p in message.parts if isinstance(p, TextPart))
