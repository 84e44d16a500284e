"""A closing store keeps the history rows of the sessions it wrote (RowKeeper.keep_written),
so the next process's history() reads them instead of decoding the journals."""

from __future__ import annotations

import errno
import os

import pandas as pd
import pytest

import jupyter_crush as crush
from jupyter_crush import Message, Role, TranscriptStore
from jupyter_crush.core.message import FinishReason, TextPart
from jupyter_crush.store import row_cache, row_scan
from jupyter_crush.store.storage import Journal
from jupyter_crush.store.transcript import UnwrittenRecordsWarning


def cache_file(path, session_id):
    return path / row_cache.ROWS_DIR / f"{session_id}{row_cache.SUFFIX}"


@pytest.fixture
def scans(monkeypatch):
    """The sessions whose journals are decoded, in order."""
    seen: list[str] = []
    scan = row_scan.scan

    def spy(session_id, *rest):
        seen.append(session_id)
        return scan(session_id, *rest)

    monkeypatch.setattr(row_scan, "scan", spy)
    return seen


def turn(store: TranscriptStore, session_id: str, words: int) -> None:
    store.add_message(Message(session_id, Role.USER, [TextPart("question " * words)]))
    reply = Message(session_id, Role.ASSISTANT, [TextPart("answer " * words)], model="m")
    reply.add_finish(FinishReason.END_TURN)
    store.add_message(reply)


def truth(path) -> pd.DataFrame:
    """history() as the store's own reader gives it: every session loaded first."""
    with TranscriptStore(path) as store:
        for s in store.list_sessions():
            store.list_messages(s.id)
        return crush.history(store=store)


def test_a_closing_writer_keeps_the_rows_of_what_it_wrote_and_a_new_process_reads_them(
    tmp_path, scans
):
    path = tmp_path / "store"
    with TranscriptStore(path) as yesterday:
        older = yesterday.create_session("older").id
        turn(yesterday, older, 3)
    (path / row_cache.ROWS_DIR / f"{older}{row_cache.SUFFIX}").unlink()
    with TranscriptStore(path) as kernel:
        kernel.list_messages(older)  # only read here: not this store's to keep
        first = kernel.create_session("a").id
        second = kernel.create_session("b").id
        turn(kernel, first, 3)
        turn(kernel, second, 5)
        del scans[:]
    assert sorted(scans) == sorted([first, second])
    assert cache_file(path, first).is_file() and cache_file(path, second).is_file()
    assert not cache_file(path, older).exists()
    del scans[:]
    rows = crush.history(store=path, session=first)  # a new process, the journal not decoded
    assert scans == []
    pd.testing.assert_frame_equal(rows, crush.history(store=path, session=first))
    assert list(rows.text) == ["question " * 3, "answer " * 3]


def test_the_rows_kept_at_close_are_those_a_new_process_derives(tmp_path):
    path = tmp_path / "store"
    with TranscriptStore(path) as kernel:
        sid = kernel.create_session("s").id
        turn(kernel, sid, 4)
        reply = kernel.add_message(Message(sid, Role.ASSISTANT, [TextPart("streamed")]))
        for word in (" on", " and", " on"):
            reply.append_text(word)
            kernel.update_message(reply)  # coalesced: written by the flush at close
        reply.add_finish(FinishReason.END_TURN)
        kernel.update_message(reply)
    kept = cache_file(path, sid).read_bytes()
    cache_file(path, sid).unlink()
    everything = crush.history(store=path)  # derives them from the journal and keeps them
    assert cache_file(path, sid).read_bytes() == kept
    assert everything.text.iloc[-1] == "streamed on and on"
    pd.testing.assert_frame_equal(everything, truth(path))


def test_a_reply_left_open_at_close_is_left_to_the_next_reader_to_settle(tmp_path):
    path = tmp_path / "store"
    with TranscriptStore(path) as kernel:
        sid = kernel.create_session("s").id
        kernel.add_message(Message(sid, Role.ASSISTANT, [TextPart("cut short")]))
    assert not cache_file(path, sid).exists()
    assert crush.history(store=path).finish_reason[0] == "error"


