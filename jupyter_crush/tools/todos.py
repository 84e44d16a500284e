"""The ``todos`` tool: the model writes and updates a short plan the user watches.

Crush's ``todos`` semantics: each call sends the whole list, which replaces the previous
one; an item has what to do, its status (pending, in progress, done) and, while in
progress, what is being done ("Loading the data"). The result tells the model the counts.
The plan itself goes back in the result's metadata, which the run view shows live above the
answer and the transcript keeps with every version of the list (each is one call).
"""

from __future__ import annotations

from typing import Any

from ..core.model import ToolSpec
from ..core.todos import TODO_STATUSES, Todo, plan_counts, plan_metadata
from ..core.tools import Tool, ToolContext, ToolResult, list_argument

#: Most items a plan holds: it is a short plan the user reads at a glance.
MAX_TODOS = 20
MAX_TODO_CHARS = 200

#: Statuses other agents' todo tools use, taken as ours.
_STATUS_ALIASES = {"completed": "done", "complete": "done", "in-progress": "in_progress"}

DESCRIPTION = (
    "Write and update a short plan for multi-step work; the user watches it live above "
    "your answer. Send the whole list every time: it replaces the previous one. Each item "
    "has `content` (what to do, imperative: 'Load the sales data'), `status` (pending, "
    "in_progress or done) and, optionally, `active_form` (present continuous: 'Loading the "
    "sales data'), shown while the item is in progress. Keep exactly one item in_progress "
    "while you work; mark it done as soon as it is finished, then start the next. Skip the "
    "plan for simple or single-step tasks."
)

_ITEM_SCHEMA = {
    "type": "object",
    "properties": {
        "content": {"type": "string", "description": "What needs to be done (imperative)."},
        "status": {"type": "string", "enum": list(TODO_STATUSES)},
        "active_form": {
            "type": "string",
            "description": "Present continuous form, shown while in progress.",
        },
    },
    "required": ["content", "status"],
}


def parse_todos(arguments: dict[str, Any]) -> list[Todo] | str:
    """The plan in ``arguments``, or a one-line error saying what to fix."""
    items = list_argument(arguments.get("todos"))
    if not isinstance(items, list):
        return "todos: 'todos' must be a list of {content, status} objects"
    if len(items) > MAX_TODOS:
        return f"todos: the plan has {len(items)} items; keep it to {MAX_TODOS} (merge steps)"
    todos = []
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict):
            return f"todos: item {n} must be an object with 'content' and 'status'"
        content = item.get("content")
        if not isinstance(content, str) or not content.strip():
            return f"todos: item {n} needs a non-empty 'content' string"
        status = item.get("status")
        status = _STATUS_ALIASES.get(status, status) if isinstance(status, str) else status
        if status not in TODO_STATUSES:
            return (
                f"todos: item {n} ({content.strip()[:40]!r}) has status {item.get('status')!r}; "
                f"use one of {', '.join(TODO_STATUSES)}"
            )
        active = item.get("active_form") or ""
        if not isinstance(active, str):
            return f"todos: item {n}'s 'active_form' must be a string"
        if max(len(content), len(active)) > MAX_TODO_CHARS:
            return f"todos: item {n} is longer than {MAX_TODO_CHARS} characters; shorten it"
        todos.append(Todo(content.strip(), status, active.strip()))
    return todos


async def run_todos(arguments: dict[str, Any], _context: ToolContext) -> ToolResult:
    todos = parse_todos(arguments)
    if isinstance(todos, str):
        return ToolResult(todos, is_error=True)
    counts = plan_counts(todos)
    return ToolResult(
        f"Plan updated: {counts['pending']} pending, {counts['in_progress']} in progress, "
        f"{counts['done']} done. Keep it current as you work: mark each item done as soon "
        "as it is finished, and go on with the next.",
        metadata=plan_metadata(todos),
    )


def todos_tool() -> Tool:
    spec = ToolSpec(
        name="todos",
        description=DESCRIPTION,
        parameters={
            "type": "object",
            "properties": {
                "todos": {
                    "type": "array",
                    "items": _ITEM_SCHEMA,
                    "description": "The whole updated plan.",
                }
            },
            "required": ["todos"],
        },
    )
    return Tool(spec=spec, run=run_todos)
