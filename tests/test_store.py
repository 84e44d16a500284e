"""The transcript store on real files: round trips, coalescing, durability, crashes, queries."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tinydb import Query

import jupyter_crush.store.transcript as store_module
from jupyter_crush.core.message import (
    FinishPart,
    FinishReason,
    Message,
    ReasoningPart,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from jupyter_crush.store.storage import Journal, StoreError
from jupyter_crush.store.transcript import (
    KERNEL_STOPPED_MESSAGE,
    TOOL_INTERRUPTED_MESSAGE,
    TranscriptStore,
    TruncatedTranscriptWarning,
    UnknownMessageError,
    UnknownSessionError,
)

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def appends(monkeypatch):
    """Every journal append, as (file name, number of records)."""
    calls: list[tuple[str, int]] = []
    real = Journal.append

    def counting(self, payload, *, fsync):
        calls.append((self.path.name, payload.count(b"\n")))
        return real(self, payload, fsync=fsync)

    monkeypatch.setattr(Journal, "append", counting)
    return calls


def message_writes(calls, session_id: str) -> int:
    return sum(n for name, n in calls if name == f"{session_id}.jsonl")


def assistant(session_id: str, text: str = "") -> Message:
    return Message(session_id, Role.ASSISTANT, [TextPart(text)] if text else [])


def run_child(code: str, *args: str, **kwargs) -> subprocess.Popen:
    script = f"import sys\nsys.path.insert(0, {str(REPO)!r})\n" + textwrap.dedent(code)
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


# -- round trips and ordering -------------------------------------------------


def test_every_part_type_round_trips_through_the_disk(tmp_path):
    path = tmp_path / "store"
    with TranscriptStore(path) as store:
        session = store.create_session("parts")
        message = Message(
            session.id,
            Role.ASSISTANT,
            [
                ReasoningPart("thinking…", signature="sig", started_at=1.5, finished_at=2.5),
                TextPart("answer with ünïcode and a\nnewline"),
                ToolCallPart("call-1", "run_code", '{"code": "1+1"}', finished=True),
                ToolResultPart("call-1", "run_code", "2", metadata={"ms": 3, "nested": [1]}),
                FinishPart(FinishReason.END_TURN, "done", "details", time=5.0),
            ],
            model="gpt-4o",
            provider="openai",
            usage=Usage(10, 20, 30, 40),
            cost=0.25,
        )
        store.add_message(message)
    with TranscriptStore(path) as reopened:
        (loaded,) = reopened.list_messages(session.id)
    assert loaded == message
    assert loaded.finish_reason is FinishReason.END_TURN


def test_messages_keep_the_order_they_were_added_in(tmp_path, store):
    session = store.create_session()
    first = store.add_message(Message(session.id, Role.USER, [TextPart("one")]))
    second = store.add_message(assistant(session.id, "two"))
    third = store.add_message(Message(session.id, Role.USER, [TextPart("three")]))
    first.parts[0].text = "one, edited"
    store.update_message(first, force=True)
    expected = [first.id, second.id, third.id]
    assert [m.id for m in store.list_messages(session.id)] == expected
    assert store.list_messages(session.id)[0].text == "one, edited"
    with TranscriptStore(store.path) as reopened:
        assert [m.id for m in reopened.list_messages(session.id)] == expected
        assert reopened.get_message(session.id, first.id).text == "one, edited"


def test_returned_messages_are_copies(store):
    session = store.create_session()
    message = store.add_message(Message(session.id, Role.USER, [TextPart("mine")]))
    message.parts[0].text = "changed without telling the store"
    assert store.get_message(session.id, message.id).text == "mine"
    store.list_messages(session.id)[0].parts.clear()
    assert store.get_message(session.id, message.id).text == "mine"


def test_sessions_are_listed_most_recently_updated_first(store):
    older = store.create_session("older")
    newer = store.create_session("newer")
    assert [s.id for s in store.list_sessions()] == [newer.id, older.id]
    store.add_message(Message(older.id, Role.USER, [TextPart("bump")]))
    assert [s.id for s in store.list_sessions()] == [older.id, newer.id]
    assert store.has_session(older.id)
    assert store.get_session(older.id).title == "older"


def test_session_totals_follow_adds_and_updates(tmp_path):
    path = tmp_path / "store"
    with TranscriptStore(path) as store:
        session = store.create_session()
        store.add_message(Message(session.id, Role.USER, [TextPart("q")]))
        reply = assistant(session.id, "a")
        reply.usage, reply.cost = Usage(100, 5, 1, 2), 0.5
        store.add_message(reply)
        reply.usage, reply.cost = Usage(100, 50, 1, 2), 0.75
        store.update_message(reply, force=True)
        other = assistant(session.id, "b")
        other.usage, other.cost = Usage(1, 1, 0, 0), None
        store.add_message(other)
        totals = store.get_session(session.id)
        assert totals.usage == Usage(101, 51, 1, 2)
        assert totals.cost == pytest.approx(0.75)
        assert totals.message_count == 3
    with TranscriptStore(path) as reopened:
        # from the session index, before the journal is read
        assert reopened.get_session(session.id).usage == Usage(101, 51, 1, 2)
        assert reopened.list_sessions()[0].message_count == 3


def test_session_totals_are_repaired_when_the_index_record_was_lost(tmp_path):
    path = tmp_path / "store"
    with TranscriptStore(path) as store:
        session = store.create_session()
        reply = assistant(session.id, "a")
        reply.usage = Usage(7, 8, 0, 0)
        reply.add_finish(FinishReason.END_TURN)  # nothing to settle: only the repair writes
        store.add_message(reply)
    index = path / "sessions.jsonl"
    lines = index.read_bytes().splitlines(keepends=True)
    index.write_bytes(b"".join(lines[:1]))  # as if killed between journal and index write
    with TranscriptStore(path) as reopened:
        assert reopened.get_session(session.id).message_count == 0  # index only
        reopened.list_messages(session.id)
        assert reopened.get_session(session.id).usage == Usage(7, 8, 0, 0)
    with TranscriptStore(path) as again:
        assert again.get_session(session.id).message_count == 1


# -- coalescing, forcing, flushing --------------------------------------------


def test_streamed_updates_are_coalesced_per_flush_interval(tmp_path, clock, appends):
    with TranscriptStore(tmp_path / "s", flush_interval=0.1, clock=clock) as store:
        session = store.create_session()
        reply = store.add_message(assistant(session.id))
        assert message_writes(appends, session.id) == 1
        for token in range(50):
            reply.append_text(f"t{token} ")
            store.update_message(reply)
            clock.now += 0.001
        assert message_writes(appends, session.id) == 1  # all within one interval
        assert store.list_messages(session.id)[0].text == reply.text  # pending is visible
        clock.now += 0.1
        reply.append_text("late")
        store.update_message(reply)
        assert message_writes(appends, session.id) == 2
        store.update_message(reply)
        assert message_writes(appends, session.id) == 2
        with open(store.path / "messages" / f"{session.id}.jsonl", "rb") as f:
            on_disk = json.loads(f.read().splitlines()[-1])
        assert "".join(p["text"] for p in on_disk["parts"]) == reply.text


def test_force_writes_at_once_and_flush_writes_what_is_pending(tmp_path, clock, appends):
    path = tmp_path / "s"
    store = TranscriptStore(path, flush_interval=10, clock=clock)
    session = store.create_session()
    reply = store.add_message(assistant(session.id))
    reply.append_text("partial")
    store.update_message(reply)
    assert message_writes(appends, session.id) == 1
    reply.add_finish(FinishReason.END_TURN)
    store.update_message(reply, force=True)
    assert message_writes(appends, session.id) == 2
    reply.append_text(" and more")
    store.update_message(reply)
    assert message_writes(appends, session.id) == 2
    store.flush()
    assert message_writes(appends, session.id) == 3
    store.flush()
    assert message_writes(appends, session.id) == 3  # nothing pending, nothing written
    reply.append_text("!")
    store.update_message(reply)
    store.close()
    store.close()  # idempotent
    assert message_writes(appends, session.id) == 4
    with TranscriptStore(path) as reopened:
        assert reopened.list_messages(session.id)[0].text == "partial and more!"


def test_pending_updates_are_written_at_interpreter_exit(tmp_path):
    path = tmp_path / "store"
    child = run_child(
        """
        from jupyter_crush.core.message import Message, Role
        from jupyter_crush.store.transcript import TranscriptStore
        store = TranscriptStore(sys.argv[1], flush_interval=3600)
        session = store.create_session(session_id="exit")
        reply = store.add_message(Message("exit", Role.ASSISTANT))
        for i in range(100):
            reply.append_text(str(i % 10))
            store.update_message(reply)
        # no flush, no close: the interpreter exits normally
        """,
        str(path),
    )
    _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    with TranscriptStore(path) as reopened:
        (reply,) = reopened.list_messages("exit")
    assert reply.text == "0123456789" * 10


def test_a_store_dropped_without_close_still_writes_its_pending_updates(tmp_path, clock):
    path = tmp_path / "s"
    store = TranscriptStore(path, flush_interval=3600, clock=clock)
    session = store.create_session()
    reply = store.add_message(assistant(session.id))
    reply.append_text("kept")
    store.update_message(reply)
    del store
    gc.collect()
    with TranscriptStore(path) as reopened:
        assert reopened.list_messages(session.id)[0].text == "kept"


async def test_pending_updates_reach_disk_on_the_event_loop_without_another_write(tmp_path):
    path = tmp_path / "s"
    store = TranscriptStore(path, flush_interval=0.01)
    session = store.create_session()
    reply = store.add_message(assistant(session.id))
    reply.append_text("one")
    store.update_message(reply, force=True)
    reply.append_text(" two")
    store.update_message(reply)  # within the interval: pending, a timer is armed
    journal = path / "messages" / f"{session.id}.jsonl"
    for _ in range(500):
        if b"one two" in journal.read_bytes():
            break
        await asyncio.sleep(0.01)
    assert b"one two" in journal.read_bytes()
    store.close()


def test_updates_and_flushes_from_two_threads(tmp_path):
    path = tmp_path / "s"
    store = TranscriptStore(path, flush_interval=0.001)
    session = store.create_session()
    reply = store.add_message(assistant(session.id))
    stop = threading.Event()

    def flusher():
        while not stop.is_set():
            store.flush()

    thread = threading.Thread(target=flusher)
    thread.start()
    try:
        for i in range(2000):
            reply.append_text(str(i % 10))
            store.update_message(reply)
    finally:
        stop.set()
        thread.join()
    store.close()
    with TranscriptStore(path) as reopened:
        assert reopened.list_messages(session.id)[0].text == reply.text


def test_a_long_stream_keeps_its_journal_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "COMPACT_MIN_BYTES", 4096)
    path = tmp_path / "s"
    with TranscriptStore(path, flush_interval=0) as store:
        session = store.create_session()
        store.add_message(Message(session.id, Role.USER, [TextPart("go")]))
        reply = store.add_message(assistant(session.id))
        journal = path / "messages" / f"{session.id}.jsonl"
        largest = 0
        for i in range(1500):
            reply.append_text(f"token{i} ")
            store.update_message(reply)
            store._compactions.join()  # compaction runs in the background; make it prompt
            largest = max(largest, journal.stat().st_size)
        live = sum(len(m.text) for m in store.list_messages(session.id))
        assert live > 10_000
        # without compaction the journal would hold ~1500 copies of a growing message
        assert largest < 3 * live + 4096
        (_, latest) = store.list_messages(session.id)
    with TranscriptStore(path) as reopened:
        assert [m.text for m in reopened.list_messages(session.id)] == ["go", latest.text]


# -- crashes and damaged files ---------------------------------------------------

CRASH_WRITER = Path(__file__).parent / "support" / "crash_writer.py"


def crash_and_verify(
    path: Path, iterations: int, writers: int = 1, writer: Path = CRASH_WRITER
) -> None:
    """Writers (the script ``writer``) append to their own sessions and one shared session;
    each is killed at a random moment (several at once contend for the same files); then
    every write a writer reported as returned must be in the store."""
    with TranscriptStore(path) as store:
        store.create_session(session_id="shared")
    sessions: set[str] = {"shared"}
    messages: dict[tuple[str, str], int] = {}
    for _ in range(iterations):
        outputs = []
        children = [
            subprocess.Popen(
                [sys.executable, str(writer), str(path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(writers)
        ]
        for child in children:
            assert child.stdout is not None
            ready = child.stdout.readline()
            assert ready == "ready\n", child.stderr.read() if child.stderr else ""
        for child in children:
            time.sleep(random.uniform(0.0, 0.3 / writers))
            child.send_signal(signal.SIGKILL)
        for child in children:
            out, _ = child.communicate(timeout=60)
            assert child.returncode == -signal.SIGKILL
            outputs.append(out)
        # Each child's report on its own: a line a kill cut short must not run into the
        # next child's first line.
        for line in (line for out in outputs for line in out.splitlines(keepends=True)):
            if not line.endswith("\n") or not line.strip():
                continue  # the kill cut this report short; its write may or may not be there
            kind, *fields = line.split()
            if kind == "S":
                sessions.add(fields[0])
            elif kind == "M":
                messages.setdefault((fields[0], fields[1]), 0)
            elif kind == "F":
                key = (fields[0], fields[1])
                messages[key] = max(messages.get(key, 0), int(fields[2]))
        with TranscriptStore(path) as store:
            assert sessions <= {s.id for s in store.list_sessions()}
            for session_id in sessions:
                found = {m.id: m for m in store.list_messages(session_id)}
                for (sid, mid), length in messages.items():
                    if sid == session_id:
                        assert mid in found, f"message {mid} reported written but missing"
                        assert len(found[mid].text) >= length
                for message in found.values():
                    if message.role is Role.ASSISTANT:
                        assert message.is_finished  # settled on load
                summary = store.get_session(session_id)
                assert summary.message_count == len(found)
                assert summary.usage.output_tokens == sum(
                    m.usage.output_tokens for m in found.values()
                )
    assert messages, "the writer never got to write anything"


def test_kill_9_at_random_moments_never_loses_a_returned_write(tmp_path):
    crash_and_verify(tmp_path / "store", iterations=10)


def test_kill_9_of_concurrent_writers_never_loses_a_returned_write(tmp_path):
    crash_and_verify(tmp_path / "store", iterations=4, writers=3)


@pytest.mark.slow
def test_kill_9_at_random_moments_many_times(tmp_path):
    crash_and_verify(tmp_path / "store", iterations=50)
    crash_and_verify(tmp_path / "concurrent", iterations=20, writers=3)


def test_a_torn_journal_tail_is_ignored_then_cut_off(tmp_path):
    path = tmp_path / "s"
    with TranscriptStore(path) as store:
        session = store.create_session()
        kept = store.add_message(Message(session.id, Role.USER, [TextPart("kept")]))
    journal = path / "messages" / f"{session.id}.jsonl"
    with open(journal, "ab") as f:
        f.write(b'{"id": "half-written", "session_id": "x", "ro')
    with open(path / "sessions.jsonl", "ab") as f:
        f.write(b'{"id": "torn')
    with pytest.warns(TruncatedTranscriptWarning), TranscriptStore(path) as store:
        assert [m.id for m in store.list_messages(session.id)] == [kept.id]
        later = store.add_message(Message(session.id, Role.USER, [TextPart("later")]))
    assert b"half-written" not in journal.read_bytes()
    with TranscriptStore(path) as store:
        assert [m.id for m in store.list_messages(session.id)] == [kept.id, later.id]
        assert [s.id for s in store.list_sessions()] == [session.id]


def test_a_corrupted_journal_is_a_clear_error_not_silent_loss(tmp_path):
    path = tmp_path / "s"
    with TranscriptStore(path) as store:
        session = store.create_session()
        store.add_message(Message(session.id, Role.USER, [TextPart("one")]))
        store.add_message(Message(session.id, Role.USER, [TextPart("two")]))
    journal = path / "messages" / f"{session.id}.jsonl"
    first, second = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(first + b"#garbage#\n" + second)
    with TranscriptStore(path) as store:
        assert store.has_session(session.id)  # the rest of the store stays usable
        with pytest.raises(StoreError) as excinfo:
            store.list_messages(session.id)
    text = str(excinfo.value)
    assert str(journal) in text
    assert f"byte {len(first)}" in text and "line 2" in text
    assert f"head -c {len(first)}" in text
    assert journal.read_bytes() == first + b"#garbage#\n" + second  # nothing was dropped


def test_a_well_formed_but_wrong_record_is_a_clear_error(tmp_path):
    path = tmp_path / "s"
    with TranscriptStore(path) as store:
        session = store.create_session()
    journal = path / "messages" / f"{session.id}.jsonl"
    for record, problem in [
        ({"session_id": session.id}, "without an id"),
        ({"id": "m", "session_id": "other", "role": "user", "parts": []}, "another session"),
        ({"id": "m", "session_id": session.id, "role": "robot", "parts": []}, "unknown role"),
        ({"id": "m", "session_id": session.id, "role": "user", "parts": [1]}, "parts"),
    ]:
        journal.write_text(json.dumps(record) + "\n")
        with TranscriptStore(path) as store, pytest.raises(StoreError, match=problem):
            store.list_messages(session.id)


def test_a_corrupted_session_index_fails_the_open_with_a_hint(tmp_path):
    path = tmp_path / "s"
    TranscriptStore(path).close()
    (path / "sessions.jsonl").write_bytes(b'{"id": "a"}\n[1, 2]\n')
    with pytest.raises(StoreError, match=r"sessions\.jsonl.*not a JSON object.*head -c"):
        TranscriptStore(path)
    (path / "sessions.jsonl").write_bytes(b'{"no_id": 1}\n')
    with pytest.raises(StoreError, match=r"sessions\.jsonl.*not a valid session record"):
        TranscriptStore(path)
    (path / "sessions.jsonl").write_bytes(b'{"id": "../../escape"}\n')
    with pytest.raises(StoreError, match=r"sessions\.jsonl.*invalid id '\.\./\.\./escape'"):
        TranscriptStore(path)


def test_a_damaged_or_foreign_format_file_is_refused(tmp_path):
    path = tmp_path / "s"
    TranscriptStore(path).close()
    (path / "format.json").write_text("{")
    with pytest.raises(StoreError, match=r"format\.json.*restore it"):
        TranscriptStore(path)
    (path / "format.json").write_text('{"format": "jupyter-crush-transcripts", "version": 99}')
    with pytest.raises(StoreError, match=r"newer than.*upgrade"):
        TranscriptStore(path)


# -- settling what a dead kernel left open ---------------------------------------


def dangling_session(path: Path) -> tuple[str, Message, Message]:
    with TranscriptStore(path) as store:
        session = store.create_session()
        store.add_message(Message(session.id, Role.USER, [TextPart("do two things")]))
        calls = assistant(session.id, "calling")
        calls.parts += [ToolCallPart("c1", "run_code", "{}"), ToolCallPart("c2", "shell", "{}")]
        calls.add_finish(FinishReason.TOOL_USE)
        store.add_message(calls)
        store.add_message(Message(session.id, Role.TOOL, [ToolResultPart("c1", "run_code", "ok")]))
        streaming = store.add_message(assistant(session.id, "half a rep"))
        # simulate the kill: forget the store without letting it finish anything
    return session.id, calls, streaming


def test_dangling_turns_are_settled_and_persisted_on_first_load(tmp_path):
    path = tmp_path / "s"
    session_id, calls, streaming = dangling_session(path)
    with TranscriptStore(path) as store:
        messages = store.list_messages(session_id)
    assert len(messages) == 5
    reply = messages[3]
    assert reply.id == streaming.id
    assert reply.text == "half a rep"
    assert reply.finish_reason is FinishReason.ERROR
    assert reply.finish.message == KERNEL_STOPPED_MESSAGE
    assert messages[1].id == calls.id
    assert messages[1].finish_reason is FinishReason.TOOL_USE  # finished: left as it was
    settled = messages[4]
    assert settled.role is Role.TOOL
    (result,) = settled.tool_results
    assert (result.tool_call_id, result.name, result.is_error) == ("c2", "shell", True)
    assert result.content == TOOL_INTERRUPTED_MESSAGE
    with TranscriptStore(path) as store:  # persisted, and not settled twice
        assert [m.id for m in store.list_messages(session_id)] == [m.id for m in messages]
        assert store.settle_dangling(session_id) == []
        assert store.get_session(session_id).message_count == 5


def test_a_live_writer_s_message_is_not_settled(tmp_path):
    path = tmp_path / "s"
    writer = TranscriptStore(path)
    session = writer.create_session()
    streaming = writer.add_message(assistant(session.id, "still streaming"))
    assert writer.settle_dangling(session.id) == []  # its own live message
    with TranscriptStore(path) as reader:
        (seen,) = reader.list_messages(session.id)
        assert not seen.is_finished
        writer.close()  # the writer is gone now
        (changed,) = reader.settle_dangling(session.id)
        assert changed.id == streaming.id
        assert changed.finish_reason is FinishReason.ERROR


def test_a_killed_writer_s_message_is_settled(tmp_path):
    path = tmp_path / "s"
    child = run_child(
        """
        import os, signal
        from jupyter_crush.core.message import Message, Role, TextPart
        from jupyter_crush.store.transcript import TranscriptStore
        store = TranscriptStore(sys.argv[1])
        store.create_session(session_id="k")
        store.add_message(Message("k", Role.ASSISTANT, [TextPart("cut off")]))
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        str(path),
    )
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    with TranscriptStore(path) as store:
        (reply,) = store.list_messages("k")
        assert reply.finish_reason is FinishReason.ERROR
        assert list((path / "writers").iterdir()) == [store._lease.path]  # dead lease swept


