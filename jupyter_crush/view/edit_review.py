"""Accept all, beside the edits an answer's ``edit_cell`` calls wait to have reviewed in their
cells (the kernel's side is :mod:`jupyter_crush.kernel.edit_review`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping

from ..core.message import ToolCallPart
from .rows import ToolRow


class EditReview:
    """The edits waiting for review as last drawn, and who accepts them through the page."""

    def __init__(self) -> None:
        #: Accepts edit_cell's edits waiting for review, by call id, through the page (the
        #: kernel sets it; called from the click's thread).
        self.acceptor: Callable[[list[str]], None] | None = None
        #: The edits waiting for review as last drawn (call id -> cell id; loop thread).
        self.shown: dict[str, str] = {}

    def accept_all(self) -> None:
        """Accept all (any thread): the edits drawn as waiting, accepted in their cells."""
        waiting = list(self.shown)
        if waiting and self.acceptor is not None:
            self.acceptor(waiting)


def waiting_edits(rows: Iterable[ToolRow], calls: Mapping[str, ToolCallPart]) -> dict[str, str]:
    """The edit_cell calls among ``rows`` waiting for the user's review: call id -> the
    cell's id (``"?"`` when the call's arguments name none)."""
    pending = {}
    for row in rows:
        if row.name == "edit_cell" and row.state == "running":
            try:
                cell = json.loads(calls[row.call_id].input).get("cell_id")
            except (ValueError, AttributeError):
                cell = None
            pending[row.call_id] = str(cell or "?")
    return pending
