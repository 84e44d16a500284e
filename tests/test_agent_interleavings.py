"""Random interleavings of accept / run / cancel (from any thread) / loop steps.

Cancels from another thread may have their delivery held (the click's
``call_soon_threadsafe`` not yet on the loop) and released later as its own action; a tool
may absorb cancellation; a state-changing tool asks for permission (the real
PermissionPolicy) and waits until an action answers Allow, so a Stop may land between the
answer and the tool's start; store calls may fail. After every action the dispatch
invariants are checked, among them that no tool and no model request started for a turn a
cancel covers; at the end every prompt must have reached exactly one terminal record, within
a bounded time (no deadlock), and the sessions must be idle.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_crush import FinishReason, SessionAgent, SessionAgentCall, TranscriptStore
from jupyter_crush.core.events import Finished
from jupyter_crush.core.message import TERMINAL_REASONS, Role
from jupyter_crush.core.model import ModelError, ToolSpec
from jupyter_crush.core.tools import Decision, Tool, ToolResult
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall
from jupyter_crush.tools.permissions import PermissionPolicy

SESSIONS = 3

WORDS = " ".join(f"word{i}" for i in range(20))  # long enough to be caught mid-stream
REPLY_KINDS = {
    "text": Reply(text=WORDS),
    "tool": Reply(text="checking", tool_calls=[ToolCall("echo", {"text": "x"})]),
    "two_tools": Reply(
        tool_calls=[ToolCall("echo", {"text": "1"}), ToolCall("echo", {"text": "2"})]
    ),
    "error": Reply(text="oops", error=ModelError("server exploded", status_code=500)),
    "absorb": Reply(tool_calls=[ToolCall("absorb")]),
    "ask": Reply(tool_calls=[ToolCall("change", {"text": "x"})]),
}
STORE_CALLS = ("add_message", "update_message", "flush", "list_messages")

# ("cancel", session, from another thread, its delivery held until a "deliver")
cancel = st.tuples(st.just("cancel"), st.integers(0, SESSIONS - 1), st.booleans(), st.booleans())
action = st.one_of(
    st.tuples(st.just("accept"), st.integers(0, SESSIONS - 1)),
    st.tuples(st.just("run"), st.integers(0, 50)),
    st.tuples(st.just("accept_and_run"), st.integers(0, SESSIONS - 1)),
    cancel,
    cancel,  # twice: cancels should land in every window, often
    st.tuples(st.just("deliver"), st.integers(0, 50)),
    st.tuples(st.just("allow"), st.integers(0, 50)),
    st.tuples(st.just("step"), st.integers(1, 6)),
    st.tuples(st.just("fail"), st.sampled_from(STORE_CALLS), st.integers(1, 3)),
)


@dataclass(eq=False)
class Prompt:
    session_id: str
    seq: int
    finished: list[Finished] = field(default_factory=list)
    covered: bool = False  # some cancel was issued at or after its accept
    complete_before_cancel: bool = False

    def on_event(self, event) -> None:
        if isinstance(event, Finished):
            self.finished.append(event)


async def echo(arguments, context):
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return ToolResult(f"echo {arguments.get('text')}")


async def absorb(arguments, context):
    try:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    except asyncio.CancelledError:  # swallowed: the turn goes on as if nothing happened
        return ToolResult("stopped early")
    return ToolResult("done")


ECHO = Tool(ToolSpec("echo", "Echo.", {"type": "object"}), echo)
ABSORB = Tool(ToolSpec("absorb", "Absorb.", {"type": "object"}), absorb)
CHANGE = Tool(ToolSpec("change", "Change.", {"type": "object"}), echo, changes_state=True)


class Broker:
    """The user's side of permission prompts: each waits for an "allow" action."""

    def __init__(self) -> None:
        self.open: list[asyncio.Future[Decision]] = []
        self.at_once = False  # while draining: every prompt is answered as it opens

    async def ask(self, request) -> Decision:
        answer = asyncio.get_running_loop().create_future()
        if self.at_once:
            answer.set_result(Decision.ALLOW)
        self.open.append(answer)
        return await answer

    def allow(self, index: int) -> None:
        waiting = [answer for answer in self.open if not answer.done()]
        if waiting:
            waiting[index % len(waiting)].set_result(Decision.ALLOW)


