"""A tool call as a run view shows it: one row, its texts clipped."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.markdown import pretty_json
from ..core.message import ToolCallPart, ToolResultPart

#: Longest tool argument / result shown in the view; the store keeps all of it.
_TOOL_TEXT_LIMIT = 4000


@dataclass(frozen=True)
class ToolRow:
    """One tool call as a view shows it (texts clipped)."""

    call_id: str
    name: str
    state: str
    arguments: str
    result: str | None
    #: The result's images as <img> thumbnails (HTML made here, texts escaped): what the
    #: model was shown.
    images: str = ""
    #: The task, when the row heads a sub-agent's section (its state is then the child's).
    label: str = ""

    @property
    def title(self) -> str:
        label = f" · {self.label}" if self.label else ""
        return f"tool {self.name}{label} · {self.state}"


def tool_row(
    call: ToolCallPart, result: ToolResultPart | None, waiting: bool = False, images: str = ""
) -> ToolRow:
    """One tool call as a view shows it; ``waiting``: a permission prompt is open."""
    if result is None and not call.finished:
        state = "streaming arguments"
    elif result is None:
        state = "waiting for permission" if waiting else "running"
    else:
        state = "error" if result.is_error else "ok"
    return ToolRow(
        call.id,
        call.name,
        state,
        _clip(pretty_json(call.input)),
        None if result is None else _clip(result.content),
        images,
    )


def _clip(text: str) -> str:
    if len(text) <= _TOOL_TEXT_LIMIT:
        return text
    return text[:_TOOL_TEXT_LIMIT] + f"\n… ({len(text) - _TOOL_TEXT_LIMIT} more characters)"
