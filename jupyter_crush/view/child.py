"""What a run view shows of a sub-agent's turn: the ``agent`` tool's child run.

The child's events reach the parent's view as ``ChildEvent`` s of the tool call that runs it;
:class:`ChildRun` keeps what they say (its answer, its tool calls, how it ended), and the
view shows it inside that call's row, collapsed, under a one-line heading: the task and the
child's state.
"""

from __future__ import annotations

import html

from ..core.events import Delta, Finished, RunEvent, Started, ToolFinished, ToolStarted
from ..core.message import FinishReason, Message, Role, ToolCallPart, ToolResultPart, Usage
from .rows import ToolRow, tool_row

#: Longest task shown in a sub-agent's heading.
HEADING_CHARS = 80


class ChildRun:
    """One sub-agent's turn as a view shows it (loop thread)."""

    def __init__(self, task: str, session_id: str) -> None:
        self.task = task
        self.session_id = session_id
        self.phase = "starting"  # starting | running | done | canceled | error
        self.finish_message = ""
        self.usage = Usage()
        self.messages: dict[str, Message] = {}  # its assistant messages, by id
        self.tool_calls: dict[str, ToolCallPart] = {}
        self.tool_results: dict[str, ToolResultPart] = {}

    def on_event(self, event: RunEvent) -> None:
        if isinstance(event, Started):
            self.phase = "running"
        elif isinstance(event, Delta) and event.message.role is Role.ASSISTANT:
            self.messages[event.message.id] = event.message
            for call in event.message.tool_calls:
                self.tool_calls[call.id] = call
        elif isinstance(event, ToolStarted):
            self.tool_calls[event.call.id] = event.call
        elif isinstance(event, ToolFinished):
            self.tool_calls[event.call.id] = event.call
            self.tool_results[event.call.id] = event.result
        elif isinstance(event, Finished):
            self.usage = event.usage
            self.finish_message = event.message
            self.phase = {FinishReason.CANCELED: "canceled", FinishReason.ERROR: "error"}.get(
                event.reason, "done"
            )

    @property
    def answer(self) -> str:
        return "\n\n".join(m.text for m in self.messages.values() if m.text)

    @property
    def heading(self) -> str:
        """The task's first line, clipped."""
        first = next((line.strip() for line in self.task.splitlines() if line.strip()), "")
        return first if len(first) <= HEADING_CHARS else first[: HEADING_CHARS - 1] + "…"

    @property
    def status(self) -> str:
        """``sub-agent running``; ended: how, with its tokens."""
        text = f"sub-agent {self.phase}"
        if self.phase == "error" and self.finish_message:
            text += f": {self.finish_message}"
        if self.usage.total_tokens:
            text += f", {self.usage.total_tokens} tokens"
        return text

    def rows(self) -> list[ToolRow]:
        """Its tool calls as shown, in call order."""
        return [tool_row(call, self.tool_results.get(i)) for i, call in self.tool_calls.items()]

    def html(self, *, answer: bool = True) -> str:
        """Its section under the call's row: its session, its tool calls one line each and,
        with ``answer``, its text so far."""
        rows = "".join(f"<li>{html.escape(row.title)}</li>" for row in self.rows())
        text = f"<pre>{html.escape(self.answer)}</pre>" if answer and self.answer else ""
        return f"<b>sub-agent</b> (session {self.session_id[:8]})<ul>{rows}</ul>{text}"