# -- paths, ids, errors -----------------------------------------------------------


def test_bad_paths_fail_at_open_with_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match=r"parent .* does not exist"):
        TranscriptStore(tmp_path / "missing" / "store")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(StoreError, match="is not a directory"):
        TranscriptStore(a_file)
    # root may write anywhere, so "cannot write" is a path below a regular file
    with pytest.raises(StoreError, match=r"parent .*file is not a directory"):
        TranscriptStore(a_file / "store")


def test_an_unwritable_directory_fails_at_open(tmp_path, monkeypatch):
    path = tmp_path / "s"
    path.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda p, mode: False if Path(p) == path else real_access(p, mode),
    )
    with pytest.raises(StoreError, match="not writable"):
        TranscriptStore(path)


def test_the_store_directory_is_created_when_missing(tmp_path):
    with TranscriptStore(tmp_path / "new") as store:
        assert (tmp_path / "new" / "format.json").is_file()
        assert store.list_sessions() == []


def test_unknown_sessions_and_messages_are_clear_key_errors(store):
    with pytest.raises(UnknownSessionError) as excinfo:
        store.get_session("nope")
    assert str(excinfo.value).startswith("no session 'nope' in the transcript store")
    assert "create_session(session_id='nope')" in str(excinfo.value)
    assert isinstance(excinfo.value, KeyError)
    with pytest.raises(UnknownSessionError):
        store.list_messages("nope")
    with pytest.raises(UnknownSessionError):
        store.add_message(Message("nope", Role.USER))
    assert not store.has_session("nope")
    session = store.create_session()
    with pytest.raises(UnknownMessageError, match="no message 'x' in session"):
        store.get_message(session.id, "x")


