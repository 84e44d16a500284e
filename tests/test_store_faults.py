"""The transcript store under file-system faults: a full disk, files that refuse
writes, a journal cut short. What was accepted stays in memory, is reported by
``pending_writes`` and reaches the disk once the cause is gone; other sessions never fail
because of one session's refused file.

Real faults, not mocks: a small tmpfs filled to the last byte, ``chattr +i`` on a journal or
the whole store (root ignores permission bits, and a tmpfs with open files cannot be
remounted read-only, so immutability is the refusal root gets). Each test skips, saying
why, where the machine cannot mount or chattr.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import warnings
from pathlib import Path

import pytest
from support.bounded import within
from support.virtual_clock import VirtualTimeLoop, run_virtual

from jupyter_crush import FinishReason, Role, SessionAgent, SessionAgentCall, TranscriptStore
from jupyter_crush.core.events import Finished
from jupyter_crush.core.message import Message, TextPart
from jupyter_crush.store.pending import RETRY_INTERVAL
from jupyter_crush.store.storage import Journal
from jupyter_crush.store.transcript import TruncatedTranscriptWarning
from jupyter_crush.testing import ScriptedModel


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 512 KiB tmpfs: filled with one file, freed by removing it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = _run("mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount))
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root")
    yield mount
    _run("chattr", "-R", "-i", str(mount))
    _run("umount", "-l", str(mount))


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk``; remove the returned file to free them."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (65536, 4096, 64, 1):  # big blocks, then the last partial one
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def immutable(path: Path, on: bool = True) -> None:
    done = _run("chattr", "-R", "+i" if on else "-i", str(path))
    if done.returncode:
        pytest.skip(f"chattr cannot make {path} immutable here ({done.stderr.strip()})")


def user(session_id: str, text: str) -> Message:
    return Message(session_id, Role.USER, [TextPart(text)])


def on_disk(path: Path, session_id: str) -> list[str]:
    """The texts another process sees: a fresh store on the same directory."""
    with TranscriptStore(path) as other:
        return [m.text for m in other.list_messages(session_id)]


def test_a_full_disk_keeps_the_records_in_memory_and_writes_them_once_freed(small_disk):
    store = TranscriptStore(small_disk / "store")
    sid = store.create_session("analysis").id
    store.add_message(user(sid, "before"))
    filler = fill(small_disk)

    prompt = user(sid, "what is in df? " + "x" * 20_000)
    store.add_message(prompt)  # refused by the disk: kept, no exception
    reply = Message(sid, Role.ASSISTANT)
    store.add_message(reply)
    for word in ("It ", "holds ", "prices."):
        reply.parts = [TextPart((reply.text if reply.parts else "") + word)]
        store.update_message(reply, force=True)
    [pending] = store.pending_writes(sid)
    assert pending.path == store.journal_path(sid) and pending.records == 2
    assert "No space left on device" in str(pending)
    assert str(pending).startswith(f"2 records not yet written to {pending.path}")
    assert [m.text for m in store.list_messages(sid)][-1] == "It holds prices."
    assert on_disk(store.path, sid) == ["before"]  # a refused batch leaves no partial line

    filler.unlink()
    store.flush()
    assert store.pending_writes() == []
    assert on_disk(store.path, sid) == ["before", prompt.text, "It holds prices."]
    store.close()


def test_the_records_keep_their_order_when_a_refused_one_is_written_later(small_disk):
    store = TranscriptStore(small_disk / "store")
    sid = store.create_session().id
    filler = fill(small_disk)
    store.add_message(user(sid, "first " + "y" * 8000))
    filler.unlink()
    store.add_message(user(sid, "second"))  # the retry writes both, the refused one first
    assert on_disk(store.path, sid) == ["first " + "y" * 8000, "second"]
    store.close()


def test_one_session_s_refused_journal_never_fails_another_session(tmp_path):
    store = TranscriptStore(tmp_path / "store")
    stuck = store.create_session("stuck").id
    fine = store.create_session("fine").id
    store.add_message(user(stuck, "one"))
    journal = store.journal_path(stuck)
    immutable(journal)
    try:
        store.add_message(user(stuck, "two"))  # EPERM: kept
        store.add_message(user(fine, "unaffected"))
        store.flush()
        store.add_message(user(fine, "still"))
        assert [str(p.path) for p in store.pending_writes()] == [str(journal)]
        assert store.pending_writes(fine) == []
        assert "Operation not permitted" in str(store.pending_writes(stuck)[0])
        assert on_disk(store.path, fine) == ["unaffected", "still"]
        assert on_disk(store.path, stuck) == ["one"]
    finally:
        immutable(journal, on=False)
    store.flush()
    assert on_disk(store.path, stuck) == ["one", "two"]
    assert store.pending_writes() == []
    store.close()


def test_a_store_made_immutable_keeps_everything_and_a_new_session_too(tmp_path):
    """Every file and directory refuses writes (``chattr -R +i``, which binds root too):
    the journals, the session index, and the creation of a new journal."""
    store = TranscriptStore(tmp_path / "store")
    sid = store.create_session().id
    store.add_message(user(sid, "before"))
    immutable(store.path)
    try:
        store.add_message(user(sid, "during"))
        late = store.create_session("made while refused").id  # index refused: kept
        store.add_message(user(late, "hello"))
        reasons = {p.path.name: p.reason for p in store.pending_writes()}
        assert set(reasons) == {f"{sid}.jsonl", f"{late}.jsonl", "sessions.jsonl"}
        assert set(reasons.values()) == {"Operation not permitted"}
        assert [m.text for m in store.list_messages(late)] == ["hello"]
    finally:
        immutable(store.path, on=False)
    store.flush()
    assert store.pending_writes() == []
    store.close()
    assert on_disk(tmp_path / "store", sid) == ["before", "during"]
    with TranscriptStore(tmp_path / "store") as reopened:
        assert reopened.get_session(late).title == "made while refused"
        assert [m.text for m in reopened.list_messages(late)] == ["hello"]


class _FillAfter:
    """A run observer that fills the disk once the reply has started streaming."""

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.filler: Path | None = None
        self.finished: list[Finished] = []

    def on_event(self, event) -> None:
        if self.filler is None and type(event).__name__ == "Delta":
            self.filler = fill(self.disk)
        if isinstance(event, Finished):
            self.finished.append(event)


def test_a_turn_whose_disk_fills_mid_stream_ends_and_the_next_prompt_runs(small_disk):
    async def scenario() -> None:
        store = TranscriptStore(small_disk / "store")
        model = ScriptedModel(["The column has " + "many " * 2000 + "NaNs.", "Second answer."])
        agent = SessionAgent(model, store)
        sid = store.create_session().id
        watcher = _FillAfter(small_disk)
        await asyncio.wait_for(agent.run(SessionAgentCall(sid, "why NaN?", observer=watcher)), 10)
        assert [f.reason for f in watcher.finished] == [FinishReason.END_TURN]
        assert not agent.is_session_busy(sid)
        assert store.pending_writes(sid), "the reply's last records could not be written"
        assert watcher.filler is not None
        watcher.filler.unlink()
        result = await asyncio.wait_for(agent.run(SessionAgentCall(sid, "and now?")), 10)
        assert result is not None and result.text == "Second answer."
        agent.cancel(sid)  # idle again: a no-op that must not raise
        assert store.pending_writes() == []
        store.close()

    asyncio.run(scenario())
    texts = on_disk(small_disk / "store", _only_session(small_disk / "store"))
    assert texts[0] == "why NaN?" and texts[1].endswith("NaNs.")
    assert texts[2:] == ["and now?", "Second answer."]


def _only_session(path: Path) -> str:
    with TranscriptStore(path) as store:
        [session] = store.list_sessions()
        return session.id


def test_a_refused_write_is_retried_by_the_store_s_own_timer(tmp_path):
    async def scenario() -> None:
        store = TranscriptStore(tmp_path / "store", flush_interval=0.01)
        sid = store.create_session().id
        store.add_message(user(sid, "one"))
        journal = store.journal_path(sid)
        immutable(journal)
        try:
            store.add_message(user(sid, "two"))
            assert store.pending_writes(sid)
        finally:
            immutable(journal, on=False)
        for _ in range(300):  # no further write comes: only the retry timer can write it
            if not store.pending_writes():
                break
            await asyncio.sleep(0.01)
        assert store.pending_writes() == []
        assert on_disk(store.path, sid) == ["one", "two"]
        store.close()

    asyncio.run(scenario())


class _Attempts:
    """Counts the appends the store attempts (the real ones: it only watches)."""

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        append = Journal.append

        def counted(journal: Journal, payload: bytes, *, fsync: bool) -> None:
            self.count += 1
            append(journal, payload, fsync=fsync)

        monkeypatch.setattr(Journal, "append", counted)


def test_a_disk_full_for_ten_minutes_keeps_one_timer_and_one_attempt_a_second(
    small_disk, monkeypatch
):
    """Ten minutes of a full disk on a virtual clock, a reply streaming through the first
    one: never more than one pending timer, about one write attempt per RETRY_INTERVAL
    (not one per streamed token), and the whole reply on disk once space is back."""
    attempts = _Attempts(monkeypatch)
    minutes = 10
    retries = minutes * 60 / RETRY_INTERVAL

    async def scenario(loop: VirtualTimeLoop) -> tuple[TranscriptStore, str, str]:
        store = TranscriptStore(small_disk / "store", clock=loop.time)
        sid = store.create_session().id
        store.add_message(user(sid, "one"))
        reply = Message(sid, Role.ASSISTANT, [TextPart("")])
        store.add_message(reply)
        filler = fill(small_disk)
        refused: tuple[int, int] | None = None  # timers and attempts at the first refusal
        for second in range(minutes * 60):
            if second < 60:
                for _ in range(30):  # a reply streaming at 30 tokens a second
                    reply.parts = [TextPart(reply.text + f"token {second} ")]
                    store.update_message(reply)
                    if refused is None and store.pending_writes(sid):
                        refused = loop.timers_scheduled(store._writer), attempts.count
                    await asyncio.sleep(1 / 30)
            else:
                await asyncio.sleep(1)
            pending = loop.timers_pending(store._writer)
            assert pending <= 1, f"{pending} timers pending after {second} s"
        assert refused is not None and store.pending_writes(sid), "the disk stayed full"
        # (plus a few: streamed appends are small, and some still fit in the last page of
        # the journal after the session index was refused, each arming the flush timer)
        assert loop.timers_scheduled(store._writer) - refused[0] <= retries + 8
        assert attempts.count - refused[1] <= 2 * (retries + 1)  # the journal, maybe the index
        filler.unlink()
        await asyncio.sleep(RETRY_INTERVAL)  # no further write: the retry alone writes it
        assert store.pending_writes() == []
        assert loop.timers_pending(store._writer) == 0
        return store, sid, reply.text

    store, sid, text = run_virtual(scenario)
    store.close()
    assert on_disk(store.path, sid) == ["one", text]


def test_a_session_streaming_beside_a_refused_one_is_written_at_its_own_pace(tmp_path):
    """A refused session waits for the retry; another session's coalesced updates still
    reach the disk within ``flush_interval``, not at the retry's pace."""

    async def scenario(loop: VirtualTimeLoop) -> None:
        store = TranscriptStore(tmp_path / "store", clock=loop.time)
        stuck, fine = store.create_session().id, store.create_session().id
        store.add_message(user(stuck, "one"))
        journal = store.journal_path(stuck)
        immutable(journal)
        try:
            store.add_message(user(stuck, "two"))  # refused: retried once a second
            reply = Message(fine, Role.ASSISTANT, [TextPart("")])
            store.add_message(reply)
            for word in ("prices ", "rose ", "again"):
                reply.parts = [TextPart(reply.text + word)]
                store.update_message(reply)  # coalesced
                await asyncio.sleep(store.flush_interval * 2)
                assert on_disk(store.path, fine) == [reply.text]
            assert store.pending_writes(stuck) and loop.time() < RETRY_INTERVAL
        finally:
            immutable(journal, on=False)
        await asyncio.sleep(RETRY_INTERVAL)
        assert store.pending_writes() == []
        assert on_disk(store.path, stuck) == ["one", "two"]
        store.close()

    run_virtual(scenario)


