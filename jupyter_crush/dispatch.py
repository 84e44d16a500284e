"""Dispatch: which prompt of a session runs, waits or stops, and when.

One prompt's life::

    accept ──► enter() decides, under the session's lock, exactly one of:
       ├─ cancel-on-entry : a cancel covers this accept → the canceled turn is recorded,
       │                    no model call
       ├─ queued          : the session is busy → wait in the session's queue
       └─ active          : the turn's task is registered as the cancel handle before the
                            lock is released
    active ──► the turn's steps (agent.py); between steps, fold() lets queued prompts join
    the running turn ──► the task ends ──► handoff: under the lock, drop the queued prompts
    a cancel covers (each recorded as a canceled turn) and make the next one active

Cancels are *sequence marks*: every accept takes the session's next sequence number and a
cancel covers the prompts accepted at or before it, never one accepted after it. A cancel
on an idle session changes nothing.

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

from .message import CANCELED_MESSAGE, FinishReason

if TYPE_CHECKING:
    from .agent import RunObserver, RunResult, SessionAgentCall
    from .records import TurnRecords


class AcceptedRun:
    """One accept reservation taken by :meth:`SessionAgent.begin_accepted`.

    ``close`` releases it; it is idempotent, and ``AcceptedRun.close(None)`` is a no-op so
    callers holding an optional reservation need no check.
    """

    __slots__ = ("_closed", "_dispatcher", "seq", "session_id")

    def __init__(self, dispatcher: Dispatcher, session_id: str, seq: int) -> None:
        self._dispatcher = dispatcher
        self.session_id = session_id
        self.seq = seq
        self._closed = False  # guarded by the session's lock

    def close(self) -> None:
        if self is None:
            return
        self._dispatcher.release(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<AcceptedRun session={self.session_id!r} seq={self.seq} {state}>"


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
    # The active turn: its task is the cancel handle, registered before the lock is released.
    active: Turn | None = None
    # Prompts waiting behind the active turn, in order of arrival.
    queue: deque[Turn] = field(default_factory=deque)


class Entry(enum.Enum):
    """enter()'s decision for an accepted prompt."""

    CANCELED = "cancel-on-entry"
    QUEUED = "queued"
    ACTIVE = "active"


class Dispatcher:
    """The dispatch state of every session of one agent, and each transition of it."""

    def __init__(
        self,
        drive: Callable[[Turn], Coroutine[Any, Any, None]],
        finish: Callable[[Turn, FinishReason, str], None],
        status_changed: Callable[[], None],
    ) -> None:
        # The agent's side: run the active turn's steps, write a turn's terminal record (once
        # per turn; later calls do nothing), and tell listeners the status changed.
        self._drive = drive
        self._finish = finish
        self._status_changed = status_changed
        # Guards creation of entries in _sessions so every thread sees one state per session.
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

    def cancel(self, session_id: str) -> None:
        """Cover every prompt of ``session_id`` accepted so far and stop the active one."""
        state = self.state(session_id)
        with state.lock:
            active = state.active
            if active is None and not state.open_accepts and not state.queue:
                return  # idle: nothing to stop, and nothing may linger for a later prompt
            # Covers the active turn, the queue, and accepts not yet decided. The queue
            # itself is dropped (and recorded) by the handoff when the active turn ends.
            state.cancel_mark = state.accept_seq
        if active is not None and active.task is not None:
            call_on_loop(active.loop, active.task.cancel)

    def session_ids(self) -> list[str]:
        with self._sessions_lock:
            return list(self._sessions)

    def is_busy(self, session_id: str) -> bool:
        state = self.state(session_id)
        with state.lock:
            return state.active is not None

    def queued(self, session_id: str) -> int:
        state = self.state(session_id)
        with state.lock:
            return len(state.queue)

    def status(self) -> AgentStatus:
        with self._sessions_lock:
            states = list(self._sessions.items())
        running, queued = [], {}
        for session_id, state in states:
            with state.lock:
                if state.active is not None:
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
        or active. Consumes ``accepted``."""
        state = turn.state
        with state.lock:
            _release_locked(state, accepted)
            if turn.seq <= state.cancel_mark:
                return Entry.CANCELED, 0
            if state.active is not None:
                state.queue.append(turn)
                return Entry.QUEUED, len(state.queue)
            self._activate_locked(state, turn)
            return Entry.ACTIVE, 0

    def fold(self, turn: Turn) -> tuple[list[Turn], list[Turn]]:
        """Between steps of the active ``turn``: take its queue as (dropped, folded).

        Dropped prompts are covered by a cancel and must be recorded as canceled; folded
        ones join ``turn``.
        """
        state = turn.state
        with state.lock:
            dropped = [t for t in state.queue if t.seq <= state.cancel_mark]
            folded = [t for t in state.queue if t.seq > state.cancel_mark]
            state.queue.clear()
        return dropped, folded

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

    def _activate_locked(self, state: SessionState, turn: Turn) -> None:
        """Make ``turn`` the session's active turn. Caller holds ``state.lock``.

        The task is created (not yet started) and registered as the cancel handle before
        the lock is released, so a cancel arriving at any later instant finds it.
        """
        turn.task = turn.loop.create_task(self._drive(turn), name=f"crush:{turn.session_id}")
        turn.task.add_done_callback(lambda _task: self._handoff(state, turn))
        state.active = turn

    def _handoff(self, state: SessionState, turn: Turn) -> None:
        """The active turn's task ended: hand the session to the next queued prompt."""
        # A task canceled before it started never ran its own handler.
        self._finish(turn, FinishReason.CANCELED, CANCELED_MESSAGE)
        with state.lock:
            dropped = [t for t in state.queue if t.seq <= state.cancel_mark]
            remaining = [t for t in state.queue if t.seq > state.cancel_mark]
            state.queue = deque(remaining[1:])
            state.active = None
            if remaining:
                self._activate_locked(state, remaining[0])
        for queued in dropped:
            # Recorded, not destroyed: the prompt stays in the transcript and can be re-run.
            self._finish(queued, FinishReason.CANCELED, CANCELED_MESSAGE)
        self._status_changed()


def covered(turn: Turn) -> bool:
    """Has a cancel covered ``turn``? Read without the lock: ``cancel_mark`` only grows, so a
    stale read merely leaves the stop to the ``task.cancel()`` already on its way."""
    return turn.seq <= turn.state.cancel_mark


def _release_locked(state: SessionState, accepted: AcceptedRun) -> None:
    if not accepted._closed:
        accepted._closed = True
        state.open_accepts -= 1


def call_on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], Any]) -> None:
    """Run ``callback`` on ``loop``: now when already on its thread, else via the loop."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        callback()
    elif not loop.is_closed():
        loop.call_soon_threadsafe(callback)
