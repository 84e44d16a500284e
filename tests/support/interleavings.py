"""An exhaustive interleaving checker over the real dispatch code.

The real :class:`~jupyter_crush.SessionAgent` (dispatch.py, agent.py, records.py, the
ScriptedModel test double) runs on an event loop that nobody runs but this scheduler: the
loop lives in a greenlet and executes one ready handle per ``step``. The scheduler decides,
at every point where another thread could act, what happens next:

- ``step``           the loop runs its next ready handle (FIFO, as asyncio does)
- ``prompt:S``       a cell on the loop's thread accepts a prompt for session S and starts
                     ``agent.run`` as a task (the run decides on a later step)
- ``tool:I``         tool call I, waiting on outside work, completes
- ``allow:I``        the user answers permission prompt I with Allow (scenarios whose tool
                     asks; the real PermissionPolicy stands in front of it)
- ``cancel-loop:S``  a cancel from the loop's thread (a cell): ``task.cancel()`` lands at once
- ``cancel:S``       a cancel from another thread (a widget click on a subshell): its lock
                     section runs now, its ``call_soon_threadsafe`` delivery is *held*
- ``deliver:K``      held delivery K reaches the loop's ready queue
- ``go`` / ``ok`` / ``fail``  the loop's thread, parked inside a handle, carries on; at a
                     store write, the write succeeds or fails (OSError) within a budget

The loop's thread is parked (preempted) before every acquisition of a session lock, every
lock-free read of a cancel mark (``covered``, and so every ``stop_if_covered`` check), every
store write, where a turn's task takes a permission answer and where a tool starts, so
other-thread actions land in every window between the loop's lock sections, not only between
handles: among them a Stop between the user's Allow and the tool's start. Tools may absorb
cancellation (catch ``CancelledError`` and return).

Every action sequence of a bounded :class:`Scenario` is enumerated depth first, replaying
prefixes on a fresh world. A replay must follow its recording: each action enabled and
taken at the point it was recorded at, ending in the recorded state; the loop's thread takes
only a :class:`Resume` made for the point it is parked at. Anything else is a
:class:`HarnessError` with the trace, never a misstep or a pass. Worlds that reach an
abstract state already explored (dispatch state, every prompt's events, the store's records,
each task's await point, the ready queue, held deliveries, tool and model progress, the
budgets left) are not explored again. The invariants are checked after every action; at
every leaf (nothing left to do) the final ones:

- every accepted prompt ends in exactly one terminal event (and, when no write failed, in
  the store: one user record per prompt, one terminal record per turn);
- a cancel covers exactly the prompts accepted at or before it: a prompt ends canceled only
  if covered, and a covered prompt ends canceled unless the model had already ended its turn
  (or a store failure turned the end into an error);
- the accept count, the queue and the active turn return to empty; no task is left pending,
  and no ``run()`` raised;
- every tool call in the store has exactly one result;
- NOTHING-STARTS-WHEN-COVERED: no tool starts and no model request starts for a turn a
  cancel covers (checked as each starts);
- no deadlock (a session lock re-entered by its holder, or held across a preemption point),
  and no exception escapes to the loop's handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import greenlet

import jupyter_crush.agent.dispatch as dispatch_module
import jupyter_crush.agent.session as agent_module
from jupyter_crush import FinishReason, Message, SessionAgent, SessionAgentCall
from jupyter_crush.core.events import Finished, Folded
from jupyter_crush.core.message import TERMINAL_REASONS, Role, Session
from jupyter_crush.core.model import ToolSpec
from jupyter_crush.core.tools import Decision, PermissionRequest, Tool, ToolResult
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall
from jupyter_crush.tools.permissions import PermissionPolicy

REPLIES = {
    "text": Reply(text="ok"),
    "tool": Reply(tool_calls=[ToolCall("work")]),
}


@dataclass(frozen=True)
class Scenario:
    prompts: tuple[int, ...] = (2,)  # prompts per session; sessions share one store
    cancels: int = 1  # cancels in all, each from the loop's thread or another one
    thread_cancels: bool = True  # cancels from another thread, with held delivery
    loop_cancels: bool = True  # cancels from the loop's thread
    store_failures: int = 0  # store writes that may fail
    absorbing_tool: bool = False  # the tool catches CancelledError and returns
    permission: bool = False  # the tool changes state: each call asks, "allow:I" answers
    replies: tuple[str, ...] = ("tool", "text")  # the model's replies, cycled per request
    preempt: bool = True  # park the loop inside handles (lock sections, mark reads, writes)


class Violation(AssertionError):
    """The code under test broke an invariant."""


class HarnessError(RuntimeError):
    """The checker itself went wrong (a replay that left its recorded path, a loop's thread
    resumed with something other than what its park expects): never a verdict on the code."""


Point = tuple[str, ...]  # where the loop's thread is parked: (kind, its stack in the package)


@dataclass(frozen=True)
class Resume:
    """What the scheduler hands the loop's thread parked at ``point``: at the idle park a
    callable to run there, inside a handle "go", or at a store write "ok" / "fail"."""

    world: World
    point: Point
    command: Callable[[], None] | str


@dataclass(eq=False)
class Prompt:
    index: int
    session_id: str
    seq: int = 0
    events: list[Any] = field(default_factory=list)
    covered: bool = False  # a cancel was issued at or after its accept
    complete_before_cancel: bool = False  # ... when the model had already ended its turn
    run: asyncio.Task[Any] | None = None  # the cell's agent.run() task

    def on_event(self, event: Any) -> None:
        self.events.append(event)

    @property
    def finished(self) -> list[Finished]:
        return [e for e in self.events if isinstance(e, Finished)]


@dataclass(frozen=True)
class Record:
    role: Role
    finish_reason: FinishReason | None
    text: str
    tool_calls: tuple[str, ...]
    tool_results: tuple[tuple[str, str], ...]


class MemoryStore:
    """The store surface the agent uses, in memory, with writes that may fail."""

    def __init__(self, world: World, session_ids: list[str]) -> None:
        self._world = world
        self.sessions = {s: Session(s) for s in session_ids}
        # per session, message id → what was written last: a summary for the checks
        self.records: dict[str, dict[str, Record]] = {s: {} for s in session_ids}
        self._messages: dict[str, dict[str, Message]] = {s: {} for s in session_ids}

    def get_session(self, session_id: str) -> Session:
        return self.sessions[session_id]

    def add_message(self, message: Message) -> Message:
        self._world.write("add_message")
        self.records[message.session_id][message.id] = Record(
            message.role,
            message.finish_reason,
            message.text,
            tuple(c.id for c in message.tool_calls),
            tuple((r.tool_call_id, r.content) for r in message.tool_results),
        )
        self._messages[message.session_id][message.id] = message
        return message

    def update_message(self, message: Message, *, force: bool = False) -> None:
        self.add_message(message)

    def list_messages(self, session_id: str) -> list[Message]:
        return list(self._messages[session_id].values())  # the model double reads no content

    def flush(self) -> None:
        self._world.write("flush")


class CheckedModel(ScriptedModel):
    """The scripted model, checking that no request starts for a turn a cancel covers."""

    def __init__(self, world: World, replies: list[Reply]) -> None:
        super().__init__(replies)
        self._world = world

    async def stream(self, messages: Any, *, system: Any = None, tools: Any = ()) -> Any:
        self._world.starting("a model request", messages[-1].session_id)
        async for event in super().stream(messages, system=system, tools=tools):
            yield event


class CheckedLock:
    """A session lock that preempts the loop's thread before each acquisition."""

    def __init__(self, world: World) -> None:
        self._world = world
        self._owner: greenlet.greenlet | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = greenlet.getcurrent()
        if me is self._world.loop_thread:
            self._world.park("lock")
        if self._owner is me:
            self._world.violation("deadlock: a session lock re-acquired by the thread holding it")
        if self._owner is not None:
            self._world.violation("a session lock is held across a preemption point")
        self._owner = me
        return True

    def release(self) -> None:
        self._owner = None

    def locked(self) -> bool:
        return self._owner is not None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class World:
    """One execution of a scenario, driven action by action."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.session_ids = [f"s{i}" for i in range(len(scenario.prompts))]
        self.prompts_left = list(scenario.prompts)
        self.cancels_left = scenario.cancels
        self.failures_left = scenario.store_failures
        self.failures = 0
        self.violations: list[str] = []
        self.loop_errors: list[dict[str, Any]] = []
        self.prompts: list[Prompt] = []
        self.tool_waits: list[tuple[int, asyncio.Future[None]]] = []
        self.permission_waits: list[tuple[int, asyncio.Future[None]]] = []
        self.held: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.loop = asyncio.new_event_loop()
        self.loop.call_soon_threadsafe = self._hold  # type: ignore[method-assign]
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self.store = MemoryStore(self, self.session_ids)
        replies = itertools.islice(itertools.cycle(scenario.replies), 200)
        self.model = CheckedModel(self, [REPLIES[kind] for kind in replies])
        work = Tool(
            ToolSpec("work", "Work.", {"type": "object"}),
            self._tool,
            changes_state=scenario.permission,
        )
        self.agent = SessionAgent(
            self.model,
            self.store,  # type: ignore[arg-type]
            tools=[work],
            permissions=PermissionPolicy(self) if scenario.permission else None,
        )
        self._install_locks()
        self.closing = False
        self.scheduler = greenlet.getcurrent()
        self.loop_thread = greenlet.greenlet(self._loop_main)
        _WORLDS[self.loop] = self
        # the first harness error seen on the loop's thread, raised again on the scheduler's
        self.harness_error: HarnessError | None = None
        # where the loop's thread is parked: ("idle" | "lock" | "covered" | "write:…", stack)
        self.point: Point = self.loop_thread.switch()

    # -- the loop's thread ---------------------------------------------------------------------

    def _loop_main(self) -> None:
        asyncio.events._set_running_loop(self.loop)
        command = self.park("idle")
        while not self.closing:
            command()
            if not self.closing:
                command = self.park("idle")
        asyncio.events._set_running_loop(None)

    def park(self, kind: str) -> Any:
        """Called on the loop's thread: hand control to the scheduler until it resumes us with
        a :class:`Resume` for this very point; return its command."""
        if self.closing or (kind != "idle" and not self.scenario.preempt):
            return "go"
        point = (kind, *_where())
        asyncio.events._set_running_loop(None)
        try:
            resume = self.scheduler.switch(point)
        finally:
            asyncio.events._set_running_loop(None if self.closing else self.loop)
        if self.closing:
            return "go"
        if (
            not isinstance(resume, Resume)
            or resume.world is not self
            or resume.point != point
            or not _fits(kind, resume.command)
        ):
            self.harness_error = self.harness_error or HarnessError(
                f"the loop's thread, parked at {_show(point)}, was resumed with {resume!r}"
            )
            raise self.harness_error
        return resume.command

    def write(self, what: str) -> None:
        if greenlet.getcurrent() is not self.loop_thread:
            self.violation(f"a store {what} off the loop's thread")
        if self.failures_left and self.park(f"write:{what}") == "fail":
            self.failures_left -= 1
            self.failures += 1
            raise OSError(28, "No space left on device")

    def _hold(self, callback: Callable[..., Any], *args: Any, context: Any = None) -> None:
        self.held.append((callback, args))

    def _install_locks(self) -> None:
        dispatcher = self.agent._dispatch
        make_state = dispatcher.state

        def state(session_id: str):
            state = make_state(session_id)
            if not isinstance(state.lock, CheckedLock):
                state.lock = CheckedLock(self)  # type: ignore[assignment]
            return state

        dispatcher.state = state  # type: ignore[method-assign]

    async def ask(self, request: PermissionRequest) -> Decision:
        """The user's side of a permission prompt: answered Allow by "allow:I"."""
        future = self.loop.create_future()
        self.permission_waits.append((len(self.permission_waits), future))
        await future
        self.park("answer")  # the turn's task has the answer; the tool has not started
        return Decision.ALLOW

    def starting(self, what: str, session_id: str) -> None:
        """NOTHING-STARTS-WHEN-COVERED, checked where a tool or a model request starts."""
        state = self.agent._dispatch._sessions[session_id]
        prompt = state.active.call.observer if state.active is not None else None
        if prompt is not None and prompt.covered:
            self.violation(f"{what} started for prompt {prompt.index}, which a cancel covers")

    async def _tool(self, arguments: dict[str, Any], context: Any) -> ToolResult:
        self.starting("a tool", context.session_id)
        self.park("tool-start")
        future = self.loop.create_future()
        self.tool_waits.append((len(self.tool_waits), future))
        try:
            await future
        except asyncio.CancelledError:
            if self.scenario.absorbing_tool:
                return ToolResult("stopped early")
            raise
        return ToolResult("done")

    # -- actions -------------------------------------------------------------------------------

    def enabled(self) -> list[str]:
        scenario = self.scenario
        actions: list[str] = []
        if self.point[0] == "idle":
            if self.loop._ready:
                actions.append("step")
            actions += [f"prompt:{i}" for i, left in enumerate(self.prompts_left) if left]
            actions += [f"tool:{i}" for i, future in self.tool_waits if not future.done()]
            actions += [f"allow:{i}" for i, future in self.permission_waits if not future.done()]
            if self.cancels_left and scenario.loop_cancels:
                actions += [f"cancel-loop:{i}" for i in range(len(self.session_ids))]
        elif self.point[0].startswith("write") and self.failures_left:
            actions += ["ok", "fail"]
        else:
            actions.append("go")
        if self.cancels_left and scenario.thread_cancels:
            actions += [f"cancel:{i}" for i in range(len(self.session_ids))]
        actions += [f"deliver:{k}" for k in range(len(self.held))]
        return actions

    def do(self, action: str) -> None:
        if action not in self.enabled():
            raise HarnessError(
                f"{action!r} is not enabled at {_show(self.point)} (enabled: {self.enabled()})"
            )
        name, _, argument = action.partition(":")
        if name in ("go", "ok", "fail"):
            self._resume(name)
        elif name == "step":
            self._resume(self._step)
        elif name == "prompt":
            self._resume(lambda: self._prompt(int(argument)))
        elif name == "tool":
            self._resume(lambda: self.tool_waits[int(argument)][1].set_result(None))
        elif name == "allow":
            self._resume(lambda: self.permission_waits[int(argument)][1].set_result(None))
        elif name == "cancel-loop":
            self._resume(lambda: self._cancel(int(argument)))
        elif name == "cancel":
            self._cancel(int(argument))  # here, on the scheduler: another thread
        elif name == "deliver":
            callback, args = self.held.pop(int(argument))
            self.loop.call_soon(callback, *args)
        else:
            raise ValueError(action)

    def _resume(self, command: Callable[[], None] | str) -> None:
        self.point = self.loop_thread.switch(Resume(self, self.point, command))
        if self.harness_error is not None:
            raise self.harness_error

    def _step(self) -> None:
        handle = self.loop._ready.popleft()
        if not handle._cancelled:
            handle._run()

    def _prompt(self, session: int) -> None:
        session_id = self.session_ids[session]
        self.prompts_left[session] -= 1
        prompt = Prompt(len(self.prompts), session_id)
        accepted = self.agent.begin_accepted(session_id)
        prompt.seq = accepted.seq
        self.prompts.append(prompt)  # accepted: from now on a cancel covers it
        call = SessionAgentCall(session_id, f"p{prompt.index}", accepted=accepted, observer=prompt)
        prompt.run = self.loop.create_task(self.agent.run(call), name=f"run-p{prompt.index}")

    def _cancel(self, session: int) -> None:
        session_id = self.session_ids[session]
        self.cancels_left -= 1
        state = self.agent._dispatch._sessions.get(session_id)
        active = state.active if state is not None else None
        complete = active is not None and _model_ended(active.records.messages)
        for prompt in self.prompts:
            if prompt.session_id == session_id and not prompt.finished:
                prompt.covered = True
                if complete and prompt in active.observers:
                    prompt.complete_before_cancel = True
        self.agent.cancel(session_id)

    # -- invariants ----------------------------------------------------------------------------

    def violation(self, message: str) -> None:
        self.violations.append(message)
        raise Violation(message)

    def check_running(self) -> None:
        if self.violations:
            raise Violation(self.violations[0])
        if self.loop_errors:
            raise Violation(f"an exception escaped to the loop: {self.loop_errors[0]}")
        for state in self.agent._dispatch._sessions.values():
            if state.open_accepts < 0 or state.cancel_mark > state.accept_seq:
                raise Violation("accept count or cancel mark out of range")
            if state.queue and state.active is None:
                raise Violation("a queue without an active turn would never drain")
        for prompt in self.prompts:
            finished = prompt.finished
            if len(finished) > 1:
                raise Violation(f"prompt {prompt.index} reached {len(finished)} terminal events")
            if finished and finished[0].reason is FinishReason.CANCELED and not prompt.covered:
                raise Violation(f"prompt {prompt.index}, accepted after every cancel, canceled")

    def check_final(self) -> None:
        self.check_running()
        pending = [t.get_name() for t in asyncio.all_tasks(self.loop)]
        if pending:
            raise Violation(f"deadlock: nothing can run but tasks are pending: {pending}")
        for prompt in self.prompts:
            if len(prompt.finished) != 1:
                raise Violation(f"prompt {prompt.index} has no terminal event")
            if prompt.run is not None and prompt.run.exception() is not None:
                raise Violation(f"prompt {prompt.index}: run() raised {prompt.run.exception()!r}")
            reason = prompt.finished[0].reason
            allowed = {FinishReason.END_TURN}
            if prompt.covered:
                allowed = {FinishReason.CANCELED}
                if prompt.complete_before_cancel:
                    allowed.add(FinishReason.END_TURN)
            if self.failures:
                allowed.add(FinishReason.ERROR)
            if reason not in allowed:
                lost = prompt.covered and reason is not FinishReason.CANCELED
                raise Violation(
                    f"prompt {prompt.index} ended {reason}"
                    + (": a cancel was lost" if lost else f", expected one of {allowed}")
                )
        for session_id, state in self.agent._dispatch._sessions.items():
            if state.open_accepts or state.active is not None or state.queue:
                raise Violation(f"session {session_id} did not return to idle")
        if self.failures:
            return
        for session_id, records in self.store.records.items():
            messages = list(records.values())
            prompts = [p for p in self.prompts if p.session_id == session_id]
            folded = sum(1 for p in prompts if any(isinstance(e, Folded) for e in p.events))
            users = sum(1 for m in messages if m.role is Role.USER)
            terminal = sum(1 for m in messages if m.finish_reason in TERMINAL_REASONS)
            if users != len(prompts) or terminal != len(prompts) - folded:
                raise Violation(
                    f"session {session_id}: {users} prompts and {terminal} terminal records "
                    f"for {len(prompts)} accepted prompts ({folded} folded)"
                )
            results = Counter(call_id for m in messages for call_id, _ in m.tool_results)
            calls = [call_id for m in messages for call_id in m.tool_calls]
            if any(results[c] != 1 for c in calls):
                raise Violation(f"session {session_id}: a tool call without exactly one result")

    # -- the abstract state, for memoisation ---------------------------------------------------

    def signature(self) -> bytes:
        dispatcher = self.agent._dispatch
        sessions = []
        for session_id in self.session_ids:
            state = dispatcher._sessions.get(session_id)
            if state is None:
                sessions.append(None)
                continue
            sessions.append(
                (
                    state.accept_seq,
                    state.open_accepts,
                    state.cancel_mark,
                    _turn_label(state.active),
                    state.active is not None and state.active.task is None,
                    tuple(_turn_label(t) for t in state.queue),
                )
            )
        prompts = [
            (
                p.seq,
                p.covered,
                p.complete_before_cancel,
                tuple(_event_label(e) for e in p.events),
            )
            for p in self.prompts
        ]
        records = [tuple(self.store.records[s].values()) for s in self.session_ids]
        tasks = sorted(
            (_task_label(t), tuple(_frames(t.get_stack()))) for t in asyncio.all_tasks(self.loop)
        )
        state = (
            self.point,
            tuple(self.prompts_left),
            self.cancels_left,
            self.failures_left,
            self.failures,
            tuple(sessions),
            tuple(prompts),
            tuple(records),
            tuple(tasks),
            tuple(_handle_label(h._callback, h._args) for h in self.loop._ready),
            tuple(_handle_label(callback, args) for callback, args in self.held),
            tuple((i, f.done(), f.cancelled()) for i, f in self.tool_waits),
            tuple((i, f.done(), f.cancelled()) for i, f in self.permission_waits),
            len(self.model.requests),
        )
        return hashlib.blake2b(repr(state).encode(), digest_size=16).digest()

    def close(self) -> None:
        """Abandon this world without running any more of it."""
        self.closing = True
        logging.disable(logging.CRITICAL)  # what the abandoned code says on its way out
        if not self.loop_thread.dead:
            with contextlib.suppress(BaseException):
                self.loop_thread.throw(greenlet.GreenletExit)
        asyncio.events._set_running_loop(None)
        abandon_tasks(self.loop)
        self.loop.close()
        _WORLDS.pop(self.loop, None)
        logging.disable(logging.NOTSET)


