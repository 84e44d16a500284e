"""What folding a fallback journal back into the store keeps, one rule per test: the folded
records count in their session's totals (messages, tokens, cost, last change) as if they had
been written in the first place; a title set elsewhere since the close wins over the folded
record's, and a session record that had landed after all is not folded (nor said) again; a
turn the full disk cut comes back as it was, not settled as stopped before all of it is in;
a record the fold supersedes is compacted away like any other."""

from __future__ import annotations

import errno
import os

import pytest
import test_store_fallback
from test_store_fallback import saved_files, user

from jupyter_crush import FinishReason, Role, TranscriptStore
from jupyter_crush.core.message import Message, TextPart, ToolCallPart, ToolResultPart, Usage
from jupyter_crush.store.fallback import UnwrittenRecordsWarning
from jupyter_crush.store.storage import Journal

USAGE = Usage(input_tokens=1200, output_tokens=300)


places = test_store_fallback.places
refusing = test_store_fallback.refusing


def answer(session_id: str) -> Message:
    message = Message(session_id, Role.ASSISTANT, [TextPart("42")], usage=USAGE, cost=0.25)
    message.add_finish(FinishReason.END_TURN)  # finished: the fold leaves it as it is
    return message


@pytest.mark.parametrize("index_took_the_session", [True, False])
def test_folded_records_count_in_their_sessions_totals(
    tmp_path, places, refusing, index_took_the_session
):
    store = TranscriptStore(tmp_path / "store")
    if index_took_the_session:
        sid = store.create_session("prices").id
        store.add_message(user(sid, "one"))
        refusing.on = True
    else:  # only the fallback will know the session
        refusing.on = True
        sid = store.create_session("prices").id
        store.add_message(user(sid, "one"))
    store.add_message(answer(sid))
    changed = store.get_session(sid).updated_at
    store.close()
    assert saved_files(places)
    refusing.on = False
    with pytest.warns(UnwrittenRecordsWarning), TranscriptStore(tmp_path / "store") as reopened:
        session = reopened.get_session(sid)
        assert (session.title, session.message_count) == ("prices", 2)
        assert (session.usage, session.cost) == (USAGE, 0.25)
        assert session.updated_at >= changed
        assert [s.id for s in reopened.list_sessions()] == [sid]
    with TranscriptStore(tmp_path / "store") as again:  # as written to its record
        session = again.get_session(sid)
        assert (session.message_count, session.usage, session.cost) == (2, USAGE, 0.25)
        assert session.updated_at >= changed


def test_a_session_only_the_fallback_knew_comes_back_empty_with_its_title(
    tmp_path, places, refusing
):
    store = TranscriptStore(tmp_path / "store")
    refusing.on = True
    sid = store.create_session("started on a full disk").id
    store.close()
    refusing.on = False
    with pytest.warns(UnwrittenRecordsWarning), TranscriptStore(tmp_path / "store") as reopened:
        session = reopened.get_session(sid)
        assert (session.title, session.message_count, session.cost) == (
            "started on a full disk",
            0,
            0.0,
        )
        assert reopened.list_messages(sid) == []
    with TranscriptStore(tmp_path / "store") as again:
        assert again.get_session(sid).message_count == 0


def test_a_title_set_elsewhere_after_the_close_outlives_the_folded_record(
    tmp_path, places, refusing
):
    closing = TranscriptStore(tmp_path / "store")
    other = TranscriptStore(tmp_path / "store")  # a second kernel on the same store
    sid = closing.create_session("draft").id
    closing.add_message(user(sid, "one"))
    refusing.on = True
    closing.add_message(user(sid, "two"))
    closing.close()
    refusing.on = False
    other.rename_session(sid, "March sales")  # after the fallback was written
    other.close()
    with (
        pytest.warns(UnwrittenRecordsWarning, match="^1 record "),
        TranscriptStore(tmp_path / "store") as reopened,
    ):
        assert reopened.get_session(sid).title == "March sales"
        assert [m.text for m in reopened.list_messages(sid)] == ["one", "two"]


