"""What a tool changed in the current turn, told as it changes it, so the turn can be undone.

A tool reaches the turn's log as ``ToolContext.changes`` and reports each change *before*
making it (the previous state is what undo restores):

- ``before_code(namespace, code)``: right before code runs against a namespace (``python``,
  ``run_cell``): the log keeps the previous binding of each name the code can touch;
- ``file_changed(path, previous)``: before a file is written, with its bytes, or ``None``
  when it did not exist (only the first report per file and turn counts);
- ``cell_inserted(cell_id)``: a cell the turn put into the notebook;
- ``cell_edited(cell_id, before, after)``: an edit of an existing cell the user accepted.

Outside a turn (a test, a replay) the context carries :data:`NO_CHANGES`, which keeps nothing.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["NO_CHANGES", "NoChanges", "TurnChanges"]


class TurnChanges(Protocol):
    """The current turn's change log, as tools see it."""

    def before_code(self, namespace: dict[str, Any], code: str) -> None:
        """``code`` is about to run against ``namespace``: keep what it can change."""
        ...

    def file_changed(self, path: str, previous: bytes | None) -> None:
        """The file at ``path`` (absolute) is about to change; ``None``: it does not exist."""
        ...

    def cell_inserted(self, cell_id: str) -> None:
        """The turn inserted the cell ``cell_id`` into the notebook."""
        ...

    def cell_edited(self, cell_id: str, before: str, after: str) -> None:
        """The user accepted the turn's edit of cell ``cell_id`` from ``before`` to ``after``."""
        ...


class NoChanges:
    """The log of no turn: every report is dropped."""

    def before_code(self, namespace: dict[str, Any], code: str) -> None:
        pass

    def file_changed(self, path: str, previous: bytes | None) -> None:
        pass

    def cell_inserted(self, cell_id: str) -> None:
        pass

    def cell_edited(self, cell_id: str, before: str, after: str) -> None:
        pass


NO_CHANGES: TurnChanges = NoChanges()