def abandon_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Close the coroutines of the tasks ``loop`` will never run again (it is closed, or is
    being abandoned): their ``finally`` blocks run now, not whenever the garbage collector
    finds them, in whatever test is running then."""
    for task in asyncio.all_tasks(loop):
        task._log_destroy_pending = False  # type: ignore[attr-defined]
        with contextlib.suppress(BaseException):  # what abandoned code raises on its way out
            task.get_coro().close()


# -- exploring -----------------------------------------------------------------------------------


@dataclass
class Report:
    scenario: Scenario
    states: int = 0  # distinct abstract states visited
    transitions: int = 0  # distinct (state, action) edges
    leaves: int = 0  # distinct final states checked
    interleavings: int = 0  # distinct complete action sequences those edges make
    replays: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"{self.scenario}: {self.interleavings:,} distinct interleavings "
            f"({self.states:,} states, {self.transitions:,} transitions, {self.leaves:,} leaves, "
            f"{self.replays:,} replays) in {self.seconds:.1f} s"
        )


def explore(scenario: Scenario) -> Report:
    """Enumerate every action sequence of ``scenario``; raise Violation with the trace of the
    first one that breaks an invariant, HarnessError if a replay leaves its recorded path."""
    started = time.perf_counter()
    report = Report(scenario)
    edges: dict[bytes, list[bytes]] = {}
    root: bytes | None = None
    # (the path to a branch not yet taken, the state it branches from)
    frontier: list[tuple[tuple[Step, ...], bytes | None]] = [((), None)]
    _patch_covered()
    try:
        while frontier:
            path, parent = frontier.pop()
            world = World(scenario)
            report.replays += 1
            try:
                if path:
                    _replay(world, path[:-1], parent)
                    _act(world, path[-1][1], path)
                while True:
                    actions = world.enabled()
                    if len(actions) == 1:  # no choice here: only branch points are states
                        path += ((world.point, actions[0]),)
                        _act(world, actions[0], path)
                        continue
                    signature = world.signature()
                    if parent is not None:
                        edges[parent].append(signature)
                    else:
                        root = signature
                    if signature in edges:
                        break
                    edges[signature] = []
                    if not actions:
                        _checked(world.check_final, path)
                        report.leaves += 1
                        break
                    frontier.extend(
                        ((*path, (world.point, a)), signature) for a in reversed(actions[1:])
                    )
                    path += ((world.point, actions[0]),)
                    parent = signature
                    _act(world, actions[0], path)
            finally:
                world.close()
    finally:
        _unpatch_covered()
    report.states = len(edges)
    report.transitions = sum(len(children) for children in edges.values())
    report.interleavings = _count_paths(edges, root)
    report.seconds = time.perf_counter() - started
    return report


Step = tuple[Point, str]  # an action and the point the loop's thread was parked at before it


def _replay(world: World, path: tuple[Step, ...], state: bytes | None) -> None:
    """Take ``path`` again on a fresh ``world``, checked when first taken; it must follow the
    recording, point by point, to the same ``state``."""
    for index, (point, action) in enumerate(path):
        if world.point != point:
            raise HarnessError(
                f"the replay left its recorded path at action {index + 1} of {len(path)}, "
                f"{action!r}: recorded at {_show(point)}, now at {_show(world.point)}"
                f"\n  after: {_trace(path[:index])}"
            )
        try:
            world.do(action)  # refuses an action not enabled here
        except HarnessError as error:
            raise HarnessError(f"{error}\n  after: {_trace(path[:index])}") from None
    if state is not None and world.signature() != state:
        raise HarnessError(
            f"the replay followed its recorded path to another state\n  after: {_trace(path)}"
        )


def _act(world: World, action: str, path: tuple[Step, ...]) -> None:
    _checked(lambda: world.do(action), path)
    _checked(world.check_running, path)


def _checked(check: Callable[[], None], path: tuple[Step, ...]) -> None:
    try:
        check()
    except (Violation, HarnessError) as error:
        raise type(error)(f"{error}\n  after: {_trace(path)}") from None


def _trace(path: tuple[Step, ...]) -> str:
    return " ".join(action for _, action in path)


def _count_paths(edges: dict[bytes, list[bytes]], root: bytes | None) -> int:
    """Complete action sequences from ``root`` (the state graph is acyclic: budgets and
    scripts only shrink)."""
    paths: dict[bytes, int] = {}
    stack = [root] if root is not None else []
    while stack:
        node = stack[-1]
        if node in paths:
            stack.pop()
            continue
        pending = [c for c in edges.get(node, []) if c not in paths]
        if pending:
            stack.extend(pending)
            continue
        children = edges.get(node, [])
        paths[node] = sum(paths[c] for c in children) if children else 1
        stack.pop()
    return paths.get(root, 0) if root is not None else 0


# -- preempting the lock-free mark reads ---------------------------------------------------------

_real_covered = dispatch_module.covered


def _parking_covered(turn: Any) -> bool:
    world = _WORLDS.get(turn.loop)
    if world is not None and greenlet.getcurrent() is world.loop_thread:
        world.park("covered")
    return _real_covered(turn)


_WORLDS: dict[asyncio.AbstractEventLoop, World] = {}


def _patch_covered() -> None:
    # agent.py reads the mark itself and through dispatch.stop_if_covered
    agent_module.covered = dispatch_module.covered = _parking_covered


def _unpatch_covered() -> None:
    agent_module.covered = dispatch_module.covered = _real_covered


# -- labels that are the same in every replay ----------------------------------------------------


def _turn_label(turn: Any) -> int | None:
    return None if turn is None else turn.call.observer.index


def _task_label(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    frame = getattr(coro, "cr_frame", None)
    turn = frame.f_locals.get("turn") if frame is not None else None
    if turn is not None and task.get_name().startswith("crush:"):
        return f"drive-p{turn.call.observer.index}"
    return task.get_name()


def _handle_label(callback: Any, args: tuple[Any, ...]) -> tuple[str, ...]:
    owner = getattr(callback, "__self__", None)
    name = getattr(callback, "__qualname__", None) or type(callback).__name__
    if isinstance(owner, asyncio.Task):
        name = f"{_task_label(owner)}.{getattr(callback, '__name__', 'step')}"
    labels = (_task_label(a) if isinstance(a, asyncio.Task) else type(a).__name__ for a in args)
    return (name, *labels)


def _event_label(event: Any) -> str:
    reason = getattr(event, "reason", None)
    return f"{type(event).__name__}:{reason}" if reason else type(event).__name__


def _frames(frames: list[Any]) -> list[tuple[str, int]]:
    return [(f.f_code.co_name, f.f_lineno) for f in frames]


def _fits(kind: str, command: object) -> bool:
    """Is ``command`` one the loop's thread parked at a ``kind`` point can carry out?"""
    if kind == "idle":
        return callable(command)
    if kind.startswith("write"):
        return command in ("ok", "fail")
    return command == "go"


def _show(point: Point) -> str:
    return f"{point[0]} ({' < '.join(point[1:]) or 'outside the package'})"


def _where() -> tuple[str, ...]:
    """The loop thread's code location at a park: its stack within the package."""
    frame = sys._getframe(2)
    where = []
    while frame is not None:
        if "/jupyter_crush/" in frame.f_code.co_filename:
            where.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return tuple(where)


def _model_ended(messages: list[Message]) -> bool:
    assistants = [m for m in messages if m.role is Role.ASSISTANT]
    return bool(assistants) and assistants[-1].finish_reason in TERMINAL_REASONS
