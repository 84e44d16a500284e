"""History rows kept per journal on disk (jupyter_crush.store.row_cache): a new process answers
from them, and never with rows its journal no longer holds."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pandas as pd
import pytest

import jupyter_crush as crush
from jupyter_crush import Message, Role, TranscriptStore
from jupyter_crush.core.message import FinishReason, TextPart, ToolCallPart, ToolResultPart
from jupyter_crush.store import row_cache, row_scan
from jupyter_crush.store import transcript as store_module
from jupyter_crush.store.appends import APPEND_KEY


def truth(path) -> pd.DataFrame:
    """history() as the store's own reader gives it: every session loaded first."""
    with TranscriptStore(path) as store:
        for s in store.list_sessions():
            store.list_messages(s.id)
        return crush.history(store=store)


def cache_file(path, session_id):
    return path / row_cache.ROWS_DIR / f"{session_id}{row_cache.SUFFIX}"


@pytest.fixture
def scans(monkeypatch):
    """The journals decoded (whole or from an offset), as (session, offset) pairs."""
    seen: list[tuple[str, int]] = []
    scan = row_scan.scan

    def spy(session_id, data, stat, prior, *rest):
        seen.append((session_id, prior.offset if prior is not None else 0))
        return scan(session_id, data, stat, prior, *rest)

    monkeypatch.setattr(row_scan, "scan", spy)
    return seen


def make_store(path) -> str:
    with TranscriptStore(path) as store:
        sid = store.create_session("s").id
        store.add_message(Message(sid, Role.USER, [TextPart("where is the needle?")]))
        reply = Message(sid, Role.ASSISTANT, [TextPart("in the haystack")], model="m")
        reply.parts.append(ToolCallPart("c1", "python", '{"code": "1 + 1"}'))
        reply.add_finish(FinishReason.TOOL_USE)
        store.add_message(reply)
        store.add_message(Message(sid, Role.TOOL, [ToolResultPart("c1", "python", "2")]))
    return sid


def test_a_new_process_answers_from_the_kept_rows_without_decoding_the_journal(tmp_path, scans):
    path = tmp_path / "store"
    sid = make_store(path)
    first = crush.history(store=path)
    assert scans == [(sid, 0)]
    assert cache_file(path, sid).is_file()
    again = crush.history(store=path)  # a new store object: what a new process opens
    assert scans == [(sid, 0)]
    pd.testing.assert_frame_equal(again, first)
    pd.testing.assert_frame_equal(again, truth(path))
    assert list(crush.history(store=path, search="NEEDLE").text) == ["where is the needle?"]


def test_appends_from_another_kernel_extend_the_rows_decoding_only_the_new_bytes(tmp_path, scans):
    path = tmp_path / "store"
    with TranscriptStore(path, flush_interval=3600) as kernel:
        sid = kernel.create_session("s").id
        kernel.add_message(Message(sid, Role.USER, [TextPart("count")]))
        reply = kernel.add_message(Message(sid, Role.ASSISTANT, [TextPart("one")]))
        with TranscriptStore(path) as reader:
            assert list(crush.history(store=reader).text) == ["count", "one"]
            journal = path / "messages" / f"{sid}.jsonl"
            read = journal.stat().st_size
            for word in (" two", " three", " four"):
                reply.append_text(word)
                kernel.update_message(reply)  # streamed: the flush appends what it gained
                kernel.flush()
            kernel.add_message(Message(sid, Role.USER, [TextPart("again")]))
            assert f'"{APPEND_KEY}":['.encode() in journal.read_bytes()  # the case under test
            # The same reader (its rows held in memory) and a new one both see the turn.
            assert list(crush.history(store=reader).text) == [
                "count",
                "one two three four",
                "again",
            ]
        assert list(crush.history(store=path).text) == ["count", "one two three four", "again"]
    assert scans == [(sid, 0), (sid, read)]  # then only what followed, and kept so on disk
    pd.testing.assert_frame_equal(crush.history(store=path), truth(path))


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "body byte", "number byte", "text byte", "empty"],
)
def test_a_damaged_cache_file_is_ignored_and_rebuilt(tmp_path, scans, damage):
    path = tmp_path / "store"
    sid = make_store(path)
    expected = crush.history(store=path)
    file = cache_file(path, sid)
    data = bytearray(file.read_bytes())
    head_end = data.index(b"\n") + 1
    body_end = data.index(b"\n", head_end) + 1
    if damage == "truncated":
        data = data[: len(data) - 5]
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    elif damage == "body byte":
        data[head_end + 2] ^= 0x01
    elif damage == "number byte":
        data[body_end + 3] ^= 0x40
    elif damage == "text byte":
        data[-3:] = b"\x00\x00\x00"
    else:
        data = bytearray()
    file.write_bytes(bytes(data))
    pd.testing.assert_frame_equal(crush.history(store=path), expected)
    assert scans == [(sid, 0), (sid, 0)]  # rebuilt from the journal, and kept again
    pd.testing.assert_frame_equal(crush.history(store=path), expected)
    assert len(scans) == 2


