"""Token arithmetic: a model's window and what a request may carry of it, estimates of the
tokens of text, messages and images, and the meter a run view shows.

Where a model's window comes from (an override, crush.json, the price table) is
:mod:`jupyter_crush.providers.windows`; a model none of them knows has no window, and its
requests fall back to the character budget (``history_chars``).

The tokens of the next request are the provider's own count of the last request answered
(its ``input_tokens``, cached ones included, plus what it wrote back) and an estimate, about
four characters a token, only for what was added since.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .message import ImagePart, Message, Role

#: Characters per token for text we have no count of (English prose and code average ~4).
CHARS_PER_TOKEN = 4
#: Tokens of one image without known dimensions (Anthropic's cost of a full-size image).
IMAGE_TOKENS = 1600
#: Output limit when nothing names one: what Anthropic requests ask for by default here.
DEFAULT_OUTPUT_TOKENS = 4096
#: Share of the window kept free: the summary triggers once less than this would be left.
RESERVE_SHARE = 0.2


@dataclass(frozen=True)
class ContextWindow:
    """A model's limits, in tokens."""

    window: int  # what one request (input and output) may hold
    output: int  # the most one answer writes

    @property
    def reserve(self) -> int:
        """Tokens a request must leave free: the larger of an answer and 20% of the window."""
        return max(self.output, math.ceil(self.window * RESERVE_SHARE))

    @property
    def budget(self) -> int:
        """Tokens a request may carry before it should be summarized or cut."""
        return max(self.window - self.reserve, 0)


# -- counting ----------------------------------------------------------------------------------


def estimate_chars(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def estimate_text(text: str) -> int:
    return estimate_chars(len(text))


def message_chars(message: Message) -> int:
    """Characters a message adds to a request: its text, arguments and results."""
    return sum(
        len(getattr(part, "text", "") or "")
        + len(getattr(part, "input", "") or "")
        + len(getattr(part, "content", "") or "")
        for part in message.parts
    )


def estimate_message(message: Message) -> int:
    """Tokens ``message`` adds to a request, estimated from its size."""
    images = sum(_image_tokens(image) for image in message.images)
    return estimate_chars(message_chars(message)) + images + 4  # +4: framing


def _image_tokens(image: ImagePart) -> int:
    if image.width and image.height:  # Anthropic's rule of thumb: width * height / 750
        return min(math.ceil(image.width * image.height / 750), IMAGE_TOKENS)
    return IMAGE_TOKENS


def estimate_fixed(system: str | None, tools: Sequence[Any]) -> int:
    """Tokens of what every request repeats: the system prompt and the tool specs."""
    specs = json.dumps([getattr(t, "__dict__", str(t)) for t in tools], default=str)
    return estimate_text(system or "") + estimate_text(specs)


def reported_tokens(message: Message) -> int:
    """The provider's count of the request ``message`` answered, plus the answer itself."""
    usage = message.usage
    prompt = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    return prompt + usage.output_tokens if prompt else 0


def request_tokens(
    request: Sequence[Message], system: str | None, tools: Sequence[Any], since: float = 0.0
) -> int:
    """Tokens of ``request`` (as it will be sent): exact up to the newest answer whose provider
    counted its own request, estimated for the messages after it.

    An answer made before ``since`` (the newest summary) was counted on a request of another
    shape, so only answers made since the request took its present shape are trusted.
    """
    for index in range(len(request) - 1, -1, -1):
        message = request[index]
        if message.role is Role.ASSISTANT and message.created_at >= since:
            counted = reported_tokens(message)
            if counted:
                return counted + sum(estimate_message(m) for m in request[index + 1 :])
    return estimate_fixed(system, tools) + sum(estimate_message(m) for m in request)


def format_tokens(tokens: int) -> str:
    """``41k``, ``1.2M``, ``950``: a token count for a status line."""
    if tokens >= 1_000_000:
        return f"{tokens / 1_000_000:.1f}M".replace(".0M", "M")
    if tokens >= 1000:
        return f"{round(tokens / 1000)}k"
    return str(tokens)


def format_dollars(amount: float) -> str:
    """``$0.48``; amounts under a cent keep four decimals (``$0.0031``): for a status line."""
    return f"${amount:.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.4f}"


@dataclass(frozen=True)
class Meter:
    """Tokens the next request of a session holds, of its model's window."""

    used: int
    limits: ContextWindow

    @property
    def near_limit(self) -> bool:
        """Within the reserve, or past it: the next prompt summarizes (or cuts) first."""
        return self.used > self.limits.budget

    def __str__(self) -> str:
        return f"{format_tokens(self.used)} / {format_tokens(self.limits.window)}"

    def described(self) -> str:
        """``41k / 200k``, or ``170k / 200k (near the limit)`` within the reserve."""
        return f"{self} (near the limit)" if self.near_limit else str(self)
