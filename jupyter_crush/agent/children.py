"""Sub-agents: turns in sessions of their own that a tool call of a running turn starts.

A child turn is an ordinary turn of the same agent (the same dispatch, records, requests and
spending checks), in a session linked to its parent's session and tool call. What ties the
two together lives here:

- the links, so a cancel of the parent reaches each child at once, from any thread
  (:class:`ChildSessions`, read by ``SessionAgent.cancel``);
- the child's events, forwarded into the parent turn's observers as
  :class:`~jupyter_crush.core.events.ChildEvent` (:class:`ChildObserver`), which also keeps
  what the child spent for the parent turn's total.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from ..core.events import ChildEvent, Finished, RunEvent
from ..core.message import Usage
from .dispatch import AgentStatus


class ChildSessions:
    """The child sessions running for each session's turn. Safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: dict[str, list[str]] = {}  # parent session id -> child session ids

    @contextlib.contextmanager
    def linked(self, parent_id: str, child_id: str) -> Iterator[None]:
        """Link ``child_id`` to ``parent_id`` for the duration of the block."""
        with self._lock:
            self._children.setdefault(parent_id, []).append(child_id)
        try:
            yield
        finally:
            with self._lock:
                children = self._children[parent_id]
                children.remove(child_id)
                if not children:
                    del self._children[parent_id]

    def left_out_of(self, status: AgentStatus) -> AgentStatus:
        """``status`` without the children's sessions: each is part of its parent's run."""
        with self._lock:
            children = {child for linked in self._children.values() for child in linked}
        if not children:
            return status
        running = [session for session in status.running if session not in children]
        queued = {s: n for s, n in status.queued.items() if s not in children}
        return AgentStatus(running, queued)

    def cancel(self, parent_id: str, cancel: Callable[[str], None]) -> None:
        """Pass a cancel of ``parent_id`` on to its running children (and theirs)."""
        with self._lock:
            children = list(self._children.get(parent_id, ()))
        for child_id in children:
            cancel(child_id)


class ChildObserver:
    """Forwards a child turn's events to its parent's observers and keeps its spend."""

    def __init__(
        self, forward: Callable[[RunEvent], None], call_id: str, session_id: str, task: str
    ) -> None:
        self._forward = forward
        self._call_id = call_id
        self._session_id = session_id
        self._task = task
        self.finished: Finished | None = None

    def on_event(self, event: RunEvent) -> None:
        if isinstance(event, Finished):
            self.finished = event
        self._forward(ChildEvent(self._call_id, self._session_id, self._task, event))

    def spent(self) -> tuple[Usage, float | None] | None:
        """What the child's requests cost, once it finished; None when it sent none."""
        finished = self.finished
        if finished is None or (not finished.usage.total_tokens and finished.cost is None):
            return None
        return finished.usage, finished.cost
