"""Records still refused when a store closes: kept in a fallback journal outside the store
(the user's data directory, else the temporary directory), folded into the store when it
next opens — in order, once, with no duplicate of what had landed — and said once.

Refusals come from a journal whose appends fail like a full disk's (``Refusing``); the test
of a process that ends with records pending uses a real full tmpfs (needs root; skips
otherwise), and the process ends without closing its store, as a kernel does at shutdown.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest
from test_store_faults import fill, small_disk  # noqa: F401 (a fixture)

from jupyter_crush import FinishReason, Role, TranscriptStore
from jupyter_crush.core.message import Message, TextPart
from jupyter_crush.store.fallback import UnwrittenRecordsWarning, fallback_directories
from jupyter_crush.store.storage import Journal
from jupyter_crush.store.transcript import KERNEL_STOPPED_MESSAGE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def places(tmp_path, monkeypatch) -> list[Path]:
    """The fallback directories, inside the test's own directory."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return fallback_directories()


class Refusing:
    """Makes every journal append fail like a full disk's while ``on``; with ``landing``,
    the first record of each refused batch lands before the failure is reported (a write
    that went through part way and could not be taken back)."""

    def __init__(self, monkeypatch) -> None:
        self.on = False
        self.landing = False
        append = Journal.append

        def refusing(journal: Journal, payload: bytes, *, fsync: bool) -> None:
            if not self.on:
                return append(journal, payload, fsync=fsync)
            if self.landing:
                append(journal, payload[: payload.index(b"\n") + 1], fsync=fsync)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(journal.path))

        monkeypatch.setattr(Journal, "append", refusing)


@pytest.fixture
def refusing(monkeypatch) -> Refusing:
    return Refusing(monkeypatch)


def user(session_id: str, text: str) -> Message:
    return Message(session_id, Role.USER, [TextPart(text)])


def saved_files(places: list[Path]) -> list[Path]:
    return sorted(path for place in places for path in place.glob("*.jsonl"))


def journal_records(store_path: Path, session_id: str) -> list[dict]:
    journal = store_path / "messages" / f"{session_id}.jsonl"
    return [json.loads(line) for line in journal.read_bytes().splitlines()]


def quietly_open(path: Path) -> TranscriptStore:
    """Open a store, failing on any warning: what was folded is said only once."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return TranscriptStore(path)


def test_records_refused_at_close_are_kept_in_the_data_directory_and_folded_in_once(
    tmp_path, places, refusing
):
    store = TranscriptStore(tmp_path / "store")
    sid = store.create_session("prices").id
    store.add_message(user(sid, "one"))
    refusing.on = True
    store.add_message(user(sid, "two"))
    reply = Message(sid, Role.ASSISTANT, [TextPart("three")])
    store.add_message(reply)
    reply.parts = [TextPart("three, streamed on")]
    reply.add_finish(FinishReason.END_TURN)
    store.update_message(reply)  # coalesced: only in memory
    store.close()

    [saved] = saved_files(places)
    assert saved.parent == places[0]  # the data directory took it
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
    refusing.on = False
    with pytest.warns(UnwrittenRecordsWarning) as said, TranscriptStore(tmp_path / "store") as s:
        assert [m.text for m in s.list_messages(sid)] == ["one", "two", "three, streamed on"]
    [line] = [str(w.message) for w in said]
    assert "\n" not in line and str(saved) in line and "No space left on device" in line
    assert line.startswith(f"3 records the transcript store {tmp_path / 'store'} could not")
    assert line.endswith("they are folded back into it")
    assert saved_files(places) == []

    with quietly_open(tmp_path / "store") as again:  # said once; nothing folded twice
        assert [m.text for m in again.list_messages(sid)] == ["one", "two", "three, streamed on"]
        assert again.get_session(sid).message_count == 3
    assert len(journal_records(tmp_path / "store", sid)) == 3


def test_the_fallback_holds_exactly_the_records_the_store_then_holds(tmp_path, places, refusing):
    """Nothing beyond what the store itself keeps (so no more secrets than it): each saved
    message record is the record the store's journal ends up with, field for field."""
    store = TranscriptStore(tmp_path / "store")
    sid = store.create_session().id
    refusing.on = True
    store.add_message(user(sid, "the key is in $OPENAI_API_KEY"))
    store.close()
    [saved] = saved_files(places)
    lines = [json.loads(line) for line in saved.read_bytes().splitlines()]
    header, records = lines[0], lines[1:]
    assert header["store"] == str(tmp_path / "store") and header["writer"]
    messages = [r["message"] for r in records if "message" in r]
    assert [r["session"]["id"] for r in records if "session" in r] == [sid]
    refusing.on = False
    with pytest.warns(UnwrittenRecordsWarning), TranscriptStore(tmp_path / "store"):
        pass
    assert journal_records(tmp_path / "store", sid) == messages


