"""The session agent: runs each session's turns — model steps, tool calls, records.

Which prompt runs, waits or stops, and when, is decided in :mod:`jupyter_crush.agent.dispatch`;
what a turn writes and how it is closed, in :mod:`jupyter_crush.agent.records`. This module drives
one active turn::

    active ──► stream steps (model → tool calls → results → …) ──► finish: the terminal
    record, then the observers' Finished event

Everything here runs on the event loop's thread, except the calls that only forward to
dispatch (``begin_accepted``, ``cancel``, ``cancel_all``, ``is_session_busy``,
``queued_prompts``, ``status``), which are safe from any thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from ..core.changes import NO_CHANGES, TurnChanges
from ..core.events import (
    Delta,
    Finished,
    Folded,
    PermissionAsked,
    Queued,
    RunEvent,
    Started,
    ToolFinished,
    ToolStarted,
)
from ..core.message import (
    CANCELED_MESSAGE,
    FinishReason,
    Message,
    Role,
    ToolCallPart,
    ToolResultPart,
)
from ..core.model import Model, StreamFinish, apply_event, closing_stream
from ..core.tools import (
    Decision,
    PermissionBroker,
    PermissionRequest,
    Tool,
    ToolContext,
    ToolResult,
    ToolSource,
)
from ..store.transcript import TranscriptStore
from .budget import Budget
from .calls import AcceptedRun, Attachment, RunResult, SessionAgentCall
from .children import ChildObserver, ChildSessions
from .compaction import DEFAULT_HISTORY_CHARS, ContextPolicy, RequestShaper, SummaryFailed
from .dispatch import AgentStatus, Dispatcher, Entry, Turn, covered, stop_if_covered
from .records import StoreFailed, TurnRecords, describe, prompt_message
from .titles import Titler, title_model_for

__all__ = [
    "AcceptedRun",
    "AgentStatus",
    "Attachment",
    "RunResult",
    "SessionAgent",
    "SessionAgentCall",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 25
#: The same tool call (name and arguments) this many times in one turn ends the turn.
REPEATED_CALL_LIMIT = 3


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
        context: ContextPolicy | None = None,
    ) -> None:
        self.model = _resolve(model)
        self.store = store
        self.tools: dict[str, Tool] = {t.name: t for t in tools}
        #: Refreshed into ``tools`` at the start of each turn (MCP servers).
        self.tool_sources: list[ToolSource] = []
        self.system_prompt = system_prompt
        self.max_steps = max_steps
        self.permissions = permissions
        #: How requests fit the model's window (summaries; ``history_chars`` without one).
        self.context = context or ContextPolicy(history_chars=history_chars)
        #: Titles new sessions after their first prompt, with ``title_model`` (None: the
        #: prompt's own model); ``titles`` False turns them off.
        #: The spending caps every model request is checked against before it is sent.
        self.budget = Budget(store)
        self.titler = Titler(store, self.budget.check)
        self.title_model: Model | None = None
        self.titles = True
        #: The change log of a turn, by session id and the turn's prompt message id, which
        #: its tools report to (``ToolContext.changes``) so the turn can be undone; None:
        #: tools report to no one.
        self.turn_changes: Callable[[str, str], TurnChanges] | None = None
        self._dispatch = Dispatcher(self._drive, self._finish, self._status_changed)
        self._status_listeners: list[Callable[[AgentStatus], None]] = []
        #: The sub-agents' sessions running for each session's turn (see run_child).
        self.children = ChildSessions()

    # -- accept / cancel: callable from any thread ---------------------------------------------

    def begin_accepted(self, session_id: str) -> AcceptedRun:
        """Reserve the next prompt of ``session_id``: from now on a cancel reaches it."""
        return self._dispatch.accept(session_id)

    def cancel(self, session_id: str) -> None:
        """Stop every prompt of ``session_id`` accepted so far. Safe from any thread."""
        self._dispatch.cancel(session_id)
        self.titler.cancel(session_id)
        self.children.cancel(session_id, self.cancel)  # its sub-agents' turns stop with it

    def cancel_all(self) -> None:
        for session_id in self._dispatch.session_ids():
            self.cancel(session_id)

    def is_session_busy(self, session_id: str) -> bool:
        return self._dispatch.is_busy(session_id)

    def queued_prompts(self, session_id: str) -> int:
        return self._dispatch.queued(session_id)

    def status(self) -> AgentStatus:
        return self.children.left_out_of(self._dispatch.status())  # a sub-agent is its turn's

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
            self._dispatch.check(accepted, call.session_id)
            _validate(call, self.store)
        except Exception:
            accepted.close()  # a rejected call must not hold its session's accept count
            raise
        records = TurnRecords(
            self.store, call.session_id, call.prompt, call.attachments, call.metadata
        )
        records.prompt_recorded = call.compact  # a compaction records no prompt
        state = self._dispatch.state(call.session_id)
        turn = Turn(call, accepted.seq, state, asyncio.get_running_loop(), records)
        if call.observer is not None:
            turn.observers.append(call.observer)

        entry, position = self._dispatch.enter(turn, accepted)
        if entry is Entry.CANCELED:
            self._finish(turn, FinishReason.CANCELED, CANCELED_MESSAGE)
            return turn.result
        if entry is Entry.QUEUED:
            self._emit(turn, Queued(position))
            self._status_changed()
            return None

        self._status_changed()
        assert turn.task is not None
        caller = asyncio.current_task()
        cancels_before = caller.cancelling() if caller else 0
        try:
            await turn.task
        except asyncio.CancelledError:
            # Our own cancel hit the turn's task before it started, or the caller is being
            # torn down (kernel shutdown). Record the turn now, synchronously: the loop may
            # not run again.
            self._finish(turn, FinishReason.CANCELED, CANCELED_MESSAGE)
        if caller is not None and caller.cancelling() > cancels_before:
            # The caller was canceled; the turn task absorbed that cancel, so pass it on.
            raise asyncio.CancelledError
        return turn.result

    async def _drive(self, turn: Turn) -> None:
        """The active turn: stream steps until the model stops, then record the outcome."""
        try:
            reason = await self._steps(turn)
            self._finish(turn, reason, "")
        except asyncio.CancelledError:
            if covered(turn) or _cancel_requested():
                self._finish(turn, FinishReason.CANCELED, CANCELED_MESSAGE)
            else:  # a library below raised it on its own (an inner future was cancelled)
                self._finish(turn, FinishReason.ERROR, "The model's stream was cancelled")
        except _TurnEnded as ended:
            self._finish(turn, ended.reason, ended.message)
        except StoreFailed:  # the records say what failed and what was saved
            self._finish(turn, FinishReason.ERROR, "")
        except Exception as error:  # a provider or tool layer failure ends the turn, never the loop
            log.debug("turn failed", exc_info=True)
            self._finish(turn, FinishReason.ERROR, describe(error))

    async def _steps(self, turn: Turn) -> FinishReason:
        stop_if_covered(turn)  # a Stop that landed after the turn became active, before this
        session_id = turn.session_id
        model = turn.call.model or self.model
        records = turn.records
        records.record_prompt()
        self._emit(turn, Started(records.messages[0].id if records.messages else ""))
        history = records.history()
        if not turn.call.compact and self.titles:
            titles = title_model_for(self.title_model, model)
            title = self.titler.after_prompt(session_id, turn.call.prompt, history, titles)
            if title is not None:
                turn.observers.append(title)
        repeats: Counter[str] = Counter()
        tools = await self._turn_tools(turn, model)
        specs = [tool.spec for tool in tools.values()]
        shaper = RequestShaper(
            model,
            self._system_prompt(turn),
            specs,
            self.context,
            records.add,
            lambda event: self._emit(turn, event),
            lambda: stop_if_covered(turn),
            lambda messages: self.budget.check(
                session_id, model, messages, self.system_prompt, specs, partial(self._emit, turn)
            ),
        )
        if turn.call.compact:
            try:
                await shaper.compact(history)
            except SummaryFailed as failed:
                raise _TurnEnded(FinishReason.ERROR, f"No summary: {failed}") from None
            return FinishReason.END_TURN
        compact = False
        for step in range(self.max_steps):
            if step:
                compact = self._fold_queued(turn, history)
            request = await shaper.fit_request(history, force=compact)
            assistant = Message(
                session_id, Role.ASSISTANT, model=model.name, provider=model.provider
            )
            records.add(assistant)
            finish = await self._stream_step(turn, model, request, specs, assistant)
            history.append(assistant)
            calls = assistant.tool_calls
            if not calls:
                if finish.reason is FinishReason.TOOL_USE:  # it claimed tools but sent none
                    raise _TurnEnded(FinishReason.ERROR, "The model asked for tools but sent none")
                return finish.reason
            results = Message(session_id, Role.TOOL)
            records.add(results)
            history.append(results)
            for tool_call in calls:
                stop_if_covered(turn)  # neither its permission prompt nor its run
                signature = f"{tool_call.name}:{_canonical_json(tool_call.input)}"
                repeats[signature] += 1
                if repeats[signature] > REPEATED_CALL_LIMIT:
                    raise _TurnEnded(
                        FinishReason.ERROR,
                        f"Stopped: the model repeated the same {tool_call.name} call "
                        f"{REPEATED_CALL_LIMIT} times",
                    )
                try:
                    result = await self._call_tool(turn, tool_call, tools)
                except _PermissionDenied as denied:
                    results.parts.append(denied.result)  # the denial is the call's clear record
                    records.save(results)
                    self._emit(turn, ToolFinished(tool_call, denied.result))
                    raise
                results.parts.append(result)
                records.save(results)
                self._emit(turn, ToolFinished(tool_call, result))
        raise _TurnEnded(
            FinishReason.ERROR,
            f"Stopped after {self.max_steps} steps; ask again to continue",
        )

    async def _stream_step(
        self,
        turn: Turn,
        model: Model,
        request: list[Message],
        specs: list[Any],
        assistant: Message,
    ) -> StreamFinish:
        finish: StreamFinish | None = None
        records = turn.records
        stop_if_covered(turn)  # the step's request: after a summary, a tool, the MCP servers' start
        self.budget.check(  # nothing is sent that could take spend past a cap
            turn.session_id, model, request, self.system_prompt, specs, partial(self._emit, turn)
        )
        stream = model.stream(request, system=self._system_prompt(turn), tools=specs)
        async with closing_stream(stream):  # closes the provider's HTTP stream on any exit
            async for event in stream:
                # cancel() has marked this turn; its task.cancel() may still be on its way
                # from another thread. Stop at this token rather than after it arrives.
                stop_if_covered(turn)
                if isinstance(event, StreamFinish):
                    # tool_use ends a step, not the turn; any other reason is the terminal record
                    finish = event
                force = apply_event(assistant, event)
                records.save(assistant, force=force)
                self._emit(turn, Delta(assistant))
        if finish is None:
            raise _TurnEnded(FinishReason.ERROR, "The model's stream ended without a finish")
        return finish

    async def _call_tool(
        self, turn: Turn, call: ToolCallPart, tools: dict[str, Tool]
    ) -> ToolResultPart:
        def error(content: str) -> ToolResultPart:
            return ToolResultPart(call.id, call.name, content, is_error=True)

        tool = tools.get(call.name)
        if tool is None:
            explained = (source.unknown_tool(call.name) for source in self.tool_sources)
            return error(
                next(filter(None, explained), None)
                or f"Unknown tool {call.name!r}; available: {', '.join(tools) or 'none'}"
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
            # Allow and a Stop from another thread may both have landed while we waited.
            stop_if_covered(turn)
        self._emit(turn, ToolStarted(call))
        context = ToolContext(
            turn.session_id, call.id, lambda: stop_if_covered(turn), self._changes(turn)
        )
        try:
            outcome: ToolResult = await tool.run(arguments, context)
        except asyncio.CancelledError:
            if covered(turn) or _cancel_requested():
                raise
            # Raised by the tool on its own (an inner future was cancelled): nobody stopped
            # the turn, so it is the tool's failure, not a user's cancel.
            return error(f"{call.name} failed: it was cancelled from inside the tool")
        except Exception as exc:
            return error(f"{call.name} failed: {describe(exc)}")
        return ToolResultPart(
            call.id, call.name, outcome.content, outcome.is_error, outcome.metadata, outcome.images
        )

    def _changes(self, turn: Turn) -> TurnChanges:
        """The change log the turn's tools report to."""
        if self.turn_changes is None or not turn.records.messages:
            return NO_CHANGES
        return self.turn_changes(turn.session_id, turn.records.messages[0].id)

    def _fold_queued(self, turn: Turn, history: list[Message]) -> bool:
        """Between steps: queued prompts join the running turn (``history``), unless a cancel
        covers it. True when one of them asks for a summary before the next step."""
        folded = self._dispatch.fold(turn)
        if folded is None:
            raise asyncio.CancelledError  # covered: no further step, nothing joins
        for queued in folded:
            # Owned by `turn` before anything is written: if a write fails, the turn's end
            # still reaches every folded prompt's observers.
            queued.result = RunResult(turn.session_id, FinishReason.UNKNOWN)
            self._emit(queued, Folded())
            turn.observers.extend(queued.observers)
        if folded:
            self._status_changed()
        for queued in folded:
            call = queued.call
            if call.compact:
                continue
            user = prompt_message(call.session_id, call.prompt, call.attachments, call.metadata)
            turn.records.add(user)
            history.append(user)
        return any(queued.call.compact for queued in folded)

    async def _turn_tools(self, turn: Turn, model: Model) -> dict[str, Tool]:
        """The tools ``turn`` offers: a sub-agent's own only; else the agent's, refreshed from
        its sources, over the model's own (a replay's recorded ones), with the call's."""
        if turn.call.only_tools:
            return {tool.name: tool for tool in turn.call.tools}
        for source in self.tool_sources:
            await source.refresh(self.tools)
        tools = {**{t.name: t for t in getattr(model, "tools", ())}, **self.tools}
        tools.update((t.name, t) for t in turn.call.tools)
        return tools

    def _system_prompt(self, turn: Turn) -> str | None:
        own = turn.call.system_prompt
        return self.system_prompt if own is None else own

    # -- sub-agents ----------------------------------------------------------------------------

    async def run_child(self, context: ToolContext, call: SessionAgentCall) -> RunResult:
        """Run ``call``, a sub-agent's turn in a session of its own, for the tool call of
        ``context`` in its session's running turn, and return the child turn's result.

        The child is an ordinary turn of this agent: the same requests, records and cancel
        rules, with the parent turn's model unless ``call`` names one. A cancel of the parent
        reaches it at once (``cancel``), its events reach the parent's observers as
        ``ChildEvent`` s, and what it spent counts in the parent turn's usage and cost.
        """
        # is_busy first: only an accept makes a session's dispatch state (IDLE-NO-OP).
        busy = self._dispatch.is_busy(context.session_id)
        parent = self._dispatch.state(context.session_id).active if busy else None
        if parent is None or parent.result is not None:
            raise RuntimeError(
                f"session {context.session_id!r} has no running turn to start a sub-agent for"
            )
        observer = ChildObserver(
            lambda event: self._emit(parent, event),
            context.tool_call_id,
            call.session_id,
            call.prompt,
        )
        accepted = self.begin_accepted(call.session_id)
        try:
            with self.children.linked(parent.session_id, call.session_id):
                if covered(parent):
                    # NOTHING-STARTS-WHEN-COVERED: a cancel of the parent that read the links
                    # before this one misses the child; passed on, the child is canceled on
                    # entry (recorded, no request).
                    self._dispatch.cancel(call.session_id)
                model = call.model or parent.call.model
                child = dataclasses.replace(call, accepted=accepted, observer=observer, model=model)
                result = await self.run(child)
        finally:
            spent = observer.spent()
            if spent is not None:
                parent.records.child_spend.append(spent)
        if result is None:
            raise RuntimeError(f"the sub-agent's session {call.session_id!r} was busy")
        return result

    # -- the end of a turn ---------------------------------------------------------------------

    def _finish(self, turn: Turn, reason: FinishReason, detail: str) -> None:
        """Write the turn's terminal record and tell its observers. Runs once per turn.

        Synchronous on purpose: a cancel during kernel shutdown must still be written,
        and a write that needs no ``await`` cannot be interrupted by the cancel itself.
        """
        if turn.result is not None:
            return
        if reason is not FinishReason.CANCELED and covered(turn):
            # A cancel covers this turn: however it ended since (a provider error, a denied
            # permission), the user asked it to stop. Only a turn the model had already ended
            # before the cancel keeps its own reason (the records' rule).
            reason, detail = FinishReason.CANCELED, CANCELED_MESSAGE
        outcome = turn.records.close(reason, detail, turn.call.model or self.model)
        if turn.records.failure is not None:
            log.error("turn of session %s: %s", turn.session_id, outcome.detail)
        turn.result = RunResult(
            turn.session_id,
            outcome.reason,
            outcome.detail,
            outcome.text,
            outcome.usage,
            outcome.cost,
        )
        self._emit(turn, Finished(outcome.reason, outcome.detail, outcome.usage, outcome.cost))

    def shutdown(self) -> None:
        """Record every turn in flight or queued as canceled, synchronously.

        For kernel shutdown and restart: call it from the loop's thread (or once the loop
        has stopped). Turns whose tasks run again afterwards find themselves finalized.
        """
        self._dispatch.shutdown("Kernel shut down")
        self.titler.cancel_all()
        try:
            self.store.flush()
        except Exception:  # each turn's own record already says what was not written
            log.exception("flushing the transcript store at shutdown failed")

    # -- helpers -------------------------------------------------------------------------------

    def _emit(self, turn: Turn, event: RunEvent) -> None:
        for observer in turn.observers:
            try:
                observer.on_event(event)
            except (Exception, asyncio.CancelledError):  # a broken view must not break the run
                log.exception("run observer failed on %s", type(event).__name__)

    def _status_changed(self) -> None:
        if not self._status_listeners:
            return
        status = self.status()
        for listener in self._status_listeners:
            try:
                listener(status)
            except (Exception, asyncio.CancelledError):
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
        from ..providers import resolve_model  # the SDKs are slow to import: only when named

        return resolve_model(model)
    return model


def _validate(call: SessionAgentCall, store: TranscriptStore) -> None:
    if not call.prompt or not call.prompt.strip():
        raise ValueError("The prompt is empty: write what you want the agent to do")
    store.get_session(call.session_id)  # raises UnknownSessionError with a clear message


def _canonical_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text or "{}"), sort_keys=True)
    except json.JSONDecodeError:
        return text


def _cancel_requested() -> bool:
    """Has someone asked to cancel the running task (the caller's teardown, asyncio.run)?"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