def test_session_ids_are_validated_and_unique(store):
    assert store.create_session("named", session_id="analysis").id == "analysis"
    with pytest.raises(ValueError, match="already exists"):
        store.create_session(session_id="analysis")
    with pytest.raises(ValueError, match="only in case"):
        store.create_session(session_id="Analysis")
    for bad in ("../escape", "", "a/b", ".hidden", "x" * 129):
        with pytest.raises(ValueError, match="invalid session id"):
            store.create_session(session_id=bad)


def test_a_closed_store_refuses_work(tmp_path):
    store = TranscriptStore(tmp_path / "s")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.create_session()


# -- TinyDB ---------------------------------------------------------------------


def test_tinydb_queries_see_sessions_and_messages(store):
    analysis = store.create_session("analysis")
    other = store.create_session("other")
    store.add_message(Message(analysis.id, Role.USER, [TextPart("Why NaNs in price?")]))
    reply = assistant(analysis.id, "Because of missing rows.")
    reply.add_finish(FinishReason.END_TURN)
    store.add_message(reply)
    store.add_message(Message(other.id, Role.USER, [TextPart("unrelated")]))

    m = Query()
    db = store.db
    assert [d["text"] for d in db.search(m.role == "user")] == ["Why NaNs in price?", "unrelated"]
    assert db.search(m.text.search("NaN"))[0]["session_id"] == analysis.id
    assert db.count(m.finish_reason == "end_turn") == 1
    assert db.search(m.parts.any(m.type == "finish"))[0]["id"] == reply.id
    assert db.table("sessions").get(m.title == "other")["id"] == other.id
    # a query after a new message sees it (TinyDB's query cache would not)
    store.add_message(Message(other.id, Role.USER, [TextPart("NaN again")]))
    assert len(db.search(m.text.search("NaN"))) == 2
    found = store.search_messages(m.text.search("NaN"), session_id=other.id)
    assert [x.text for x in found] == ["NaN again"]
    assert isinstance(found[0], Message)