def test_the_temporary_directory_takes_them_when_the_data_directory_refuses(
    tmp_path, places, refusing, monkeypatch
):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    monkeypatch.setenv("XDG_DATA_HOME", str(blocked))
    places = fallback_directories()
    store = TranscriptStore(tmp_path / "store")
    sid = store.create_session().id
    refusing.on = True
    store.add_message(user(sid, "kept in the temporary directory"))
    store.close()
    [saved] = saved_files(places)
    assert saved.parent == places[1] and saved.is_relative_to(tmp_path / "tmp")
    refusing.on = False
    said = pytest.warns(UnwrittenRecordsWarning, match="folded back")
    with said, TranscriptStore(tmp_path / "store") as reopened:
        assert [m.text for m in reopened.list_messages(sid)] == ["kept in the temporary directory"]


def test_a_record_that_had_landed_is_not_written_twice(tmp_path, places, refusing):
    """The refused batch's first record reached the journal after all: the fold skips it
    and writes the rest after it, each message once, in order."""
    store = TranscriptStore(tmp_path / "store")
    sid = store.create_session().id
    store.add_message(user(sid, "one"))
    refusing.on = refusing.landing = True
    store.add_message(user(sid, "two"))  # lands, reported refused
    store.add_message(user(sid, "three"))  # each retry: "two" lands again, "three" does not
    store.close()
    landed = [r["parts"][0]["text"] for r in journal_records(tmp_path / "store", sid)]
    assert "three" not in landed and landed.count("two") > 1
    refusing.on = False
    with pytest.warns(UnwrittenRecordsWarning) as said, TranscriptStore(tmp_path / "store") as s:
        assert [m.text for m in s.list_messages(sid)] == ["one", "two", "three"]
    assert str(said[0].message).startswith("2 records")  # "three" and the session record
    texts = [r["parts"][0]["text"] for r in journal_records(tmp_path / "store", sid)]
    assert texts == [*landed, "three"]  # "two" was not appended once more
    assert saved_files(places) == []


def test_a_fold_still_refused_waits_in_memory_and_its_journal_stays_until_written(
    tmp_path, places, refusing
):
    store = TranscriptStore(tmp_path / "store")
    sid = store.create_session().id
    refusing.on = True
    store.add_message(user(sid, "one"))
    store.close()
    [first] = saved_files(places)

    with pytest.warns(UnwrittenRecordsWarning, match="wait in memory until"):
        reopened = TranscriptStore(tmp_path / "store")
    assert [m.text for m in reopened.list_messages(sid)] == ["one"]
    assert reopened.pending_writes(sid)
    reopened.add_message(user(sid, "two"))  # refused as well
    reopened.close()  # saves both again, in a journal that replaces the first
    [second] = saved_files(places)
    assert second != first

    with pytest.warns(UnwrittenRecordsWarning, match="wait in memory"):
        third = TranscriptStore(tmp_path / "store")
    assert saved_files(places) == [second]
    refusing.on = False
    third.flush()  # written: the fallback journal has done its work
    assert saved_files(places) == []
    third.close()
    with quietly_open(tmp_path / "store") as last:
        assert [m.text for m in last.list_messages(sid)] == ["one", "two"]
    assert len(journal_records(tmp_path / "store", sid)) == 2


def test_a_session_only_the_fallback_knows_is_folded_in_with_its_title(tmp_path, places, refusing):
    store = TranscriptStore(tmp_path / "store")
    refusing.on = True  # the index refuses the new session's record too
    sid = store.create_session("made on a full disk").id
    reply = Message(sid, Role.ASSISTANT, [TextPart("answer")], cost=0.25)
    store.add_message(reply)
    store.close()
    refusing.on = False
    with pytest.warns(UnwrittenRecordsWarning), TranscriptStore(tmp_path / "store") as reopened:
        [session] = reopened.list_sessions()
        assert (session.id, session.title) == (sid, "made on a full disk")
        assert session.message_count == 1 and session.cost == 0.25
        assert [m.text for m in reopened.list_messages(sid)] == ["answer"]
    with quietly_open(tmp_path / "store") as again:
        assert again.get_session(sid).title == "made on a full disk"