# -- a journal cut short ----------------------------------------------------------------


def _three_messages(path: Path) -> tuple[str, Path]:
    with TranscriptStore(path) as store:
        sid = store.create_session().id
        for text in ("one", "two", "three"):
            store.add_message(user(sid, text))
        return sid, store.journal_path(sid)


def test_a_journal_cut_mid_record_opens_with_one_warning_naming_file_and_bytes(tmp_path):
    sid, journal = _three_messages(tmp_path / "s")
    data = journal.read_bytes()
    journal.write_bytes(data[:-10])  # a copy interrupted inside the last record
    cut = len(data.splitlines(keepends=True)[-1]) - 10
    with pytest.warns(TruncatedTranscriptWarning) as caught, TranscriptStore(tmp_path / "s") as s:
        assert [m.text for m in s.list_messages(sid)] == ["one", "two"]
        assert [m.text for m in s.list_messages(sid)] == ["one", "two"]  # warned once
    [warning] = caught
    text = str(warning.message)
    assert str(journal) in text and f"last {cut} bytes" in text and "1 are missing" in text


def test_a_journal_cut_at_a_record_boundary_says_how_many_messages_are_missing(tmp_path):
    sid, journal = _three_messages(tmp_path / "s")
    journal.write_bytes(journal.read_bytes().splitlines(keepends=True)[0])  # a restored backup
    missing, path = r"holds 1 messages.*counts 3.*2 are", tmp_path / "s"
    with pytest.warns(TruncatedTranscriptWarning, match=missing), TranscriptStore(path) as s:
        assert [m.text for m in s.list_messages(sid)] == ["one"]
    with warnings.catch_warnings():  # the next open has nothing more to say
        warnings.simplefilter("error")
        with TranscriptStore(tmp_path / "s") as store:
            store.add_message(user(sid, "after"))
            assert [m.text for m in store.list_messages(sid)] == ["one", "after"]