class Starts:
    """NOTHING-STARTS-WHEN-COVERED, checked as each tool and model request starts."""

    def __init__(self) -> None:
        self.agent: SessionAgent | None = None
        self.violations: list[str] = []

    def starting(self, what: str, session_id: str) -> None:
        assert self.agent is not None
        active = self.agent._dispatch.state(session_id).active
        if active is not None and active.call.observer.covered:
            self.violations.append(f"{what} started for a turn a cancel covers")

    def tool(self, tool: Tool) -> Tool:
        async def run(arguments, context):
            self.starting(f"tool {tool.name}", context.session_id)
            return await tool.run(arguments, context)

        return Tool(tool.spec, run, changes_state=tool.changes_state)

    def model(self, model: ScriptedModel):
        starts = self

        class Checked:
            name, provider = model.name, model.provider

            async def stream(self, messages, *, system=None, tools=()):
                starts.starting("a model request", messages[-1].session_id)
                async for event in model.stream(messages, system=system, tools=tools):
                    yield event

        return Checked()


class StoreFaults:
    """Makes the next ``count`` calls of a store method raise OSError."""

    def __init__(self, store: TranscriptStore) -> None:
        self.left = dict.fromkeys(STORE_CALLS, 0)
        self.failed = 0
        for name in STORE_CALLS:
            setattr(store, name, self._failing(name, getattr(store, name)))

    def _failing(self, name, real):
        def call(*args, **kwargs):
            if self.left[name]:
                self.left[name] -= 1
                self.failed += 1
                raise OSError(5, "Input/output error")
            return real(*args, **kwargs)

        return call


def active_turn_is_complete(agent: SessionAgent, session_id: str) -> bool:
    turn = agent._dispatch.state(session_id).active
    if turn is None:
        return False
    assistants = [m for m in turn.records.messages if m.role is Role.ASSISTANT]
    return bool(assistants) and assistants[-1].finish_reason in TERMINAL_REASONS


INTERLEAVINGS = given(
    st.lists(action, max_size=60), st.lists(st.sampled_from(sorted(REPLY_KINDS)), min_size=1)
)
SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


@settings(max_examples=150, **SETTINGS)
@INTERLEAVINGS
def test_random_interleavings_keep_the_invariants(actions, reply_kinds):
    check_interleaving(actions, reply_kinds)


@pytest.mark.slow
@settings(max_examples=5000, **SETTINGS)
@INTERLEAVINGS
def test_many_random_interleavings_keep_the_invariants(actions, reply_kinds):
    check_interleaving(actions, reply_kinds)


def check_interleaving(actions, reply_kinds) -> None:
    directory = tempfile.mkdtemp()
    loop = asyncio.new_event_loop()
    held = []  # cross-thread deliveries not yet on the loop
    real_threadsafe = loop.call_soon_threadsafe
    holding = threading.local()  # set on a canceling thread whose delivery is held

    def call_soon_threadsafe(callback, *args, context=None):
        if getattr(holding, "on", False):
            held.append((callback, args))
            return None
        return real_threadsafe(callback, *args, context=context)

    loop.call_soon_threadsafe = call_soon_threadsafe
    try:
        store = TranscriptStore(directory)
        session_ids = [store.create_session(f"s{i}").id for i in range(SESSIONS)]
        faults = StoreFaults(store)
        replies = [REPLY_KINDS[reply_kinds[i % len(reply_kinds)]] for i in range(400)]
        broker, starts = Broker(), Starts()
        agent = SessionAgent(
            starts.model(ScriptedModel(replies)),
            store,
            tools=[starts.tool(t) for t in (ECHO, ABSORB, CHANGE)],
            permissions=PermissionPolicy(broker),
        )
        starts.agent = agent
        pending = []  # (AcceptedRun, Prompt) accepted, run() not yet called
        prompts: list[Prompt] = []
        tasks = []

        def start(prompt: Prompt, accepted) -> None:
            call = SessionAgentCall(prompt.session_id, "q", accepted=accepted, observer=prompt)
            tasks.append(loop.create_task(agent.run(call)))

        for act in actions:
            kind = act[0]
            if kind == "accept":
                accepted = agent.begin_accepted(session_ids[act[1]])
                prompt = Prompt(accepted.session_id, accepted.seq)
                prompts.append(prompt)
                pending.append((accepted, prompt))
            elif kind == "run" and pending:
                accepted, prompt = pending.pop(act[1] % len(pending))
                start(prompt, accepted)
            elif kind == "accept_and_run":
                session_id = session_ids[act[1]]
                prompt = Prompt(session_id, seq=-1)
                prompts.append(prompt)
                accepted = agent.begin_accepted(session_id)
                prompt.seq = accepted.seq
                start(prompt, accepted)
                loop.run_until_complete(asyncio.sleep(0))  # let run() decide: active or queued
            elif kind == "cancel":
                session_id = session_ids[act[1]]
                complete = active_turn_is_complete(agent, session_id)
                active = agent._dispatch.state(session_id).active
                for prompt in prompts:
                    if prompt.session_id == session_id and not prompt.finished:
                        prompt.covered = True
                        if complete and prompt in active.observers:
                            prompt.complete_before_cancel = True
                if act[2]:

                    def cancel_from_a_thread(session_id=session_id, hold=act[3]):
                        holding.on = hold
                        agent.cancel(session_id)

                    thread = threading.Thread(target=cancel_from_a_thread)
                    thread.start()
                    thread.join()
                else:
                    agent.cancel(session_id)
            elif kind == "deliver" and held:
                callback, args = held.pop(act[1] % len(held))
                real_threadsafe(callback, *args)
            elif kind == "allow":
                broker.allow(act[1])
            elif kind == "fail":
                faults.left[act[1]] += act[2]
            elif kind == "step":
                for _ in range(act[1]):
                    loop.run_until_complete(asyncio.sleep(0))
            check_running_invariants(agent, session_ids, prompts)
            assert not starts.violations, starts.violations[0]

        for accepted, prompt in pending:  # every accept ends up run
            start(prompt, accepted)
        for callback, args in held:  # every click reaches the loop in the end
            real_threadsafe(callback, *args)
        broker.at_once = True  # every prompt is answered in the end
        for answer in broker.open:
            if not answer.done():
                answer.set_result(Decision.ALLOW)
        loop.run_until_complete(drain(agent, session_ids, tasks))
        faults.left = dict.fromkeys(STORE_CALLS, 0)
        check_final_invariants(agent, store, session_ids, prompts, faults.failed)
        assert not starts.violations, starts.violations[0]
        store.close()
    finally:
        loop.close()
        shutil.rmtree(directory, ignore_errors=True)


