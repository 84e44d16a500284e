"""Append records: a streamed message's writes hold only what it gained (store/appends.py),
read back, caught up with, compacted and crash-safe like whole records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_store import crash_and_verify

import jupyter_crush as crush
import jupyter_crush.store.transcript as store_module
from jupyter_crush.core.message import (
    FinishPart,
    FinishReason,
    Message,
    ReasoningPart,
    Role,
    TextPart,
    ToolCallPart,
    Usage,
    new_id,
)
from jupyter_crush.store import appends
from jupyter_crush.store.storage import StoreError, WriterLease
from jupyter_crush.store.transcript import TranscriptStore

APPEND_WRITER = Path(__file__).parent / "support" / "append_writer.py"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def journal(store: TranscriptStore, sid: str) -> list[dict]:
    return [json.loads(line) for line in store.journal_path(sid).read_bytes().splitlines()]


def stream(store: TranscriptStore, clock: Clock, reply: Message, tokens: int) -> None:
    """Each token a write of its own: the flush interval passes between two."""
    for i in range(tokens):
        if i == 3:
            reply.append_reasoning("think ")
        elif i == 6:
            reply.parts.append(ToolCallPart("call-1", "run_code"))
        elif 6 < i < 9:
            reply.parts[-1].input += '{"a": 1}'[(i - 7) * 4 : (i - 6) * 4]
        else:
            reply.append_text(f"tök{i} ")
        clock.now += 1
        store.update_message(reply)


def test_streamed_writes_hold_only_what_was_appended_and_read_back_the_same(tmp_path):
    clock = Clock()
    path = tmp_path / "s"
    with TranscriptStore(path, flush_interval=0.5, clock=clock) as store:
        sid = store.create_session().id
        reply = store.add_message(Message(sid, Role.ASSISTANT))
        stream(store, clock, reply, 200)
        records = journal(store, sid)
        # Whole: the new message, and its first streamed write after a whole one.
        assert ["parts" in r for r in records[:3]] == [True, True, False]
        assert all("parts" not in r for r in records[2:])
        assert len(records) == 201
        # Each holds its token, not the reply so far.
        assert max(len(json.dumps(r)) for r in records[2:]) < 400
        assert store.list_messages(sid) == [reply]
    with TranscriptStore(path) as reopened:
        read, _ = reopened.list_messages(sid)  # and the tool call's settling result
        assert read.finish_reason is FinishReason.ERROR
        assert (read.text, read.reasoning) == (reply.text, reply.reasoning)
        kinds = [TextPart, ReasoningPart, TextPart, ToolCallPart, TextPart, FinishPart]
        assert [type(p) for p in read.parts] == kinds
        assert read.parts[3].input == '{"a": 1}'


def test_any_other_change_is_written_whole(tmp_path):
    clock = Clock()
    path = tmp_path / "s"
    with TranscriptStore(path, flush_interval=0.5, clock=clock) as store:
        sid = store.create_session().id
        reply = store.add_message(Message(sid, Role.ASSISTANT, [TextPart("draft")]))
        reply.parts[0].text = "edited, and longer"  # not an append: whole
        clock.now += 1
        store.update_message(reply)
        reply.append_text("!")
        reply.usage = Usage(output_tokens=3)  # usage changed: whole
        clock.now += 1
        store.update_message(reply)
        reply.append_text("?")
        store.update_message(reply, force=True)  # forced: whole
        assert ["parts" in r for r in journal(store, sid)] == [True] * 4
    with TranscriptStore(path) as reopened:
        [read] = reopened.list_messages(sid)
        assert (read.text, read.usage.output_tokens) == ("edited, and longer!?", 3)


def test_another_store_follows_a_streaming_reply(tmp_path):
    clock = Clock()
    path = tmp_path / "s"
    with TranscriptStore(path, flush_interval=0.5, clock=clock) as writer:
        sid = writer.create_session().id
        reply = writer.add_message(Message(sid, Role.ASSISTANT))
        with TranscriptStore(path) as reader:
            for n in range(1, 60):
                stream(writer, clock, reply, 1)
                assert reader.list_messages(sid)[0].text == reply.text, n
            reply.add_finish(FinishReason.END_TURN)
            writer.update_message(reply, force=True)
            assert reader.list_messages(sid) == [reply]


def test_compaction_folds_appends_into_whole_records(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "COMPACT_MIN_BYTES", 4096)
    clock = Clock()
    path = tmp_path / "s"
    with TranscriptStore(path, flush_interval=0.5, clock=clock) as store:
        sid = store.create_session().id
        reply = store.add_message(Message(sid, Role.ASSISTANT))
        largest = 0
        for _ in range(1500):
            stream(store, clock, reply, 1)
            store._compactions.join()
            largest = max(largest, store.journal_path(sid).stat().st_size)
        live = len(reply.to_dict()["parts"][0]["text"])
        # Each token's record costs more than its text: compaction keeps the journal bounded.
        assert largest < 3 * live + 4096
        assert store.list_messages(sid) == [reply]
    with TranscriptStore(path) as reopened:
        assert reopened.list_messages(sid)[0].parts[:-1] == reply.parts  # and a settling finish


def test_an_append_that_does_not_continue_its_message_is_corruption(tmp_path):
    path = tmp_path / "s"
    with TranscriptStore(path) as store:
        sid = store.create_session().id
        reply = store.add_message(Message(sid, Role.ASSISTANT, [TextPart("abc")]))
    record = appends.append_record(reply.to_dict(), [[0, "text", 2, "x"]])
    with open(path / "messages" / f"{sid}.jsonl", "ab") as f:
        f.write(json.dumps(record).encode() + b"\n")
    with TranscriptStore(path) as store, pytest.raises(StoreError, match=r"line 2\) is an append"):
        store.list_messages(sid)


def test_a_version_1_store_is_upgraded_only_when_no_other_store_has_it_open(tmp_path):
    path = tmp_path / "s"
    with TranscriptStore(path) as store:
        sid = store.create_session().id
    version_1 = '{"format":"jupyter-crush-transcripts","version":1}\n'
    (path / "format.json").write_text(version_1)
    clock = Clock()
    # Another store has it open: it could be of an older release, which cannot read append
    # records. So the store stays version 1 and its streamed writes are whole records.
    other = WriterLease(path / "writers", new_id())
    try:
        with TranscriptStore(path, clock=clock) as store:
            assert (path / "format.json").read_text() == version_1
            reply = store.add_message(Message(sid, Role.ASSISTANT))
            stream(store, clock, reply, 20)
            assert all("parts" in r for r in journal(store, sid))
    finally:
        other.release()
    with TranscriptStore(path, clock=clock) as alone:
        assert json.loads((path / "format.json").read_text())["version"] == 2
        reply = alone.add_message(Message(sid, Role.ASSISTANT))
        stream(alone, clock, reply, 3)
        assert "append" in journal(alone, sid)[-1]


def test_kill_9_while_streaming_appends_never_loses_a_returned_write(tmp_path):
    crash_and_verify(tmp_path / "store", iterations=10, writer=APPEND_WRITER)


def test_kill_9_of_concurrent_append_writers_never_loses_a_returned_write(tmp_path):
    crash_and_verify(tmp_path / "store", iterations=4, writers=3, writer=APPEND_WRITER)


def test_search_finds_a_word_streamed_across_two_append_records(tmp_path):
    clock = Clock()
    with TranscriptStore(tmp_path / "s", flush_interval=0.5, clock=clock) as store:
        sid = store.create_session().id
        reply = store.add_message(Message(sid, Role.ASSISTANT, [TextPart("a")]))
        for piece in (" ", "nee", "dle"):
            reply.append_text(piece)
            clock.now += 1
            store.update_message(reply)
        assert [r["append"] for r in journal(store, sid)[2:]] == [
            [[0, "text", 2, "nee"]],
            [[0, "text", 5, "dle"]],
        ]
        assert list(crush.history(store=store, search="needle").text) == ["a needle"]
