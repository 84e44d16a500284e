"""The session agent: accepted → (cancel-on-entry | queued | active) → done.

One prompt's life::

    begin_accepted ──► run() decides, under the session's dispatch lock, exactly one of:
       ├─ cancel-on-entry : a cancel covers this accept → record the canceled turn, no model call
       ├─ queued          : the session is busy → wait in the session queue
       └─ active          : the turn's task is registered as the cancel handle before the lock
                            is released
    active ──► stream steps (model → tool calls → results → …) ──► done:
       under the lock, drop the queued prompts a cancel covers (each recorded as a canceled
       turn) and make the next one active — the handoff leaves no window in which the
       session looks idle

Cancels are *sequence marks*: every accept takes the session's next sequence number and
``cancel`` covers the prompts accepted at or before it, never one accepted after it. A
cancel on an idle session changes nothing.

Threads: the loop runs on one thread, but ``cancel`` and ``begin_accepted`` may come from
another (ipykernel 7 delivers widget clicks on a subshell thread). The dispatch state is
guarded by a real ``threading.Lock`` and a cancel reaches the loop through
``call_soon_threadsafe``. Everything else — the store, the observers — is touched on the
loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .message import (
    CANCELED_MESSAGE,
    TERMINAL_REASONS,
    FinishReason,
    Message,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from .model import Model, StreamFinish, apply_event
from .store import TranscriptStore
from .tools import Decision, PermissionBroker, PermissionRequest, Tool, ToolContext, ToolResult

log = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 25
#: Characters of conversation sent with each request (about 4 per token, so ~100k tokens).
#: Older turns beyond it are left out of the request, oldest first, so a long session does
#: not outgrow the model's context window; the transcript keeps them all.
DEFAULT_HISTORY_CHARS = 400_000
#: The same tool call (name and arguments) this many times in one turn ends the turn.
REPEATED_CALL_LIMIT = 3
TOOL_CANCELED = "Tool call canceled: the run was stopped before it finished"
TOOL_FAILED = "Tool call not completed: the run failed before it finished"


# -- events an observer (the run widget) receives ---------------------------------------------


@dataclass(frozen=True)
class Queued:
    position: int


@dataclass(frozen=True)
class Folded:
    """A queued prompt joined the session's running turn; that turn's events follow."""


@dataclass(frozen=True)
class Started:
    user_message_id: str


@dataclass(frozen=True)
class Delta:
    message: Message


@dataclass(frozen=True)
class ToolStarted:
    call: ToolCallPart


@dataclass(frozen=True)
class ToolFinished:
    call: ToolCallPart
    result: ToolResultPart


@dataclass(frozen=True)
class PermissionAsked:
    request: PermissionRequest


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    message: str = ""
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None


RunEvent = (
    Queued | Folded | Started | Delta | ToolStarted | ToolFinished | PermissionAsked | Finished
)


class RunObserver(Protocol):
    def on_event(self, event: RunEvent) -> None: ...


# -- public call types -------------------------------------------------------------------------


class AcceptedRun:
    """One accept reservation taken by :meth:`SessionAgent.begin_accepted`.

    ``close`` releases it; it is idempotent, and ``AcceptedRun.close(None)`` is a no-op so
    callers holding an optional reservation need no check.
    """

    __slots__ = ("_agent", "_closed", "seq", "session_id")

    def __init__(self, agent: SessionAgent, session_id: str, seq: int) -> None:
        self._agent = agent
        self.session_id = session_id
        self.seq = seq
        self._closed = False  # guarded by the session's dispatch lock

    def close(self) -> None:
        if self is None:
            return
        self._agent._release_accept(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<AcceptedRun session={self.session_id!r} seq={self.seq} {state}>"


@dataclass(frozen=True)
class Attachment:
    """Text attached to a prompt (a file, a DataFrame summary, a cell's source)."""

    name: str
    content: str


@dataclass
class SessionAgentCall:
    session_id: str
    prompt: str
    attachments: Sequence[Attachment] = ()
    accepted: AcceptedRun | None = None
    observer: RunObserver | None = None
    model: Model | None = None  # overrides the agent's model for this prompt


@dataclass
class RunResult:
    session_id: str
    reason: FinishReason
    message: str = ""
    text: str = ""  # the turn's answer: the text of its assistant messages
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None


@dataclass(frozen=True)
class AgentStatus:
    running: list[str]
    queued: dict[str, int]


# -- internal state ----------------------------------------------------------------------------


@dataclass(eq=False)
class _Turn:
    """One prompt from accept to its terminal record. Touched on the loop thread only."""

    call: SessionAgentCall
    seq: int
    state: _SessionState
    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task[None] | None = None
    observers: list[RunObserver] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)  # this turn's records, in order
    user_recorded: bool = False
    result: RunResult | None = None  # set once, by _finalize: the turn is terminal

    @property
    def session_id(self) -> str:
        return self.call.session_id


