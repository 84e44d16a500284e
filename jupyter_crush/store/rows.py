"""History rows: what ``crush.history()`` shows of each message, one session's in columns.

A message's row (:class:`MessageRow`) holds its columns of the history table (less the
session's own: id, title, parent) and what a search looks in. :class:`SessionRows` holds a
session's rows as columns, in message order, which is how the history table is assembled and
how :mod:`jupyter_crush.store.row_cache` keeps them on disk.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from ..core.message import ImagePart, Message, ReasoningPart, TextPart


class MessageRow(NamedTuple):
    """One message's row; its fields are the columns of :class:`SessionRows`."""

    id: str
    created: float  # Unix time; the table's ``time`` is it in local time
    role: str
    model: str
    text: str
    reasoning: str
    tool_calls: str  # compact_tool_calls
    tool_results: str  # compact_tool_results
    images: tuple[str, ...]  # image_path of each image, as str
    finish_reason: str | None
    finish_message: str
    input_tokens: int
    output_tokens: int
    cost: float | None
    searched: str | None  # searched_text before case folding; None when it is ``text``


#: SessionRows' columns, in MessageRow's order.
ROW_FIELDS = MessageRow._fields


def row_of(message: Message) -> MessageRow:
    """The row of ``message`` (whose images know their directory if stored)."""
    finish = message.finish
    text = message.text
    searched = _searched(message)
    return MessageRow(
        message.id,
        message.created_at,
        str(message.role),
        message.model,
        text,
        message.reasoning,
        compact_tool_calls(message),
        compact_tool_results(message),
        tuple(str(image_path(image)) for image in message.images),
        str(finish.reason) if finish is not None else None,
        finish.message if finish is not None else "",
        message.usage.input_tokens,
        message.usage.output_tokens,
        message.cost,
        None if searched == text else searched,
    )


class SessionRows:
    """One session's message rows as columns (lists, by the names of :data:`ROW_FIELDS`),
    in message order. Shared by every caller: read it, never change it."""

    def __init__(self, columns: dict[str, list[Any]]) -> None:
        self.columns = columns
        self._folded: list[str] | None = None
        self._times: list[datetime] | None = None

    @classmethod
    def of(cls, rows: Sequence[MessageRow]) -> SessionRows:
        if not rows:
            return cls({name: [] for name in ROW_FIELDS})
        return cls(dict(zip(ROW_FIELDS, map(list, zip(*rows, strict=True)), strict=True)))

    def __len__(self) -> int:
        return len(self.columns["id"])

    def folded(self) -> list[str]:
        """What a search looks in, per message: text and reasoning parts one a line,
        case-folded (:func:`searched_text`); computed at the first search."""
        if self._folded is None:
            texts, searched = self.columns["text"], self.columns["searched"]
            self._folded = [
                (text if other is None else other).casefold()
                for text, other in zip(texts, searched, strict=True)
            ]
        return self._folded

    def times(self) -> list[datetime]:
        """The ``time`` column: each message's creation in local time."""
        if self._times is None:
            self._times = [datetime.fromtimestamp(t) for t in self.columns["created"]]
        return self._times


def searched_text(message: Message) -> str:
    """What a search looks in: the text and reasoning parts, one a line, case-folded."""
    return _searched(message).casefold()


def _searched(message: Message) -> str:
    return "\n".join(p.text for p in message.parts if isinstance(p, TextPart | ReasoningPart))


def compact_tool_calls(message: Message) -> str:
    """``name(arguments)`` per call, arguments as compact JSON, joined by ``; ``."""
    return "; ".join(f"{c.name}({compact_arguments(c.input)})" for c in message.tool_calls)


def compact_tool_results(message: Message) -> str:
    """``name: content`` per result (``name (error): ...`` for failures), joined by ``; ``."""
    return "; ".join(
        f"{r.name}{' (error)' if r.is_error else ''}: {r.content}" for r in message.tool_results
    )


def compact_arguments(text: str) -> str:
    """Tool call arguments as compact JSON (as streamed when they are not valid JSON)."""
    try:
        return json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        return text  # arguments cut off mid-stream (a canceled call): shown as streamed


def image_path(image: ImagePart) -> Path:
    """Where a stored image's file is (its name alone for an image not yet stored)."""
    return image.path_in(image.directory) if image.directory is not None else Path(image.file)