# -- undecodable text ----------------------------------------------------------------


def test_text_decoded_with_surrogateescape_is_stored_losslessly(tmp_path):
    raw = b"caf\xe9 \xff\xfe prices"  # latin-1 bytes read as UTF-8 with surrogateescape
    text = raw.decode("utf-8", "surrogateescape")
    with TranscriptStore(tmp_path / "s") as store:
        session = store.create_session(title=f"about {text}")
        store.add_message(user(session.id, f"what is in {text}?"))
    with TranscriptStore(tmp_path / "s") as store:
        [message] = store.list_messages(session.id)
        assert message.text == f"what is in {text}?"
        assert message.text.encode("utf-8", "surrogateescape") == b"what is in " + raw + b"?"
        assert store.get_session(session.id).title == f"about {text}"


def test_undecodable_tool_output_is_stored_and_sent_marked(tmp_path, shell):
    from jupyter_crush.core.undecodable import encodable
    from jupyter_crush.testing import Reply, ToolCall
    from jupyter_crush.tools import default_tools
    from jupyter_crush.tools.permissions import PermissionPolicy

    shell.user_ns["raw"] = b"r\xe9sum\xe9".decode("utf-8", "surrogateescape")
    model = ScriptedModel([Reply(tool_calls=[ToolCall("python", {"code": "print(raw)"})]), "Ok."])
    tools = default_tools(shell, tmp_path)

    async def scenario() -> None:
        with TranscriptStore(tmp_path / "store") as store:
            agent = SessionAgent(
                model, store, tools=tools, permissions=PermissionPolicy(None, yolo=True)
            )
            sid = store.create_session().id
            result = await within(agent.run(SessionAgentCall(sid, "print it")))
            assert result is not None and result.reason is FinishReason.END_TURN

    asyncio.run(scenario())
    with TranscriptStore(tmp_path / "store") as store:
        [sid] = [s.id for s in store.list_sessions()]
        [output] = [r.content for m in store.list_messages(sid) for r in m.tool_results]
    assert output.encode("utf-8", "surrogateescape") == b"r\xe9sum\xe9"
    assert encodable(output) == "r\\xe9sum\\xe9"