def test_refused_writes_at_close_keep_no_rows_and_lose_nothing(tmp_path, monkeypatch):
    path = tmp_path / "store"
    kernel = TranscriptStore(path)
    stuck = kernel.create_session("stuck").id
    fine = kernel.create_session("fine").id
    turn(kernel, stuck, 2)
    turn(kernel, fine, 2)
    append = Journal.append

    def full_for_stuck(journal: Journal, payload: bytes, *, fsync: bool) -> None:
        if journal.path.stem == stuck:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        append(journal, payload, fsync=fsync)

    monkeypatch.setattr(Journal, "append", full_for_stuck)
    kernel.add_message(Message(stuck, Role.USER, [TextPart("refused")]))
    assert kernel.pending_writes(stuck)
    kernel.close()  # the refused record goes to a fallback journal
    # A full disk gets nothing more: not the refused session's rows, nor the others'.
    assert not (path / row_cache.ROWS_DIR).exists()
    monkeypatch.setattr(Journal, "append", append)
    with pytest.warns(UnwrittenRecordsWarning), TranscriptStore(path) as reopened:
        assert [m.text for m in reopened.list_messages(stuck)][-1] == "refused"
        assert len(reopened.list_messages(fine)) == 2


def test_a_forked_child_closing_the_inherited_store_keeps_no_rows(tmp_path):
    path = tmp_path / "store"
    store = TranscriptStore(path)
    sid = store.create_session("s").id
    turn(store, sid, 2)
    pid = os.fork()
    if pid == 0:  # the child: only close, never run the rest of the test
        code = 1
        try:
            store.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not cache_file(path, sid).exists()
    store.close()
    assert cache_file(path, sid).is_file()


def test_closing_again_keeps_nothing_more(tmp_path, scans):
    path = tmp_path / "store"
    store = TranscriptStore(path)
    sid = store.create_session("s").id
    turn(store, sid, 2)
    store.close()
    assert scans == [sid]
    cache_file(path, sid).unlink()
    store.close()
    assert scans == [sid]
    assert not cache_file(path, sid).exists()


def test_the_time_at_close_is_bounded_largest_journals_first(tmp_path, monkeypatch, scans):
    path = tmp_path / "store"
    store = TranscriptStore(path)
    small, large, huge = (store.create_session(name).id for name in ("small", "large", "huge"))
    turn(store, small, 10)
    turn(store, large, 400)
    turn(store, huge, 4000)
    sizes = {sid: store.journal_path(sid).stat().st_size for sid in (small, large, huge)}
    # A budget the huge journal does not fit in, the large and small ones do.
    monkeypatch.setattr(row_cache, "SCAN_BYTES_PER_S", (sizes[large] + sizes[small]) * 1.5)
    store.close()
    assert scans == [large, small]
    assert not cache_file(path, huge).exists()
    with TranscriptStore(path) as again:  # no time left at all: nothing is read
        turn(again, small, 1)
        monkeypatch.setattr(row_cache, "CLOSE_BUDGET_S", 0.0)
    assert scans == [large, small]


def test_a_failure_to_keep_the_rows_does_not_fail_the_close(tmp_path, monkeypatch, caplog):
    path = tmp_path / "store"
    store = TranscriptStore(path)
    sid = store.create_session("kept").id
    turn(store, sid, 3)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in keeping rows")

    monkeypatch.setattr(row_cache.RowFiles, "current", broken)
    store.close()  # no exception: the rows are derived, the journals are what counts
    assert "could not keep the history rows at close" in caplog.text
    assert not cache_file(path, sid).exists()
    with TranscriptStore(path) as again:  # released: opens, and the turn is all there
        assert [m.text for m in again.list_messages(sid)] == ["question " * 3, "answer " * 3]
