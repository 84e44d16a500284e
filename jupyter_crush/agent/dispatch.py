"""Dispatch: which prompt of a session runs, waits or stops, and when.

One prompt's life::

    accept ──► enter() decides, under the session's lock, exactly one of:
       ├─ cancel-on-entry : a cancel covers this accept → the canceled turn is recorded,
       │                    no model call
       ├─ queued          : the session is busy → wait in the session's queue
       └─ active          : the turn is the session's active turn before the lock is released
                            (its task is started right after, outside the lock)
    active ──► the turn's steps (agent.py); between steps, fold() lets queued prompts join
    the running turn ──► the task ends ──► handoff: under the lock, drop the queued prompts
    a cancel covers (each recorded as a canceled turn) and make the next one active

Cancels are *sequence marks*: every accept takes the session's next sequence number and a
cancel covers the prompts accepted at or before it, never one accepted after it.

The invariants, each kept in one place below (search for its name):

- NEVER-LOST: a cancel landing in any window (accepted, queued, active, the handoff, the
  instant between a turn becoming active and its task existing) stops that prompt.
- IDLE-NO-OP: a cancel on an idle session changes nothing and keeps no state.
- COVERS-EARLIER: a cancel covers exactly the prompts accepted at or before it.
- ACCEPTS-RETURN: the accept count returns to zero on every path, and an AcceptedRun is
  consumed once, by the session and agent that issued it.
- NO-FOLD-INTO-COVERED: queued prompts never join a turn a cancel covers; the handoff
  takes them.
- ONE-RECORD: every accepted prompt ends in exactly one terminal record — dropped queued
  prompts included, and whatever the store or the observers raise.
- HANDOFF-ALWAYS: when the active turn's task ends the session moves on (next prompt, or
  idle), whatever the store or the observers raise; turns stranded on an event loop that
  was closed are recorded and released the next time the session is used.
- NO-REENTRY: nothing that can call back into the agent (task creation, the agent's
  finish, observers, listeners) runs while a session lock is held, so an eager task
  factory or an observer that cancels cannot deadlock the loop's thread.
- NOTHING-STARTS-WHEN-COVERED: once a cancel covers a turn, nothing new starts for it: no
  tool run, no permission prompt, no model request (the next step, the request after a
  summary), no summary stored, no cell inserted, no MCP call, no file written. A cancel
  from another thread raises the mark at once but its ``task.cancel()`` lands a loop
  iteration later, after whatever the turn was awaiting may have completed (a permission
  answered Allow, a summary streamed to its end, an MCP server restarted); so each side
  effect is preceded by :func:`stop_if_covered`, after the last ``await`` before it (tools
  reach it as ``ToolContext.stop_if_covered``). A tool call stopped so gets its error
  result like any other canceled call (records.py). A sub-agent's turn (the ``agent``
  tool, agent/children.py) is a turn of its own session: the cancel that covers its parent
  covers it at once (``SessionAgent.cancel`` passes it on, from the same thread), and one
  that misses the child being linked is passed on by ``run_child``, so the child ends
  canceled on entry.

Threads: the loop runs on one thread, but ``accept``, ``release`` and ``cancel`` may come
from another (ipykernel 7 delivers widget clicks on a subshell thread). The state of each
session is guarded by its own ``threading.Lock``; a cancel reaches the loop through
``call_soon_threadsafe``. ``enter``, ``fold``, the handoff and ``shutdown`` run on the
loop's thread.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.message import CANCELED_MESSAGE, FinishReason
from .calls import AcceptedRun

if TYPE_CHECKING:
    from ..core.events import RunObserver
    from .calls import RunResult, SessionAgentCall
    from .records import TurnRecords


@dataclass(frozen=True)
class AgentStatus:
    running: list[str]
    queued: dict[str, int]


@dataclass(eq=False)
class Turn:
    """One prompt from accept to its terminal record.

    Dispatch reads ``seq`` and ``state`` and sets ``task``; the rest belongs to the agent.
    """

    call: SessionAgentCall
    seq: int
    state: SessionState
    loop: asyncio.AbstractEventLoop
    records: TurnRecords
    task: asyncio.Task[None] | None = None
    observers: list[RunObserver] = field(default_factory=list)
    result: RunResult | None = None  # set once, by the agent's finish: the turn is terminal

    @property
    def session_id(self) -> str:
        return self.call.session_id


@dataclass(eq=False)
class SessionState:
    # The session's lock. It makes these transitions atomic against cancel(): accept
    # (seq assignment), the accepted → cancel-on-entry | queued | active decision, the fold
    # of queued prompts into a running turn, and the handoff from a finished turn to the next
    # queued one. Never held across I/O, an await, or a call out of this module.
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Last sequence number handed out by accept.
    accept_seq: int = 0
    # Open accept reservations: prompts accepted whose enter() has not decided yet.
    open_accepts: int = 0
    # Prompts with seq <= cancel_mark are covered by a cancel; raised only when a cancel finds
    # something to stop, so an idle cancel never reaches a later prompt.
    cancel_mark: int = 0
    # The active turn. Set under the lock by the decision or the handoff; its task, the cancel
    # handle, is registered by _start just after (None in between: see NEVER-LOST).
    active: Turn | None = None
    # Prompts waiting behind the active turn, in order of arrival.
    queue: deque[Turn] = field(default_factory=deque)


class Entry(enum.Enum):
    """enter()'s decision for an accepted prompt."""

    CANCELED = "cancel-on-entry"
    QUEUED = "queued"
    ACTIVE = "active"