async def drain(agent, session_ids, tasks) -> None:
    async def settled():
        while any(not t.done() for t in tasks) or any(
            agent.is_session_busy(s) for s in session_ids
        ):
            await asyncio.sleep(0.001)

    await asyncio.wait_for(settled(), timeout=20)  # a hang here is a deadlock
    for task in tasks:
        task.result()  # no run() raised


def check_running_invariants(agent, session_ids, prompts) -> None:
    for session_id in session_ids:
        state = agent._dispatch.state(session_id)
        assert state.open_accepts >= 0
        assert state.cancel_mark <= state.accept_seq
        if state.queue:
            assert state.active is not None, "a queue without an active turn would never drain"
    for prompt in prompts:
        assert len(prompt.finished) <= 1, "a prompt reached two terminal records"
        if prompt.finished and prompt.finished[0].reason is FinishReason.CANCELED:
            assert prompt.covered, "a prompt accepted after every cancel was canceled"


def check_final_invariants(agent, store, session_ids, prompts, store_failures) -> None:
    check_running_invariants(agent, session_ids, prompts)
    for prompt in prompts:
        assert len(prompt.finished) == 1, "every accepted prompt ends in exactly one record"
        reason = prompt.finished[0].reason
        assert reason in {FinishReason.END_TURN, FinishReason.ERROR, FinishReason.CANCELED}
        if prompt.covered and not prompt.complete_before_cancel:
            # a store failure while recording the cancel makes it an error saying so
            lost = (
                {FinishReason.END_TURN}
                if store_failures
                else {FinishReason.END_TURN, FinishReason.ERROR}
            )
            assert reason not in lost, "a cancel was lost"
    for session_id in session_ids:
        state = agent._dispatch.state(session_id)
        assert state.open_accepts == 0
        assert state.active is None and not state.queue
    if store_failures:
        return  # what the store holds is the store's business (each turn says what it lost)
    for session_id in session_ids:
        messages = store.list_messages(session_id)
        calls = {c.id for m in messages for c in m.tool_calls}
        results = {r.tool_call_id for m in messages for r in m.tool_results}
        assert calls <= results, "a tool call sent to the model has no result"
        users = [m for m in messages if m.role is Role.USER]
        assert len(users) == sum(1 for p in prompts if p.session_id == session_id)
        if messages:
            terminal = [m for m in messages if m.finish_reason in TERMINAL_REASONS]
            assert terminal, "the session's last turn has no terminal record"