def test_the_tinydb_view_is_read_only(store):
    with pytest.raises(StoreError, match="read-only"):
        store.db.insert({"role": "user"})


# -- several stores and processes on one directory ---------------------------------


def test_two_stores_on_one_directory_see_each_other(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "COMPACT_MIN_BYTES", 2048)
    path = tmp_path / "s"
    with TranscriptStore(path) as a, TranscriptStore(path) as b:
        session = a.create_session("shared")
        assert b.has_session(session.id)
        first = a.add_message(Message(session.id, Role.USER, [TextPart("from a")]))
        assert [m.text for m in b.list_messages(session.id)] == ["from a"]
        b.add_message(Message(session.id, Role.USER, [TextPart("from b")]))
        assert [m.text for m in a.list_messages(session.id)] == ["from a", "from b"]
        for i in range(100):  # enough rewrites of one message that a compacts the journal
            first.parts[0].text = f"from a, take {i}"
            a.update_message(first, force=True)
        assert b.list_messages(session.id)[0].text == "from a, take 99"
        assert b.get_session(session.id).message_count == 2
        assert a.get_session(session.id).message_count == 2


MP_WRITER = """
    import pathlib, time
    from jupyter_crush.core.message import Message, Role, TextPart, Usage
    from jupyter_crush.store.transcript import TranscriptStore
    path, name, count, processes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = TranscriptStore(path, flush_interval=0)
    own = store.create_session(session_id=name)
    for i in range(count):
        sid = "shared" if i % 2 else own.id
        message = Message(sid, Role.ASSISTANT, [TextPart(f"{name}-{i}")])
        message.usage = Usage(output_tokens=1)
        store.add_message(message)
        message.parts[0].text += " done"
        store.update_message(message)
    # Wait for every writer, then this long-open store must see all their messages.
    pathlib.Path(path, f"done-{name}").touch()
    deadline = time.monotonic() + 300
    while len(list(pathlib.Path(path).glob("done-*"))) < processes:
        assert time.monotonic() < deadline, "the other writers never finished"
        time.sleep(0.01)
    print(len(store.list_messages("shared")), store.get_session("shared").message_count)
    store.close()
"""