STRANDED_MESSAGE = "Stopped: the event loop it ran on was closed"


class Dispatcher:
    """The dispatch state of every session of one agent, and each transition of it."""

    def __init__(
        self,
        drive: Callable[[Turn], Coroutine[Any, Any, None]],
        finish: Callable[[Turn, FinishReason, str], None],
        status_changed: Callable[[], None],
    ) -> None:
        # The agent's side: run the active turn's steps, write a turn's terminal record (once
        # per turn, never raising; later calls do nothing), and tell listeners of a change.
        self._drive = drive
        self._finish = finish
        self._status_changed = status_changed
        # Guards creation of entries in _sessions so every thread sees one state per session.
        # Entries are made only by accept (IDLE-NO-OP: queries and cancels never add one).
        self._sessions_lock = threading.Lock()
        self._sessions: dict[str, SessionState] = {}

    # -- any thread ----------------------------------------------------------------------------

    def accept(self, session_id: str) -> AcceptedRun:
        """Reserve the next prompt of ``session_id``: from now on a cancel reaches it."""
        state = self.state(session_id)
        with state.lock:
            state.accept_seq += 1
            state.open_accepts += 1
            return AcceptedRun(self, session_id, state.accept_seq)

    def release(self, accepted: AcceptedRun) -> None:
        state = self.state(accepted.session_id)
        with state.lock:
            _release_locked(state, accepted)

    def check(self, accepted: AcceptedRun, session_id: str) -> None:
        """ACCEPTS-RETURN: refuse a reservation this agent cannot consume for ``session_id``."""
        if accepted._dispatcher is not self:
            raise ValueError("This AcceptedRun was taken from another agent; accept on this one")
        if accepted.session_id != session_id:
            raise ValueError(
                f"This AcceptedRun is for another session ({accepted.session_id!r}); "
                f"call begin_accepted({session_id!r})"
            )
        if accepted._closed:
            raise ValueError("This AcceptedRun was already used or closed; accept each prompt")

    def cancel(self, session_id: str) -> None:
        """Cover every prompt of ``session_id`` accepted so far and stop the active one."""
        state = self._sessions.get(session_id)
        if state is None:
            return  # IDLE-NO-OP: never accepted here, nothing to stop
        self._reap(state)
        with state.lock:
            active = state.active
            # The queue is never non-empty without an active turn (enter queues only behind
            # one; the handoff activates the next), so `active is None` covers it.
            if active is None and not state.open_accepts:
                return  # IDLE-NO-OP: nothing to stop, and nothing may linger for a later prompt
            # COVERS-EARLIER: covers the active turn, the queue and accepts not yet decided,
            # nothing accepted later. The queue itself is dropped (and recorded) by the
            # handoff when the active turn ends.
            state.cancel_mark = state.accept_seq
            task = active.task if active is not None else None
        if task is not None:
            # NEVER-LOST: no task yet means _start has not registered it; it reads the mark
            # after registering and delivers this cancel itself.
            call_on_loop(active.loop, task.cancel)

    def session_ids(self) -> list[str]:
        with self._sessions_lock:
            return list(self._sessions)

    def is_busy(self, session_id: str) -> bool:
        state = self._sessions.get(session_id)
        if state is None:
            return False
        self._reap(state)
        with state.lock:
            return state.active is not None

    def queued(self, session_id: str) -> int:
        state = self._sessions.get(session_id)
        if state is None:
            return 0
        self._reap(state)
        with state.lock:
            return len(state.queue)

    def status(self) -> AgentStatus:
        with self._sessions_lock:
            states = list(self._sessions.items())
        running, queued = [], {}
        for session_id, state in states:
            with state.lock:
                if state.active is not None and not state.active.loop.is_closed():
                    running.append(session_id)
                    if state.queue:
                        queued[session_id] = len(state.queue)
        return AgentStatus(running, queued)

    def state(self, session_id: str) -> SessionState:
        state = self._sessions.get(session_id)
        if state is None:
            with self._sessions_lock:
                state = self._sessions.setdefault(session_id, SessionState())
        return state

    # -- the loop's thread ---------------------------------------------------------------------

    def enter(self, turn: Turn, accepted: AcceptedRun) -> tuple[Entry, int]:
        """Decide the accepted ``turn``: canceled on entry, queued (at a 1-based position),
        or active (its task started). Consumes ``accepted``."""
        state = turn.state
        self._reap(state)
        with state.lock:
            _release_locked(state, accepted)  # ACCEPTS-RETURN
            if turn.seq <= state.cancel_mark:
                return Entry.CANCELED, 0
            if state.active is not None:
                state.queue.append(turn)
                return Entry.QUEUED, len(state.queue)
            state.active = turn
        self._start(turn)
        return Entry.ACTIVE, 0

    def fold(self, turn: Turn) -> list[Turn] | None:
        """Between steps of the active ``turn``: the queued prompts that join it, or None when
        a cancel covers ``turn`` (which must then stop)."""
        state = turn.state
        with state.lock:
            if turn.seq <= state.cancel_mark:
                # NO-FOLD-INTO-COVERED: prompts queued behind a covered turn stay queued; the
                # handoff drops those the cancel covers and runs the others.
                return None
            # Queued prompts were accepted after `turn`, so no cancel covers them either.
            folded = list(state.queue)
            state.queue.clear()
        return folded

    def shutdown(self, detail: str) -> None:
        """Cover every prompt accepted so far and record every turn in flight or queued."""
        with self._sessions_lock:
            states = list(self._sessions.values())
        for state in states:
            with state.lock:
                state.cancel_mark = state.accept_seq
                active, queued = state.active, list(state.queue)
                state.queue.clear()
            for turn in [active, *queued]:
                if turn is None:
                    continue
                self._finish(turn, FinishReason.CANCELED, detail)
                if turn.task is not None and not turn.task.done():
                    turn.task.cancel()

    def _start(self, turn: Turn) -> None:
        """Create the task of ``turn``, just made active, and register it as its cancel handle.

        NO-REENTRY: created outside the lock, since an eager task factory runs the first step
        inside create_task. NEVER-LOST: a cancel that found no task yet has raised the mark;
        it is read here, under the lock, after the task is registered.
        """
        task = turn.loop.create_task(self._drive(turn), name=f"crush:{turn.session_id}")
        task.add_done_callback(lambda _task: self._handoff(turn))
        with turn.state.lock:
            turn.task = task
            stop = turn.seq <= turn.state.cancel_mark
        if stop:
            task.cancel()

    def _handoff(self, turn: Turn) -> None:
        """The active turn's task ended: hand the session to the next queued prompt.

        HANDOFF-ALWAYS: a done-callback; nothing may escape it.
        """
        state = turn.state
        # A task canceled before it started never ran its own handler. ONE-RECORD: finish
        # never raises, so the transition below always happens.
        self._finish(turn, FinishReason.CANCELED, CANCELED_MESSAGE)
        with state.lock:
            dropped = [t for t in state.queue if t.seq <= state.cancel_mark]
            remaining = [t for t in state.queue if t.seq > state.cancel_mark]
            state.queue = deque(remaining[1:])
            following = state.active = remaining[0] if remaining else None
        if following is not None:
            self._start(following)
        for queued in dropped:
            # Recorded, not destroyed: the prompt stays in the transcript and can be re-run.
            self._finish(queued, FinishReason.CANCELED, CANCELED_MESSAGE)
        self._status_changed()

    def _reap(self, state: SessionState) -> None:
        """HANDOFF-ALWAYS: record and release the turns stranded on a closed event loop.

        A loop closed while a turn was active (``asyncio.run`` returning with a prompt
        queued, the handoff having started it on the closing loop) never runs that turn
        again; the session would stay busy on every later loop.
        """
        with state.lock:
            active = state.active
            if active is None or not active.loop.is_closed():
                return
            stranded = [active, *state.queue]
            state.active = None
            state.queue.clear()
        for turn in stranded:
            self._finish(turn, FinishReason.CANCELED, STRANDED_MESSAGE)
        self._status_changed()


def covered(turn: Turn) -> bool:
    """Has a cancel covered ``turn``? Read without the lock: ``cancel_mark`` only grows, so a
    stale read merely leaves the stop to the ``task.cancel()`` already on its way."""
    return turn.seq <= turn.state.cancel_mark


def stop_if_covered(turn: Turn) -> None:
    """NOTHING-STARTS-WHEN-COVERED, the rule's one place: raise ``CancelledError`` when a
    cancel covers ``turn``. Call it immediately before a side effect, with no ``await``
    between the two: then a cancel either stops the effect here or lands after it started."""
    if covered(turn):
        raise asyncio.CancelledError


def _release_locked(state: SessionState, accepted: AcceptedRun) -> None:
    if not accepted._closed:
        accepted._closed = True
        state.open_accepts -= 1


def call_on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], Any]) -> None:
    """Run ``callback`` on ``loop``: now when already on its thread, else via the loop."""
    if _running_loop() is loop:
        callback()
    elif not loop.is_closed():
        loop.call_soon_threadsafe(callback)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop running on this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