def test_a_cache_file_of_another_format_version_is_rebuilt(tmp_path, scans):
    path = tmp_path / "store"
    sid = make_store(path)
    expected = crush.history(store=path)
    file = cache_file(path, sid)
    head, rest = file.read_bytes().split(b"\n", 1)
    fields = json.loads(head)
    fields["version"] = row_cache.CACHE_VERSION + 1
    file.write_bytes(json.dumps(fields).encode() + b"\n" + rest)
    pd.testing.assert_frame_equal(crush.history(store=path), expected)
    assert scans == [(sid, 0), (sid, 0)]
    assert json.loads(file.read_bytes().split(b"\n", 1)[0])["version"] == row_cache.CACHE_VERSION


def test_a_compacted_journal_is_read_again_and_its_old_rows_dropped(tmp_path, monkeypatch, scans):
    monkeypatch.setattr(store_module, "COMPACT_MIN_BYTES", 2048)
    path = tmp_path / "store"
    with TranscriptStore(path) as kernel:
        sid = kernel.create_session("s").id
        note = kernel.add_message(Message(sid, Role.USER, [TextPart("draft: token sk-old")]))
        with TranscriptStore(path) as reader:
            assert list(crush.history(store=reader).text) == ["draft: token sk-old"]
            assert b"sk-old" in cache_file(path, sid).read_bytes()
            for n in range(40):  # whole rewrites supersede the draft until compaction runs
                note.parts = [TextPart(f"final text, revision {n} " + "x" * 200)]
                kernel.update_message(note, force=True)
            kernel.close()  # waits for the compaction
            journal = path / "messages" / f"{sid}.jsonl"
            # A new file (the old one's inode number may be reused for it).
            assert b"sk-old" not in journal.read_bytes()
            # The rows derived from the dropped records went with them; the closing kernel
            # kept those of the new file.
            head = json.loads(cache_file(path, sid).read_bytes().split(b"\n", 1)[0])
            assert head["inode"] == journal.stat().st_ino
            assert b"sk-old" not in cache_file(path, sid).read_bytes()
            assert list(crush.history(store=reader).text) == [note.text]
    assert scans[-1] == (sid, 0)  # the new file is read whole, never as an extension
    assert b"sk-old" not in cache_file(path, sid).read_bytes()
    pd.testing.assert_frame_equal(crush.history(store=path), truth(path))


def test_a_journal_rewritten_in_place_is_read_again(tmp_path, scans):
    path = tmp_path / "store"
    sid = make_store(path)
    crush.history(store=path)
    journal = path / "messages" / f"{sid}.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[0])
    record["parts"][0]["text"] = "rewritten by hand, and longer than before"
    with open(journal, "r+b") as f:  # the same file (inode), its first record changed
        f.write(json.dumps(record).encode() + b"\n" + b"".join(lines[1:]))
    assert crush.history(store=path).text[0] == "rewritten by hand, and longer than before"
    assert scans[-1] == (sid, 0)


def test_a_session_whose_journal_is_gone_takes_its_cache_file_with_it(tmp_path, scans):
    path = tmp_path / "store"
    sid = make_store(path)
    other = make_store(tmp_path / "other")
    crush.history(store=tmp_path / "other")
    with TranscriptStore(path) as kernel:  # open before and after
        crush.history(store=kernel)
        (path / "messages" / f"{sid}.jsonl").unlink()
        assert len(crush.history(store=kernel)) == 0
        assert not cache_file(path, sid).exists()
    # Removed by whoever opens the store next, even without a query.
    (tmp_path / "other" / "messages" / f"{other}.jsonl").unlink()
    TranscriptStore(tmp_path / "other").close()
    assert not cache_file(tmp_path / "other", other).exists()