def run_concurrent_writers(path: Path, processes: int, count: int) -> None:
    with TranscriptStore(path) as store:
        store.create_session(session_id="shared")
    children = [
        run_child(MP_WRITER, str(path), f"w{n}", str(count), str(processes))
        for n in range(processes)
    ]
    expected = processes * (count // 2)
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err
        assert out.split() == [str(expected), str(expected)]
    with TranscriptStore(path) as store:
        shared = store.get_session("shared")  # from the index, written concurrently
        assert shared.message_count == expected
        assert shared.usage.output_tokens == expected
        texts = [m.text for m in store.list_messages("shared")]
        assert len(texts) == len(set(texts)) == expected
        assert all(t.endswith(" done") for t in texts)
        for n in range(processes):
            own = store.list_messages(f"w{n}")
            assert [m.text for m in own] == [f"w{n}-{i} done" for i in range(0, count, 2)]


def test_concurrent_processes_lose_nothing(tmp_path):
    run_concurrent_writers(tmp_path / "s", processes=4, count=200)


@pytest.mark.slow
def test_four_processes_times_two_thousand_writes(tmp_path):
    run_concurrent_writers(tmp_path / "s", processes=4, count=2000)


def test_journals_closed_beyond_the_cap_are_reread_correctly(tmp_path, monkeypatch, clock):
    monkeypatch.setattr(store_module, "MAX_OPEN_JOURNALS", 2)
    path = tmp_path / "s"
    with TranscriptStore(path) as a, TranscriptStore(path, flush_interval=60, clock=clock) as b:
        ids = [a.create_session(f"s{n}").id for n in range(5)]
        for sid in ids:
            a.add_message(Message(sid, Role.USER, [TextPart(f"hello {sid}")]))
        replies = [b.add_message(assistant(sid, "streaming")) for sid in ids]
        for reply in replies:  # pending in every session: none of them may be closed
            reply.append_text(" more")
            b.update_message(reply)
        for sid in ids:
            a.add_message(Message(sid, Role.USER, [TextPart("later")]))
        for sid in ids:
            assert [m.text for m in b.list_messages(sid)] == [
                f"hello {sid}",
                "streaming more",
                "later",
            ]
        b.flush()
        for sid in ids:
            assert [m.text for m in a.list_messages(sid)][1] == "streaming more"


def test_messages_added_by_two_stores_keep_one_order_everywhere(tmp_path):
    path = tmp_path / "s"
    with TranscriptStore(path) as a, TranscriptStore(path) as b:
        session = a.create_session()
        a.list_messages(session.id)
        b.list_messages(session.id)
        for n in range(6):
            writer = a if n % 2 == 0 else b
            writer.add_message(Message(session.id, Role.USER, [TextPart(str(n))]))
        expected = [str(n) for n in range(6)]
        assert [m.text for m in a.list_messages(session.id)] == expected
        assert [m.text for m in b.list_messages(session.id)] == expected
    with TranscriptStore(path) as c:
        assert [m.text for m in c.list_messages(session.id)] == expected


def test_renaming_a_session_is_durable_and_seen_by_other_stores(tmp_path):
    path = tmp_path / "s"
    with TranscriptStore(path) as a, TranscriptStore(path) as b:
        session = a.create_session("draft")
        b.add_message(Message(session.id, Role.USER, [TextPart("hi")]))
        assert a.rename_session(session.id, "NaN hunt").title == "NaN hunt"
        assert b.get_session(session.id).title == "NaN hunt"
        assert b.get_session(session.id).message_count == 1
    with TranscriptStore(path) as c:
        assert c.get_session(session.id).title == "NaN hunt"
        assert c.get_session(session.id).message_count == 1


def test_a_forked_child_cannot_write_through_the_parent_s_store(tmp_path):
    store = TranscriptStore(tmp_path / "s")
    session = store.create_session()
    pid = os.fork()
    if pid == 0:  # the child: only report, never run the rest of the test
        code = 1
        try:
            store.add_message(Message(session.id, Role.USER, [TextPart("from the child")]))
        except StoreError as exc:
            code = 0 if "inherited by a fork" in str(exc) else 2
        store.close()  # must not end the parent's lease
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._lease.path.exists()
    store.add_message(Message(session.id, Role.USER, [TextPart("from the parent")]))
    assert [m.text for m in store.list_messages(session.id)] == ["from the parent"]
    store.close()


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 1), st.integers(0, 2), st.text(max_size=30)),
        st.tuples(
            st.just("update"),
            st.integers(0, 1),
            st.integers(0, 20),
            st.text(max_size=300),
            st.booleans(),
        ),
        st.tuples(st.just("tick")),
        st.tuples(st.just("flush"), st.integers(0, 1)),
        st.tuples(st.just("reopen"), st.integers(0, 1)),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(operations)
