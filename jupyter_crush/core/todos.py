"""The plan the ``todos`` tool keeps: its items, their statuses, and how a view reads the
latest plan from a call's result."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .markdown import markdown_literal

#: A todo's statuses, in the order the work moves through them.
TODO_STATUSES = ("pending", "in_progress", "done")

#: How the static answer marks each status.
PLAN_MARKS = {"pending": "○", "in_progress": "▸", "done": "✓"}

#: The metadata key of a ``todos`` result that holds the plan as written.
PLAN_KEY = "todos"


@dataclass(frozen=True)
class Todo:
    content: str  # what to do, imperative ("Load the data")
    status: str  # one of TODO_STATUSES
    active_form: str = ""  # shown while in progress ("Loading the data")

    @property
    def shown(self) -> str:
        """What a view shows for it: the active form while in progress."""
        return (
            self.active_form if self.status == "in_progress" and self.active_form else self.content
        )


def plan_metadata(todos: Iterable[Todo]) -> dict[str, Any]:
    """A ``todos`` result's metadata: the plan, JSON-ready for the transcript."""
    return {PLAN_KEY: [asdict(todo) for todo in todos]}


def plan_from_metadata(metadata: Mapping[str, Any]) -> list[Todo] | None:
    """The plan a successful ``todos`` result carries, or ``None`` if it carries none."""
    items = metadata.get(PLAN_KEY)
    if not isinstance(items, list):
        return None
    return [
        Todo(
            str(item.get("content", "")),
            str(item.get("status", "")),
            str(item.get("active_form", "")),
        )
        for item in items
        if isinstance(item, dict)
    ]


def plan_counts(todos: Iterable[Todo]) -> dict[str, int]:
    """How many items have each status."""
    counts = dict.fromkeys(TODO_STATUSES, 0)
    for todo in todos:
        counts[todo.status] = counts.get(todo.status, 0) + 1
    return counts


def plan_markdown(todos: list[Todo], *, stopped: bool = False) -> str:
    """The plan as Markdown, for the static answer; a stopped run says where it stood."""
    where = f"{plan_counts(todos)['done']} of {len(todos)} done"
    lines = [f"**Plan** ({'stopped with ' if stopped else ''}{where})", ""]
    for todo in todos:
        text = markdown_literal(todo.shown)
        if todo.status == "in_progress":
            text = f"**{text}**"
        elif todo.status == "done":
            text = f"~~{text}~~"
        lines.append(f"- {PLAN_MARKS.get(todo.status, '')} {text}")
    return "\n".join(lines)
