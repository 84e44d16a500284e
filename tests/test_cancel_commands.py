"""The ways a user stops prompts from the kernel, and what ``submit`` holds for them.

One quick test per rule, named for it, in-process on the test IPython shell: ``%crush cancel``
(a session, or ``--all``), ``Crush.cancel_all`` (what the kernel's interrupt and the lab
command call), the interrupt handler a first prompt installs, the run task and the accept
``submit`` holds, its ``yolo`` default, and the agent's shutdown. Each rule here
survived statement-deletion or constant-change mutation under the rest of the quick tests
(scripts/statement_mutation.py).
"""

from __future__ import annotations

import asyncio
import signal
from types import SimpleNamespace

import pytest
from IPython.core.error import UsageError
from support.bounded import BOUND, until, within
from support.interleavings import abandon_tasks
from test_dispatch import assert_idle, eager_task_factory, run_on_a_thread

from jupyter_crush import FinishReason, SessionAgent, SessionAgentCall
from jupyter_crush.core.model import ToolSpec
from jupyter_crush.core.tools import Tool, ToolResult
from jupyter_crush.kernel.submit import submit
from jupyter_crush.magics import current
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall


def held_model() -> tuple[ScriptedModel, list]:
    """A model whose answers each stop after their first token until released."""
    model = ScriptedModel(["first answer"] * 4)
    return model, [model.gate(step=n, after_tokens=1) for n in range(4)]


async def start(crush, session: str, gate):
    """Submit a prompt in a new session ``session`` and wait until its answer is held."""
    view = submit(crush, f"work in {session}", session_ref=session, new=True, wait=False)
    await within(gate.reached())
    return view


def last_reason(crush, view) -> FinishReason | None:
    return crush.store.list_messages(view.session_id)[-1].finish_reason


# -- %crush cancel -----------------------------------------------------------------------------


async def test_crush_cancel_stops_the_current_sessions_prompt(ip):
    crush = current()
    model, gates = held_model()
    crush.use_model(model)
    view = await start(crush, "current", gates[0])
    ip.run_line_magic("crush", "cancel")
    await within(view.wait())
    assert view.phase == "canceled"
    assert last_reason(crush, view) is FinishReason.CANCELED


async def test_crush_cancel_session_stops_that_session_only(ip):
    crush = current()
    model, gates = held_model()
    crush.use_model(model)
    named = await start(crush, "named", gates[0])
    other = await start(crush, "other", gates[1])  # the current session now
    ip.run_line_magic("crush", "cancel named")
    await within(named.wait())
    gates[1].release()
    await within(other.wait())
    assert (named.phase, other.phase) == ("canceled", "done")


async def test_crush_cancel_all_stops_every_sessions_prompt(ip):
    crush = current()
    model, gates = held_model()
    crush.use_model(model)
    views = [await start(crush, name, gate) for name, gate in zip("ab", gates, strict=False)]
    ip.run_line_magic("crush", "cancel --all")
    for view in views:
        await within(view.wait())
    assert [v.phase for v in views] == ["canceled", "canceled"]


def test_crush_cancel_without_a_current_session_says_what_to_do(ip):
    assert current().current_session_id is None
    with pytest.raises(UsageError, match="No current session to cancel; name one or use --all"):
        ip.run_line_magic("crush", "cancel")


# -- Crush.cancel_all: the kernel's interrupt and the lab command ------------------------------


async def test_cancel_all_of_the_kernel_stops_every_session(ip):
    crush = current()
    model, gates = held_model()
    crush.use_model(model)
    views = [await start(crush, name, gate) for name, gate in zip("ab", gates, strict=False)]
    crush.cancel_all()
    for view in views:
        await within(view.wait())
    assert [last_reason(crush, v) for v in views] == [FinishReason.CANCELED] * 2


async def test_a_first_prompt_installs_the_interrupt_handler_that_cancels_every_session(ip):
    crush = current()
    model, gates = held_model()
    crush.use_model(model)
    # As in a kernel, Python's own handler is there first (not the test runner's, which the
    # extension's would pass the interrupt on to).
    runners = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        view = await start(crush, "interrupted", gates[0])
        handler = signal.getsignal(signal.SIGINT)
        # Python's own would raise KeyboardInterrupt here instead of stopping the run.
        assert handler is not signal.default_int_handler, "no interrupt handler installed"
        handler(signal.SIGINT, None)  # the kernel's interrupt (■) while it is idle
        await within(view.wait())
    finally:
        signal.signal(signal.SIGINT, runners)
    assert view.phase == "canceled"


# -- submit ------------------------------------------------------------------------------------


async def test_submit_keeps_a_reference_to_its_run_task_until_it_ends(ip):
    """asyncio keeps only weak references to tasks: a run nobody holds can be collected."""
    crush = current()
    model, gates = held_model()
    crush.use_model(model)
    view = await start(crush, "held", gates[0])
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == f"crush-cell:{view.session_id}"]
    assert task in crush._tasks
    gates[0].release()
    await within(task)
    await asyncio.sleep(0)  # the task's done-callbacks
    assert task not in crush._tasks


def test_submit_that_fails_to_start_its_run_releases_the_accept(ip, crush, monkeypatch):
    import jupyter_crush.kernel.submit as submit_module

    def no_view(name):
        raise RuntimeError("the view cannot be made")

    with monkeypatch.context() as patched:
        patched.setattr(submit_module, "run_view_class", no_view)
        with pytest.raises(RuntimeError, match="cannot be made"):
            submit(crush, "hi", session_ref="broken", new=True)
    assert_idle(crush.agent, crush.current_session_id)
    view = submit(crush, "hi again", session_ref="broken")  # waits: no front end
    assert view.phase == "done"