def test_any_sequence_of_writes_reads_back_the_same_from_every_store(ops):
    """Two stores on one directory, random adds/updates/flushes/reopens, tiny compaction
    threshold: each store always sees its own latest state, and after closing, a fresh
    store sees exactly the model."""
    clock = FakeClock()
    saved = store_module.COMPACT_MIN_BYTES
    store_module.COMPACT_MIN_BYTES = 512
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s"
        stores = [TranscriptStore(path, flush_interval=1, clock=clock) for _ in range(2)]
        try:
            sessions = [stores[0].create_session(session_id=f"s{n}").id for n in range(3)]
            model: dict[str, dict[str, str]] = {sid: {} for sid in sessions}
            owned: list[tuple[int, Message]] = []  # (owner store, message)
            for op in ops:
                if op[0] == "add":
                    _, who, where, text = op
                    message = stores[who].add_message(
                        Message(sessions[where], Role.USER, [TextPart(text)])
                    )
                    owned.append((who, message))
                    model[sessions[where]][message.id] = text
                elif op[0] == "update" and owned:
                    _, _, which, text, force = op
                    who, message = owned[which % len(owned)]
                    message.parts[0].text = text
                    stores[who].update_message(message, force=force)
                    model[message.session_id][message.id] = text
                elif op[0] == "tick":
                    clock.now += 1
                elif op[0] == "flush":
                    stores[op[1]].flush()
                elif op[0] == "reopen":
                    stores[op[1]].close()
                    stores[op[1]] = TranscriptStore(path, flush_interval=1, clock=clock)
                    owned = [(who, m) for who, m in owned if who != op[1]]
                for who, message in owned:
                    seen = stores[who].get_message(message.session_id, message.id)
                    assert seen.text == model[message.session_id][message.id]
        finally:
            for store in stores:
                store.close()
            store_module.COMPACT_MIN_BYTES = saved
        with TranscriptStore(path) as fresh:
            for sid, messages in model.items():
                listed = fresh.list_messages(sid)
                assert [(m.id, m.text) for m in listed] == list(messages.items())
                assert fresh.get_session(sid).message_count == len(messages)