@dataclass(eq=False)
class _SessionState:
    # The dispatch lock. It makes these transitions atomic against cancel(): accept
    # (seq assignment), the accepted → cancel-on-entry | queued | active decision, the fold of
    # queued prompts into a running turn, and the handoff from a finished turn to the next
    # queued one. Never held across I/O or an await.
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Last sequence number handed out by begin_accepted.
    accept_seq: int = 0
    # Open accept reservations: prompts accepted whose run() has not decided yet.
    open_accepts: int = 0
    # Prompts with seq <= cancel_mark are covered by a cancel; raised only when a cancel finds
    # something to stop, so an idle cancel never reaches a later prompt.
    cancel_mark: int = 0
    # The active turn: its task is the cancel handle, registered before the lock is released.
    active: _Turn | None = None
    # Prompts waiting behind the active turn, in order of arrival.
    queue: deque[_Turn] = field(default_factory=deque)


class SessionAgent:
    """Runs prompts for many sessions, one turn at a time per session, cancel-safe."""

    def __init__(
        self,
        model: Model | str,
        store: TranscriptStore,
        tools: Iterable[Tool] = (),
        system_prompt: str | None = None,
        *,
        max_steps: int = DEFAULT_MAX_STEPS,
        permissions: PermissionBroker | None = None,
        history_chars: int = DEFAULT_HISTORY_CHARS,
    ) -> None:
        self.model = _resolve(model)
        self.store = store
        self.tools: dict[str, Tool] = {t.name: t for t in tools}
        self.system_prompt = system_prompt
        self.max_steps = max_steps
        self.permissions = permissions
        self.history_chars = history_chars
        # Guards creation of entries in _sessions so every thread sees one state per session.
        self._sessions_lock = threading.Lock()
        self._sessions: dict[str, _SessionState] = {}
        self._status_listeners: list[Callable[[AgentStatus], None]] = []

    # -- accept / cancel: callable from any thread ---------------------------------------------

    def begin_accepted(self, session_id: str) -> AcceptedRun:
        """Reserve the next prompt of ``session_id``: from now on a cancel reaches it."""
        state = self._state(session_id)
        with state.lock:
            state.accept_seq += 1
            state.open_accepts += 1
            return AcceptedRun(self, session_id, state.accept_seq)

    def _release_accept(self, accepted: AcceptedRun) -> None:
        state = self._state(accepted.session_id)
        with state.lock:
            self._release_accept_locked(state, accepted)

    @staticmethod
    def _release_accept_locked(state: _SessionState, accepted: AcceptedRun) -> None:
        if not accepted._closed:
            accepted._closed = True
            state.open_accepts -= 1

    def cancel(self, session_id: str) -> None:
        """Stop every prompt of ``session_id`` accepted so far. Safe from any thread."""
        state = self._state(session_id)
        with state.lock:
            active = state.active
            if active is None and not state.open_accepts and not state.queue:
                return  # idle: nothing to stop, and nothing may linger for a later prompt
            # Covers the active turn, the queue, and accepts not yet decided. The queue
            # itself is dropped (and recorded) by the handoff when the active turn ends.
            state.cancel_mark = state.accept_seq
        if active is not None and active.task is not None and active.loop is not None:
            _call_on_loop(active.loop, active.task.cancel)

    def cancel_all(self) -> None:
        with self._sessions_lock:
            session_ids = list(self._sessions)
        for session_id in session_ids:
            self.cancel(session_id)

    def is_session_busy(self, session_id: str) -> bool:
        state = self._state(session_id)
        with state.lock:
            return state.active is not None

    def queued_prompts(self, session_id: str) -> int:
        state = self._state(session_id)
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

    def add_status_listener(self, listener: Callable[[AgentStatus], None]) -> None:
        """Call ``listener`` (on the loop thread) whenever runs start, queue or end."""
        self._status_listeners.append(listener)

    # -- run -----------------------------------------------------------------------------------

    async def run(self, call: SessionAgentCall) -> RunResult | None:
        """Run ``call`` to its terminal record, or queue it behind the session's active turn.

        Returns the turn's result, or None when the call was queued: a queued prompt runs
        after the active turn, on that turn's handoff, and reports through its observer.
        """
        accepted = call.accepted or self.begin_accepted(call.session_id)
        try:
            _validate(call, self.store)
        except Exception:
            accepted.close()  # a rejected call must not hold the session's accept count
            raise
        loop = asyncio.get_running_loop()
        state = self._state(call.session_id)
        turn = _Turn(call, accepted.seq, state, loop=loop)
        if call.observer is not None:
            turn.observers.append(call.observer)

        with state.lock:
            self._release_accept_locked(state, accepted)
            if turn.seq <= state.cancel_mark:
                transition = "cancel-on-entry"
            elif state.active is not None:
                transition = "queued"
                state.queue.append(turn)
                position = len(state.queue)
            else:
                transition = "active"
                self._activate_locked(state, turn)

        if transition == "cancel-on-entry":
            self._finalize(turn, FinishReason.CANCELED, CANCELED_MESSAGE)
            return turn.result
        if transition == "queued":
            self._emit(turn, Queued(position))
            self._notify_status()
            return None

        self._notify_status()
        assert turn.task is not None
        caller = asyncio.current_task()
        cancels_before = caller.cancelling() if caller else 0
        try:
            await turn.task
        except asyncio.CancelledError:
            # Our own cancel hit the turn's task before it started, or the caller is being
            # torn down (kernel shutdown). Record the turn now, synchronously: the loop may
            # not run again.
            self._finalize(turn, FinishReason.CANCELED, CANCELED_MESSAGE)
        if caller is not None and caller.cancelling() > cancels_before:
            # The caller was canceled; the turn task absorbed that cancel, so pass it on.
            raise asyncio.CancelledError
        return turn.result

    def _activate_locked(self, state: _SessionState, turn: _Turn) -> None:
        """Make ``turn`` the session's active turn. Caller holds ``state.lock``.

        The task is created (not yet started) and registered as the cancel handle before
        the lock is released, so a cancel arriving at any later instant finds it.
        """
        assert turn.loop is not None
        turn.task = turn.loop.create_task(self._drive(turn), name=f"crush:{turn.session_id}")
        turn.task.add_done_callback(lambda _task: self._on_turn_done(state, turn))
        state.active = turn

    def _on_turn_done(self, state: _SessionState, turn: _Turn) -> None:
        """The turn's task ended: hand the session to the next queued prompt."""
        # A task canceled before it started never ran its own handler.
        self._finalize(turn, FinishReason.CANCELED, CANCELED_MESSAGE)
        with state.lock:
            dropped = [t for t in state.queue if t.seq <= state.cancel_mark]
            remaining = [t for t in state.queue if t.seq > state.cancel_mark]
            state.queue = deque(remaining[1:])
            state.active = None
            if remaining:
                self._activate_locked(state, remaining[0])
        for queued in dropped:
            # Recorded, not destroyed: the prompt stays in the transcript and can be re-run.
            self._finalize(queued, FinishReason.CANCELED, CANCELED_MESSAGE)
        self._notify_status()

    async def _drive(self, turn: _Turn) -> None:
        """The active turn: stream steps until the model stops, then record the outcome."""
        try:
            reason = await self._steps(turn)
            self._finalize(turn, reason)
        except asyncio.CancelledError:
            self._finalize(turn, FinishReason.CANCELED, CANCELED_MESSAGE)
        except _TurnEnded as ended:
            self._finalize(turn, ended.reason, ended.message)
        except Exception as error:  # a provider or tool layer failure ends the turn, never the loop
            log.debug("turn failed", exc_info=True)
            self._finalize(turn, FinishReason.ERROR, _describe(error))

    async def _steps(self, turn: _Turn) -> FinishReason:
        session_id = turn.session_id
        model = turn.call.model or self.model
        self._record_user(turn)
        self._emit(turn, Started(turn.messages[0].id))
        history = self.store.list_messages(session_id)
        repeats: Counter[str] = Counter()
        specs = [tool.spec for tool in self.tools.values()]
        for step in range(self.max_steps):
            if step:
                history.extend(self._fold_queued(turn))
            assistant = Message(
                session_id, Role.ASSISTANT, model=model.name, provider=model.provider
            )
            self._record(turn, assistant)
            finish = await self._stream_step(turn, model, history, specs, assistant)
            history.append(assistant)
            calls = assistant.tool_calls
            if not calls:
                if finish.reason is FinishReason.TOOL_USE:  # it claimed tools but sent none
                    raise _TurnEnded(FinishReason.ERROR, "The model asked for tools but sent none")
                return finish.reason
            results = Message(session_id, Role.TOOL)
            self._record(turn, results)
            history.append(results)
            for tool_call in calls:
                if _covered(turn):
                    raise asyncio.CancelledError
                signature = f"{tool_call.name}:{_canonical_json(tool_call.input)}"
                repeats[signature] += 1
                if repeats[signature] > REPEATED_CALL_LIMIT:
                    raise _TurnEnded(
                        FinishReason.ERROR,
                        f"Stopped: the model repeated the same {tool_call.name} call "
                        f"{REPEATED_CALL_LIMIT} times",
                    )
                try:
                    result = await self._call_tool(turn, tool_call)
                except _PermissionDenied as denied:
                    results.parts.append(denied.result)  # the denial is the call's clear record
                    self.store.update_message(results, force=True)
                    self._emit(turn, ToolFinished(tool_call, denied.result))
                    raise
                results.parts.append(result)
                self.store.update_message(results, force=True)
                self._emit(turn, ToolFinished(tool_call, result))
        raise _TurnEnded(
            FinishReason.ERROR,
            f"Stopped after {self.max_steps} steps; ask again to continue",
        )

    async def _stream_step(
        self,
        turn: _Turn,
        model: Model,
        history: list[Message],
        specs: list[Any],
        assistant: Message,
    ) -> StreamFinish:
        finish: StreamFinish | None = None
        store = self.store
        request = _fit_history(history, self.history_chars)
        stream = model.stream(request, system=self.system_prompt, tools=specs)
        async with contextlib.aclosing(stream):  # closes the provider's HTTP stream on any exit
            async for event in stream:
                if _covered(turn):
                    # cancel() has marked this turn; its task.cancel() may still be on its way
                    # from another thread. Stop at this token rather than after it arrives.
                    raise asyncio.CancelledError
                if isinstance(event, StreamFinish):
                    # tool_use ends a step, not the turn; any other reason is the terminal record
                    finish = event
                force = apply_event(assistant, event)
                store.update_message(assistant, force=force)
                self._emit(turn, Delta(assistant))
        if finish is None:
            raise _TurnEnded(FinishReason.ERROR, "The model's stream ended without a finish")
        return finish

    async def _call_tool(self, turn: _Turn, call: ToolCallPart) -> ToolResultPart:
        def error(content: str) -> ToolResultPart:
            return ToolResultPart(call.id, call.name, content, is_error=True)

        tool = self.tools.get(call.name)
        if tool is None:
            return error(
                f"Unknown tool {call.name!r}; available: {', '.join(self.tools) or 'none'}"
            )
        try:
            arguments = json.loads(call.input or "{}")
        except json.JSONDecodeError as exc:
            return error(f"Invalid JSON arguments for {call.name}: {exc}")
        if not isinstance(arguments, dict):
            return error(f"Arguments for {call.name} must be a JSON object")
        if tool.changes_state and self.permissions is not None:
            request = PermissionRequest(
                turn.session_id, call.id, call.name, arguments, tool.permission_summary(arguments)
            )
            self._emit(turn, PermissionAsked(request))
            decision = await self.permissions.ask(request)
            if decision is Decision.DENY:
                message = f"Permission denied for {call.name}"
                denial_reason = getattr(self.permissions, "denial_reason", None)
                reason = denial_reason(call.id) if denial_reason else None
                if reason and reason != "denied by the user":
                    message = f"{message}: {reason}"
                raise _PermissionDenied(error(message), message)
        self._emit(turn, ToolStarted(call))
        try:
            outcome: ToolResult = await tool.run(arguments, ToolContext(turn.session_id, call.id))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return error(f"{call.name} failed: {_describe(exc)}")
        return ToolResultPart(
            call.id, call.name, outcome.content, outcome.is_error, outcome.metadata
        )

    def _fold_queued(self, turn: _Turn) -> list[Message]:
        """Between steps: queued prompts join the running turn, unless a cancel covers them."""
        state = self._state(turn.session_id)
        with state.lock:
            dropped = [t for t in state.queue if t.seq <= state.cancel_mark]
            folded = [t for t in state.queue if t.seq > state.cancel_mark]
            state.queue.clear()
        for queued in dropped:
            self._finalize(queued, FinishReason.CANCELED, CANCELED_MESSAGE)
        added = []
        for queued in folded:
            queued.result = RunResult(turn.session_id, FinishReason.UNKNOWN)  # owned by `turn`
            self._emit(queued, Folded())
            turn.observers.extend(queued.observers)
            user = _user_message(queued.call)
            self._record(turn, user)
            added.append(user)
        if dropped or folded:
            self._notify_status()
        return added

    # -- records -------------------------------------------------------------------------------

    def _record_user(self, turn: _Turn) -> None:
        if not turn.user_recorded:
            turn.user_recorded = True
            self._record(turn, _user_message(turn.call))

    def _record(self, turn: _Turn, message: Message) -> None:
        self.store.add_message(message)
        turn.messages.append(message)

    def _finalize(self, turn: _Turn, reason: FinishReason, detail: str = "") -> None:
        """Write the turn's terminal record and tell its observers. Runs once per turn.

        Synchronous on purpose: a cancel during kernel shutdown must still be written,
        and a write that needs no ``await`` cannot be interrupted by the cancel itself.
        """
        if turn.result is not None:
            return
        with turn.state.lock:
            if reason is not FinishReason.CANCELED and turn.seq <= turn.state.cancel_mark:
                # A cancel covers this turn: however it ended since (a provider error, a
                # denied permission), the user asked it to stop. Only a turn the model had
                # already ended before the cancel keeps its own reason (checked below).
                reason, detail = FinishReason.CANCELED, CANCELED_MESSAGE
        session_id = turn.session_id
        self._record_user(turn)
        assistants = [m for m in turn.messages if m.role is Role.ASSISTANT]
        last = assistants[-1] if assistants else None
        if last is not None and last.finish_reason in TERMINAL_REASONS:
            # The model had already ended the turn: a cancel arriving after that changes nothing.
            reason, detail = last.finish_reason, last.finish.message
        elif last is not None and not last.is_finished:
            for call in last.tool_calls:
                call.finished = True
            last.add_finish(reason, detail)
            self.store.update_message(last, force=True)
        # Every tool call sent to the model gets a result, so the next request is well-formed.
        answered = {r.tool_call_id for m in turn.messages for r in m.tool_results}
        unanswered = [c for m in assistants for c in m.tool_calls if c.id not in answered]
        if unanswered:
            results = turn.messages[-1]
            if results.role is not Role.TOOL:
                results = Message(session_id, Role.TOOL)
                self._record(turn, results)
            note = TOOL_CANCELED if reason is FinishReason.CANCELED else TOOL_FAILED
            results.parts.extend(
                ToolResultPart(c.id, c.name, note, is_error=True) for c in unanswered
            )
            self.store.update_message(results, force=True)
        if last is None or last.finish_reason is FinishReason.TOOL_USE:
            # Stopped before the model answered, or between steps: the terminal record is an
            # assistant message holding only the finish.
            model = turn.call.model or self.model
            terminal = Message(
                session_id, Role.ASSISTANT, model=model.name, provider=model.provider
            )
            terminal.add_finish(reason, detail)
            self._record(turn, terminal)
            assistants.append(terminal)
        self.store.flush()
        usage = Usage()
        for message in assistants:
            usage += message.usage
        costs = [m.cost for m in assistants if m.parts and not _finish_only(m)]
        cost = sum(costs) if costs and None not in costs else None  # unknown when any step is
        text = "".join(m.text for m in assistants)
        turn.result = RunResult(session_id, FinishReason(reason), detail, text, usage, cost)
        self._emit(turn, Finished(FinishReason(reason), detail, usage, cost))

    # -- shutdown ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Record every turn in flight or queued as canceled, synchronously.

        For kernel shutdown and restart: call it from the loop's thread (or once the loop
        has stopped). Turns whose tasks run again afterwards find themselves finalized.
        """
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
                self._finalize(turn, FinishReason.CANCELED, "Kernel shut down")
                if turn.task is not None and not turn.task.done():
                    turn.task.cancel()
        self.store.flush()

    # -- helpers -------------------------------------------------------------------------------

    def _state(self, session_id: str) -> _SessionState:
        state = self._sessions.get(session_id)
        if state is None:
            with self._sessions_lock:
                state = self._sessions.setdefault(session_id, _SessionState())
        return state

    def _emit(self, turn: _Turn, event: RunEvent) -> None:
        for observer in turn.observers:
            try:
                observer.on_event(event)
            except Exception:  # a broken view must not break the run
                log.exception("run observer failed on %s", type(event).__name__)

    def _notify_status(self) -> None:
        if not self._status_listeners:
            return
        status = self.status()
        for listener in self._status_listeners:
            try:
                listener(status)
            except Exception:
                log.exception("status listener failed")


class _TurnEnded(Exception):
    """Ends the turn early with a chosen terminal record (step limit, loop, permission)."""

    def __init__(self, reason: FinishReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _PermissionDenied(_TurnEnded):
    """The user (or the headless policy) denied a tool call: the turn ends canceled."""

    def __init__(self, result: ToolResultPart, message: str) -> None:
        super().__init__(FinishReason.CANCELED, message)
        self.result = result


def _resolve(model: Model | str) -> Model:
    if isinstance(model, str):
        from .providers import resolve_model  # the SDKs are slow to import: only when named

        return resolve_model(model)
    return model


def _validate(call: SessionAgentCall, store: TranscriptStore) -> None:
    if not call.prompt or not call.prompt.strip():
        raise ValueError("The prompt is empty: write what you want the agent to do")
    store.get_session(call.session_id)  # raises UnknownSessionError with a clear message


def _user_message(call: SessionAgentCall) -> Message:
    parts = [TextPart(call.prompt)]
    parts += [
        TextPart(f'\n<attachment name="{a.name}">\n{a.content}\n</attachment>')
        for a in call.attachments
    ]
    return Message(call.session_id, Role.USER, parts=list(parts))


def _canonical_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text or "{}"), sort_keys=True)
    except json.JSONDecodeError:
        return text


def _finish_only(message: Message) -> bool:
    return all(p.type == "finish" for p in message.parts)


def _covered(turn: _Turn) -> bool:
    """Has a cancel covered ``turn``? Read without the lock: ``cancel_mark`` only grows, so a
    stale read merely leaves the stop to the ``task.cancel()`` already on its way."""
    return turn.seq <= turn.state.cancel_mark


def _fit_history(history: list[Message], budget: int) -> list[Message]:
    """The newest turns of ``history`` that fit in ``budget`` characters.

    Cuts only at a user message, so no tool result is ever separated from its call, and
    always keeps the last one (the prompt being answered) whatever its size. A note says
    how much was left out, so the model knows the conversation is longer.
    """
    total = 0
    cut = None
    for index in range(len(history) - 1, -1, -1):
        total += _size(history[index])
        if history[index].role is Role.USER:
            if total > budget and cut is not None:
                break
            cut = index
    if not cut:
        return history
    note = Message(
        history[cut].session_id,
        Role.USER,
        [TextPart(f"({cut} earlier messages of this conversation are left out to fit.)")],
    )
    return [note, *history[cut:]]


def _size(message: Message) -> int:
    """Characters a message adds to a request: its text, arguments and results."""
    return sum(
        len(getattr(part, "text", "") or "")
        + len(getattr(part, "input", "") or "")
        + len(getattr(part, "content", "") or "")
        for part in message.parts
    )


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return text or type(error).__name__


def _call_on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], Any]) -> None:
    """Run ``callback`` on ``loop``: now when already on its thread, else via the loop."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        callback()
    elif not loop.is_closed():
        loop.call_soon_threadsafe(callback)