def test_a_turn_cut_by_the_full_disk_comes_back_as_it_was_not_as_stopped(
    tmp_path, places, refusing
):
    store = TranscriptStore(tmp_path / "store")
    sid = store.create_session().id
    store.add_message(user(sid, "run it"))
    call = Message(sid, Role.ASSISTANT, [ToolCallPart("c1", "python", "{}")])
    store.add_message(call)  # on disk, still open
    refusing.on = True
    call.parts[0].finished = True
    call.add_finish(FinishReason.TOOL_USE)
    store.update_message(call, force=True)
    store.add_message(Message(sid, Role.TOOL, [ToolResultPart("c1", "python", "2")]))
    store.close()
    refusing.on = False
    with pytest.warns(UnwrittenRecordsWarning), TranscriptStore(tmp_path / "store") as reopened:
        messages = reopened.list_messages(sid)
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT, Role.TOOL]
    assert messages[1].finish_reason is FinishReason.TOOL_USE
    assert [r.content for r in messages[2].tool_results] == ["2"]


def test_a_record_the_fold_supersedes_is_compacted_away(tmp_path, places, refusing, monkeypatch):
    import jupyter_crush.store.transcript as store_module

    monkeypatch.setattr(store_module, "COMPACT_MIN_BYTES", 4096)
    store = TranscriptStore(tmp_path / "store")
    sid = store.create_session().id
    store.add_message(user(sid, "go"))
    reply = Message(sid, Role.ASSISTANT, [TextPart("draft " * 4000)])
    store.add_message(reply)  # 24 KB on disk
    refusing.on = True
    reply.parts = [TextPart("short")]
    reply.add_finish(FinishReason.END_TURN)
    store.update_message(reply, force=True)
    store.close()
    refusing.on = False
    with pytest.warns(UnwrittenRecordsWarning), TranscriptStore(tmp_path / "store") as reopened:
        reopened._compactions.join()  # compaction runs in the background; make it prompt
        assert [m.text for m in reopened.list_messages(sid)] == ["go", "short"]
        assert reopened.journal_path(sid).stat().st_size < 4096  # the draft is gone


def test_a_session_record_that_landed_after_all_is_not_folded_again(tmp_path, places, monkeypatch):
    append = Journal.append
    index_full = []  # the index's appends land, then fail like a full disk's

    def landing(journal: Journal, payload: bytes, *, fsync: bool) -> None:
        append(journal, payload, fsync=fsync)
        if index_full and journal.path.parent.name != "messages":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(journal.path))

    monkeypatch.setattr(Journal, "append", landing)
    store = TranscriptStore(tmp_path / "store")
    sid = store.create_session("draft").id
    index_full.append(True)
    store.rename_session(sid, "March sales")  # on disk, yet kept as refused
    store.close()
    index_full.clear()
    assert saved_files(places)
    with test_store_fallback.quietly_open(tmp_path / "store") as reopened:  # nothing to fold
        assert reopened.get_session(sid).title == "March sales"
    assert saved_files(places) == []


def test_folded_records_are_counted_at_their_size_on_disk(tmp_path, places, refusing):
    """The store decides when to compact a journal from the bytes its live records take on
    disk; a folded record new to the journal must count its own line, not one byte more or
    less, or journals are compacted early (or late) ever after."""
    store = TranscriptStore(tmp_path / "store")
    sid = store.create_session().id
    store.add_message(user(sid, "one"))
    refusing.on = True
    store.add_message(answer(sid))
    store.add_message(user(sid, "two"))
    store.close()
    refusing.on = False
    with pytest.warns(UnwrittenRecordsWarning), TranscriptStore(tmp_path / "store") as reopened:
        reopened.flush()
        journal = reopened.journal_path(sid)
        # Nothing on disk is superseded: the journal is as long as its live records.
        assert reopened._replayer.sessions[sid].live_bytes == journal.stat().st_size