def test_a_fallback_journal_that_cannot_be_read_is_one_line_and_left_in_place(
    tmp_path, places, refusing
):
    store = TranscriptStore(tmp_path / "store")
    sid = store.create_session().id
    store.add_message(user(sid, "on disk"))
    refusing.on = True
    store.add_message(user(sid, "saved elsewhere"))
    store.close()
    refusing.on = False
    [saved] = saved_files(places)
    saved.write_bytes(saved.read_bytes()[:-20] + b"\n")  # damaged by hand
    with pytest.warns(UnwrittenRecordsWarning) as said, TranscriptStore(tmp_path / "store") as s:
        assert [m.text for m in s.list_messages(sid)] == ["on disk"]
    [line] = [str(w.message) for w in said]
    assert "\n" not in line and line.startswith(f"cannot read the fallback journal {saved}")
    assert "move it aside" in line
    assert saved.exists()


def test_a_fallback_of_a_store_still_closing_is_left_for_a_later_opening(
    tmp_path, places, refusing
):
    closing = TranscriptStore(tmp_path / "store")
    sid = closing.create_session().id
    refusing.on = True
    closing.add_message(user(sid, "kept"))
    closing._writer.save_unwritten()  # what close() does before it gives up the writer's lease
    with quietly_open(tmp_path / "store") as early:
        assert early.list_messages(sid) == []
    closing.close()
    refusing.on = False
    with pytest.warns(UnwrittenRecordsWarning), TranscriptStore(tmp_path / "store") as later:
        assert [m.text for m in later.list_messages(sid)] == ["kept"]