def test_fsync_mode_writes_and_compacts_the_same_way(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "COMPACT_MIN_BYTES", 1024)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = tmp_path / "s"
    with TranscriptStore(path, fsync=True, flush_interval=0) as store:
        session = store.create_session()
        reply = store.add_message(assistant(session.id))
        for i in range(100):
            reply.append_text(f"token {i} ")
            store.update_message(reply)
    assert len(synced) > 200  # every journal and index append, plus compactions
    with TranscriptStore(path) as reopened:
        assert reopened.list_messages(session.id)[0].text == reply.text


@pytest.fixture
def held_compaction(monkeypatch):
    """Hold the first background compaction after it has written its copy."""
    written, release = threading.Event(), threading.Event()
    real = Journal.write_compacted
    calls = []

    def holding(self, payload, tag):
        tmp = real(self, payload, tag)
        calls.append(tmp)
        if len(calls) == 1:
            written.set()
            assert release.wait(60)
        return tmp

    monkeypatch.setattr(Journal, "write_compacted", holding)
    monkeypatch.setattr(store_module, "COMPACT_MIN_BYTES", 2048)
    return written, release


def stream_until_compaction(store, session_id, written) -> Message:
    reply = store.add_message(assistant(session_id))
    while not written.is_set():
        reply.append_text("word ")
        store.update_message(reply, force=True)
    return reply


