"""A turn's records are on disk when the agent says the turn ended, read back from the files.

The writing store holds streamed updates back for an hour, so only what the agent forces or
flushes reaches the disk; every check opens a new TranscriptStore on the same directory (or
kills the writing process with SIGKILL first, see tests/support/turn_writer.py) and reads what is
there.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.bounded import within

from jupyter_crush import FinishReason, Role, SessionAgent, SessionAgentCall, TranscriptStore
from jupyter_crush.core.message import CANCELED_MESSAGE
from jupyter_crush.store.transcript import TOOL_INTERRUPTED_MESSAGE
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall

HOLD_BACK = 3600.0
TURN_WRITER = Path(__file__).parent / "support" / "turn_writer.py"


@pytest.fixture
def writer(tmp_path):
    store = TranscriptStore(tmp_path / "store", flush_interval=HOLD_BACK)
    yield store
    store.close()


def on_disk(store: TranscriptStore, session_id: str) -> list[tuple[Role, str, str | None]]:
    """(role, text, finish reason) of each message, as a new store reads them from disk."""
    with TranscriptStore(store.path) as reader:
        return [
            (m.role, m.text, m.finish_reason and str(m.finish_reason))
            for m in reader.list_messages(session_id)
        ]


@pytest.mark.parametrize(("after_tokens", "partial"), [(3, "one two three"), (0, "")])
async def test_a_canceled_turn_is_on_disk_when_run_returns(writer, after_tokens, partial):
    session = writer.create_session()
    model = ScriptedModel(["one two three four five"])
    gate = model.gate(step=0, after_tokens=after_tokens)
    agent = SessionAgent(model, writer)
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "count")))
    await within(gate.reached())
    agent.cancel(session.id)
    assert (await within(run)).reason is FinishReason.CANCELED
    assert on_disk(writer, session.id) == [
        (Role.USER, "count", None),
        (Role.ASSISTANT, partial, "canceled"),
    ]
    with TranscriptStore(writer.path) as reader:
        assert reader.list_messages(session.id)[-1].finish.message == CANCELED_MESSAGE


async def test_a_finished_turn_is_on_disk_when_run_returns(writer):
    session = writer.create_session()
    agent = SessionAgent(ScriptedModel(["the whole answer"]), writer)
    assert (
        await within(agent.run(SessionAgentCall(session.id, "ask")))
    ).reason is FinishReason.END_TURN
    assert on_disk(writer, session.id) == [
        (Role.USER, "ask", None),
        (Role.ASSISTANT, "the whole answer", "end_turn"),
    ]


async def test_a_canceled_tool_step_is_on_disk_when_run_returns(writer):
    session = writer.create_session()
    model = ScriptedModel([Reply(text="calling", tool_calls=[ToolCall("echo")])])
    gate = model.gate(step=0, after_tokens=2)  # the call has started, not ended
    agent = SessionAgent(model, writer)
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "go")))
    await within(gate.reached())
    agent.cancel(session.id)
    await within(run)
    with TranscriptStore(writer.path) as reader:
        _, assistant, results = reader.list_messages(session.id)
    assert assistant.finish_reason is FinishReason.CANCELED
    assert [c.finished for c in assistant.tool_calls] == [True]
    assert [r.tool_call_id for r in results.tool_results] == ["call_0_0"]


async def test_shutdown_leaves_every_turn_it_records_on_disk(writer):
    session = writer.create_session()
    model = ScriptedModel(["one two three four five", "never"])
    gate = model.gate(step=0, after_tokens=3)
    agent = SessionAgent(model, writer)
    first = asyncio.create_task(agent.run(SessionAgentCall(session.id, "first")))
    await within(gate.reached())
    await within(agent.run(SessionAgentCall(session.id, "queued")))
    agent.shutdown()
    assert on_disk(writer, session.id) == [
        (Role.USER, "first", None),
        (Role.ASSISTANT, "one two three", "canceled"),
        (Role.USER, "queued", None),
        (Role.ASSISTANT, "", "canceled"),
    ]
    await within(first)


# -- a writer killed with SIGKILL -----------------------------------------------------------


def killed_at(point: str, path: Path) -> str:
    """Run support/turn_writer.py to ``point``, kill it with SIGKILL; return the session id."""
    child = subprocess.Popen(
        [sys.executable, str(TURN_WRITER), str(path), point], stdout=subprocess.PIPE, text=True
    )
    try:
        session_id = child.stdout.readline().strip()
        assert child.stdout.readline() == "reached\n", f"turn_writer stopped before {point}"
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    return session_id


def read_back(path: Path, session_id: str) -> list:
    with TranscriptStore(path) as reader:
        return reader.list_messages(session_id)


def test_a_canceled_turn_survives_a_kill_right_after_run_returns(tmp_path):
    session_id = killed_at("canceled", tmp_path / "store")
    user, assistant = read_back(tmp_path / "store", session_id)
    assert (user.text, assistant.text) == ("count", "one two three")
    assert (assistant.finish_reason, assistant.finish.message) == (
        FinishReason.CANCELED,
        CANCELED_MESSAGE,
    )


def test_turns_recorded_at_shutdown_survive_a_kill_right_after(tmp_path):
    session_id = killed_at("shutdown", tmp_path / "store")
    messages = read_back(tmp_path / "store", session_id)
    assert [(m.role, m.text) for m in messages] == [
        (Role.USER, "count"),
        (Role.ASSISTANT, "one two three"),
        (Role.USER, "queued"),
        (Role.ASSISTANT, ""),
    ]
    assert {(m.finish_reason, m.finish.message) for m in messages[1::2]} == {
        (FinishReason.CANCELED, "Kernel shut down")
    }


def test_a_tool_result_survives_a_kill_while_the_next_call_runs(tmp_path):
    session_id = killed_at("tool-done", tmp_path / "store")
    _, calls, results, settled = read_back(tmp_path / "store", session_id)
    assert [c.name for c in calls.tool_calls] == ["echo", "hold"]
    assert [(r.content, r.is_error) for r in results.tool_results] == [("echo: ping", False)]
    # the call the kill cut short is answered by the store that reads the records back
    assert [(r.content, r.is_error) for r in settled.tool_results] == [
        (TOOL_INTERRUPTED_MESSAGE, True)
    ]