def test_a_process_that_ends_with_records_pending_leaves_them_for_the_next_store(
    small_disk,  # noqa: F811
    tmp_path,
    places,
):
    """A real full disk; the process ends without closing its store (as a kernel does at
    shutdown): the records reach the store opened on the freed disk, once."""
    child = textwrap.dedent(
        f"""
        import os, sys
        from jupyter_crush import FinishReason, Role, TranscriptStore
        from jupyter_crush.core.message import Message, TextPart
        sys.path.insert(0, {str(REPO / "tests")!r})
        from test_store_faults import fill
        store = TranscriptStore({str(small_disk / "store")!r})
        sid = store.create_session("analysis").id
        store.add_message(Message(sid, Role.USER, [TextPart("before")]))
        from pathlib import Path
        fill(Path({str(small_disk)!r}))
        store.add_message(Message(sid, Role.USER, [TextPart("why is the disk full? " * 1000)]))
        reply = Message(sid, Role.ASSISTANT, [TextPart("Because")])
        store.add_message(reply)
        reply.parts = [TextPart("Because the filler took it.")]
        store.update_message(reply)
        assert store.pending_writes(sid)
        print(sid)
        """
    )
    env = dict(os.environ, XDG_DATA_HOME=str(places[0].parents[1]), TMPDIR=str(tmp_path / "tmp"))
    done = subprocess.run(
        [sys.executable, "-c", child], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    sid = done.stdout.strip()
    assert "folded back in when the store next opens" in done.stderr
    (small_disk / "filler").unlink()
    said = pytest.warns(UnwrittenRecordsWarning, match="folded back into it")
    with said, TranscriptStore(small_disk / "store") as store:
        texts = [m.text for m in store.list_messages(sid)]
    assert texts == ["before", "why is the disk full? " * 1000, "Because the filler took it."]
    assert saved_files(places) == []
    with quietly_open(small_disk / "store") as again:
        assert [m.text for m in again.list_messages(sid)] == texts


def test_an_unfinished_reply_folded_in_is_settled_like_any_a_stopped_kernel_left(
    tmp_path, places, refusing
):
    store = TranscriptStore(tmp_path / "store")
    sid = store.create_session().id
    refusing.on = True
    store.add_message(Message(sid, Role.ASSISTANT, [TextPart("half an answ")]))
    store.close()
    refusing.on = False
    with pytest.warns(UnwrittenRecordsWarning), TranscriptStore(tmp_path / "store") as reopened:
        [reply] = reopened.list_messages(sid)
    assert reply.text == "half an answ" and reply.finish_reason is FinishReason.ERROR
    assert reply.finish.message == KERNEL_STOPPED_MESSAGE
    with quietly_open(tmp_path / "store") as again:
        assert again.list_messages(sid)[0].finish_reason is FinishReason.ERROR


def test_journals_saved_twice_by_a_cut_short_close_fold_each_record_once_at_its_newest(
    tmp_path, places, refusing
):
    """A close saved the records again but stopped before removing the journal it had
    folded in: both are read, each message once, in order, at its newest state."""
    store = TranscriptStore(tmp_path / "store")
    sid = store.create_session().id
    refusing.on = True
    reply = Message(sid, Role.ASSISTANT, [TextPart("first state")])
    store.add_message(user(sid, "question"))
    store.add_message(reply)
    store.close()
    [first] = saved_files(places)
    kept = first.read_bytes()
    with pytest.warns(UnwrittenRecordsWarning):
        reopened = TranscriptStore(tmp_path / "store")
    reply.parts = [TextPart("newest state")]
    reply.add_finish(FinishReason.END_TURN)
    reopened.update_message(reply, force=True)
    reopened.add_message(user(sid, "follow-up"))
    reopened.close()
    first.write_bytes(kept)  # as if that close had stopped before removing it
    assert len(saved_files(places)) == 2
    refusing.on = False
    with pytest.warns(UnwrittenRecordsWarning) as said, TranscriptStore(tmp_path / "store") as s:
        assert [m.text for m in s.list_messages(sid)] == ["question", "newest state", "follow-up"]
    assert str(said[0].message).startswith("4 records")  # 3 messages and the session's record
    assert saved_files(places) == []
    assert len(journal_records(tmp_path / "store", sid)) == 3


def test_a_temporary_directory_open_to_others_is_neither_written_nor_read(
    tmp_path, places, refusing, monkeypatch, caplog
):
    planted_sid = _refused_close(tmp_path / "elsewhere", refusing)  # a journal to plant
    [planted] = saved_files(places)
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    monkeypatch.setenv("XDG_DATA_HOME", str(blocked))
    shared = fallback_directories()[1]
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # as if made by someone else, for everyone
    planted = planted.rename(shared / planted.name)

    _refused_close(tmp_path / "store", refusing)
    assert list(shared.iterdir()) == [planted]  # not written there
    assert "lost what it could not write" in caplog.text
    assert "is not a private directory" in caplog.text
    with quietly_open(tmp_path / "elsewhere") as store:  # not read from there
        assert store.list_messages(planted_sid) == []


def _refused_close(path: Path, refusing: Refusing) -> str:
    """A store at ``path`` closed with one message refused; returns its session id."""
    store = TranscriptStore(path)
    sid = store.create_session().id
    refusing.on = True
    store.add_message(user(sid, "refused"))
    store.close()
    refusing.on = False
    return sid


def test_a_refused_rename_alone_is_folded_in(tmp_path, places, refusing):
    store = TranscriptStore(tmp_path / "store")
    sid = store.create_session("old title").id
    refusing.on = True
    store.rename_session(sid, "new title")
    store.close()
    refusing.on = False
    said = pytest.warns(UnwrittenRecordsWarning, match="^1 record the transcript store")
    with said, TranscriptStore(tmp_path / "store") as reopened:
        assert reopened.get_session(sid).title == "new title"
        assert saved_files(places) == []  # written as the store opened
    with quietly_open(tmp_path / "store") as again:
        assert again.get_session(sid).title == "new title"


def test_records_for_a_damaged_journal_stay_in_the_fallback_until_it_is_repaired(
    tmp_path, places, refusing
):
    store = TranscriptStore(tmp_path / "store")
    sid = store.create_session().id
    store.add_message(user(sid, "on disk"))
    journal = store.journal_path(sid)
    refusing.on = True
    store.add_message(user(sid, "saved elsewhere"))
    store.close()
    refusing.on = False
    [saved] = saved_files(places)
    intact = journal.read_bytes()
    journal.write_bytes(intact + b"#garbage#\n")
    with pytest.warns(UnwrittenRecordsWarning) as said, TranscriptStore(tmp_path / "store"):
        pass  # the store opens; the session says what is wrong when it is used
    [line] = [str(w.message) for w in said]
    assert line.startswith(f"records kept in {saved} stay there until this can be read")
    assert f"corrupted transcript file {journal}" in line and "\n" not in line
    assert saved.exists()
    journal.write_bytes(intact)  # repaired as the message says
    said = pytest.warns(UnwrittenRecordsWarning, match="folded back into it")
    with said, TranscriptStore(tmp_path / "store") as repaired:
        assert [m.text for m in repaired.list_messages(sid)] == ["on disk", "saved elsewhere"]
    assert saved_files(places) == []


def test_a_user_without_a_home_directory_saves_in_the_temporary_directory(
    tmp_path, places, refusing, monkeypatch
):
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    [temporary] = fallback_directories()
    _refused_close(tmp_path / "store", refusing)
    assert [path.parent for path in saved_files([temporary])] == [temporary]