def records_in(journal: Path) -> int:
    return len(journal.read_bytes().splitlines())


def test_writes_during_a_background_compaction_are_kept(tmp_path, held_compaction):
    written, release = held_compaction
    path = tmp_path / "s"
    with TranscriptStore(path) as store:
        session = store.create_session()
        reply = stream_until_compaction(store, session.id, written)
        journal = path / "messages" / f"{session.id}.jsonl"
        before = records_in(journal)
        # the copy is written but not installed: these land in the old file meanwhile
        later = store.add_message(Message(session.id, Role.USER, [TextPart("meanwhile")]))
        reply.append_text("the end")
        store.update_message(reply, force=True)
        release.set()
        store._compactions.join()
        assert not list((path / "messages").glob(".*.compact"))
        assert records_in(journal) < before  # compacted, and the two new records are kept
        expected = [(reply.id, reply.text), (later.id, "meanwhile")]
        assert [(m.id, m.text) for m in store.list_messages(session.id)] == expected
    with TranscriptStore(path) as reopened:
        assert [(m.id, m.text) for m in reopened.list_messages(session.id)] == expected


def test_a_compaction_overtaken_by_another_store_is_dropped(tmp_path, held_compaction):
    written, release = held_compaction
    path = tmp_path / "s"
    with TranscriptStore(path) as a, TranscriptStore(path) as b:
        session = a.create_session()
        stream_until_compaction(a, session.id, written)
        # b compacts the same journal (its compaction is not held) and replaces the file
        reply = b.add_message(assistant(session.id))
        journal = path / "messages" / f"{session.id}.jsonl"
        inode = journal.stat().st_ino
        while journal.stat().st_ino == inode:
            reply.append_text("more ")
            b.update_message(reply, force=True)
            b._compactions.join()
        release.set()
        a._compactions.join()  # its copy is of a replaced version: dropped
        assert not list((path / "messages").glob(".*.compact"))
        assert a.get_message(session.id, reply.id).text == reply.text
    with TranscriptStore(path) as c:
        assert c.get_message(session.id, reply.id).text == reply.text
        assert len(c.list_messages(session.id)) == 2


def test_close_waits_for_a_running_compaction(tmp_path, held_compaction):
    written, release = held_compaction
    path = tmp_path / "s"
    store = TranscriptStore(path)
    session = store.create_session()
    reply = stream_until_compaction(store, session.id, written)
    closer = threading.Thread(target=store.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # held by the compaction it waits for
    release.set()
    closer.join(60)
    assert not closer.is_alive()
    assert not list((path / "messages").glob(".*.compact"))
    with TranscriptStore(path) as reopened:
        assert reopened.get_message(session.id, reply.id).text == reply.text


def test_a_dead_writer_s_compaction_copy_is_swept_at_open(tmp_path):
    path = tmp_path / "s"
    with TranscriptStore(path) as store:
        session = store.create_session()
        live = store.add_message(Message(session.id, Role.USER, [TextPart("x")]))
        leftover = Journal(path / "messages" / f"{session.id}.jsonl").write_compacted(b"", "0" * 32)
        mine = Journal(path / "messages" / f"{session.id}.jsonl").write_compacted(b"", store._token)
        with TranscriptStore(path) as other:
            assert other.get_message(session.id, live.id).text == "x"
        assert not leftover.exists()
        assert mine.exists()  # its writer is alive
        mine.unlink()