def test_a_dead_kernel_s_reply_is_settled_though_its_rows_were_kept(tmp_path):
    path = tmp_path / "store"
    kernel = TranscriptStore(path)
    sid = kernel.create_session("s").id
    kernel.add_message(Message(sid, Role.USER, [TextPart("go")]))
    kernel.add_message(Message(sid, Role.ASSISTANT, [TextPart("streaming")]))
    # Its kernel alive, the reply is left as it is, and its rows are kept so.
    assert crush.history(store=path).finish_reason.isna().all()
    assert cache_file(path, sid).is_file()
    kernel.close()  # the kernel is gone: its unfinished reply is settled by the next reader
    rows = crush.history(store=path)
    assert rows.finish_reason.isna().tolist() == [True, False]
    assert rows.finish_reason[1] == "error"
    pd.testing.assert_frame_equal(rows, truth(path))


def test_stale_session_totals_are_rewritten_as_the_store_s_reader_does(tmp_path):
    path = tmp_path / "store"
    sid = make_store(path)
    crush.history(store=path)
    index = path / "sessions.jsonl"
    record = json.loads(index.read_bytes().splitlines()[-1])
    record["message_count"] = 7  # a writer killed between a message and its session record
    with open(index, "ab") as f:
        f.write(json.dumps(record).encode() + b"\n")
    with pytest.warns(store_module.TruncatedTranscriptWarning, match="counts 7"):
        assert len(crush.history(store=path)) == 3
    with TranscriptStore(path) as store:
        assert store.get_session(sid).message_count == 3


def test_kept_rows_have_the_journal_s_permissions(tmp_path):
    path = tmp_path / "store"
    with TranscriptStore(path) as store:
        sid = store.create_session("s").id
        store.add_message(Message(sid, Role.USER, [TextPart("private")]))
        os.chmod(path / "messages" / f"{sid}.jsonl", 0o600)
        os.chmod(path / "messages", 0o750)
    for keeper in ("the closing writer", "a reader"):
        assert stat.S_IMODE(cache_file(path, sid).stat().st_mode) == 0o600, keeper
        assert stat.S_IMODE((path / row_cache.ROWS_DIR).stat().st_mode) == 0o750, keeper
        shutil.rmtree(path / row_cache.ROWS_DIR)
        crush.history(store=path)


def test_text_no_utf_8_encodes_and_separator_characters_round_trip(tmp_path, scans):
    path = tmp_path / "store"
    texts = ["nul \x00 and \x01", "lone \udcff surrogate", "", "ünïcödé \ue000 \n lines"]
    with TranscriptStore(path) as store:
        sid = store.create_session("s").id
        for text in texts:
            store.add_message(Message(sid, Role.USER, [TextPart(text)]))
    assert list(crush.history(store=path).text) == texts
    assert list(crush.history(store=path).text) == texts
    assert len(scans) == 1


def test_a_session_to_settle_is_handed_to_the_reader_before_any_row_is_built(tmp_path, monkeypatch):
    path = tmp_path / "store"
    with TranscriptStore(path) as kernel:
        sid = kernel.create_session("s").id
        kernel.add_message(Message(sid, Role.USER, [TextPart("go")]))
        kernel.add_message(Message(sid, Role.ASSISTANT, [TextPart("cut short")]))
    built_from_journal = []
    row_of = row_scan.row_of

    def spy(message):
        built_from_journal.append(message.id)
        return row_of(message)

    monkeypatch.setattr(row_scan, "row_of", spy)
    with TranscriptStore(path) as reader:
        rows = crush.history(store=reader)
        assert rows.finish_reason[1] == "error"
        assert built_from_journal == []  # the rows came from the reader's messages
    # The reader wrote the settled reply: closing, it keeps the rows of the journal as it is.
    assert built_from_journal == list(rows.message_id)
    assert cache_file(path, sid).is_file()