def test_submit_asks_before_a_state_changing_tool_unless_yolo_is_given(ip, crush):
    ran = []

    async def write(arguments, context):
        ran.append(arguments)
        return ToolResult("written")

    crush.tools = [Tool(ToolSpec("write", "Write.", {"type": "object"}), write, changes_state=True)]
    crush.use_model(ScriptedModel([Reply(tool_calls=[ToolCall("write", {"n": 1})]), "done"]))
    view = submit(crush, "write something", session_ref="careful", new=True)
    assert ran == []  # no --yolo: asked, and headless runs deny
    assert view.phase == "canceled"
    assert crush.store.list_messages(view.session_id)[-1].finish.message.startswith(
        "Permission denied for write"
    )


async def test_every_prompt_queued_behind_a_turn_runs_after_it_in_order(store):
    session = store.create_session()
    model, gates = held_model()
    agent = SessionAgent(model, store)
    running = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first")))
    await within(gates[0].reached())
    ends = []
    for prompt in ("second", "third"):
        observer = SimpleNamespace(on_event=lambda e, p=prompt: ends.append((p, type(e).__name__)))
        assert await agent.run(SessionAgentCall(session.id, prompt, observer=observer)) is None
    gates[0].release()
    await within(running)
    for gate in gates[1:3]:
        await within(gate.reached())
        gate.release()
    await until(lambda: ("third", "Finished") in ends)
    assert [p for p, event in ends if event == "Finished"] == ["second", "third"]
    assert_idle(agent, session.id)


# -- the agent's shutdown (kernel shutdown and restart) ----------------------------------------


async def test_shutdown_covers_a_prompt_accepted_before_it(store):
    session = store.create_session()
    model = ScriptedModel(["never asked"])
    agent = SessionAgent(model, store)
    accepted = agent.begin_accepted(session.id)
    agent.shutdown()
    result = await within(agent.run(SessionAgentCall(session.id, "late", accepted=accepted)))
    assert result.reason is FinishReason.CANCELED
    assert model.requests == []


async def test_shutdown_clears_the_queue_it_records_as_canceled(store):
    session = store.create_session()
    model, gates = held_model()
    agent = SessionAgent(model, store)
    running = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first")))
    await within(gates[0].reached())
    assert await agent.run(SessionAgentCall(session.id, "second")) is None  # queued
    agent.shutdown()
    assert agent.queued_prompts(session.id) == 0
    assert (await within(running)).reason is FinishReason.CANCELED
    assert_idle(agent, session.id)
    assert len(model.requests) == 1  # the queued prompt never reached the model


# -- a turn stranded on a closed loop (asyncio.run returned with it active) --------------------


@pytest.mark.parametrize("asked_first", ["is_session_busy", "queued_prompts"])
def test_a_session_whose_turns_a_closed_loop_stranded_is_idle_when_next_asked(store, asked_first):
    """What %crush sessions shows (running, queued) says idle at its first look."""
    session = store.create_session()
    model, gates = held_model()
    agent = SessionAgent(model, store)
    statuses = []
    agent.add_status_listener(statuses.append)  # how a running view hears of its queue
    loop = asyncio.new_event_loop()
    first = loop.create_task(agent.run(SessionAgentCall(session.id, "first")))
    loop.run_until_complete(gates[0].reached())
    loop.run_until_complete(agent.run(SessionAgentCall(session.id, "second")))  # queued
    loop.close()
    try:
        if asked_first == "is_session_busy":
            assert not agent.is_session_busy(session.id)
        else:
            assert agent.queued_prompts(session.id) == 0
        assert_idle(agent, session.id)
        assert statuses[-1].running == []  # the listeners hear the session went idle
        assert not first.done()  # stranded, never run again
    finally:
        abandon_tasks(loop)


# -- the cancel handle: a cancel before the turn's task is registered -------------------------


def test_a_cancel_before_the_turns_task_is_registered_interrupts_its_first_await(store):
    """With an eager task factory the turn's first step runs inside create_task, before its
    task is the session's cancel handle: a Stop then (here, on the Started event) only raises
    the mark, and the task must be canceled once registered, or the turn waits out whatever
    it awaits first (the MCP servers' tool refresh, which can take as long as a server)."""
    session = store.create_session()
    agent = SessionAgent(ScriptedModel(["never asked"]), store)

    class HeldRefresh:
        async def refresh(self, tools):
            await asyncio.Event().wait()  # a server that does not answer

        def unknown_tool(self, name):
            return None

    agent.tool_sources.append(HeldRefresh())

    def cancel_on_started(event):
        if type(event).__name__ == "Started":
            agent.cancel(session.id)

    async def main():
        asyncio.get_running_loop().set_task_factory(eager_task_factory)
        observer = SimpleNamespace(on_event=cancel_on_started)
        running = asyncio.ensure_future(
            agent.run(SessionAgentCall(session.id, "hi", observer=observer))
        )
        # Not within(): its own cancel at the bound would end the turn canceled too.
        await asyncio.wait([running], timeout=BOUND)
        if not running.done():
            running.cancel()
            await asyncio.wait([running])
            raise AssertionError("the Stop did not interrupt the turn's first await")
        return running.result()

    assert run_on_a_thread(main, timeout=30).reason is FinishReason.CANCELED
    assert agent.model.requests == []
