"""A turn's records against a store that refuses some writes, one rule per test.

A saved step reaches the disk at once; a failed read of the session ends the turn with what
failed; ``close`` retries every write that failed before, and its outcome names exactly what
was and wasn't saved.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from jupyter_crush.agent.records import TOOL_CANCELED, StoreFailed, TurnRecords
from jupyter_crush.core.message import FinishReason, Message, Role, TextPart, ToolCallPart
from jupyter_crush.store.transcript import TranscriptStore
from jupyter_crush.testing import ScriptedModel


class RefusingStore:
    """The store, refusing the writes ``refuses`` picks (a full disk, for those)."""

    def __init__(self, store: TranscriptStore, refuses: Callable[[Message], bool]) -> None:
        self.store = store
        self.refuses = refuses

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def add_message(self, message: Message) -> Message:
        if self.refuses(message):
            raise OSError(28, "No space left on device")
        return self.store.add_message(message)


def refused_once(role: Role) -> Callable[[Message], bool]:
    refused: list[str] = []

    def refuses(message: Message) -> bool:
        if message.role is role and not refused:
            refused.append(message.id)
            return True
        return False

    return refuses


def test_a_saved_step_reaches_the_disk_at_once(store):
    session = store.create_session()
    records = TurnRecords(store, session.id, "hi")
    records.record_prompt()
    answer = Message(session.id, Role.ASSISTANT, [TextPart("thinking")])
    records.add(answer)
    answer.parts[0] = TextPart("the step's final text")
    records.save(answer)  # a kernel dying right after loses nothing of it
    assert "the step's final text" in store.journal_path(session.id).read_text()


def test_a_session_that_cannot_be_read_ends_the_turn_saying_so(store):
    class Unreadable(RefusingStore):
        def list_messages(self, session_id: str) -> list[Message]:
            raise OSError(5, "Input/output error")

    records = TurnRecords(Unreadable(store, lambda m: False), store.create_session().id, "hi")
    with pytest.raises(StoreFailed, match=r"^The transcript store failed reading the session: "):
        records.history()
    assert isinstance(records.failure, OSError)


def test_close_writes_again_a_record_refused_earlier_and_says_it_is_saved(store):
    session = store.create_session()
    records = TurnRecords(RefusingStore(store, refused_once(Role.USER)), session.id, "hi")
    with pytest.raises(StoreFailed):
        records.record_prompt()  # the disk was full for this one write
    outcome = records.close(FinishReason.CANCELED, "", ScriptedModel([]))
    assert [m.role for m in store.list_messages(session.id)] == [Role.USER, Role.ASSISTANT]
    assert outcome.reason is FinishReason.ERROR  # the user hears the store failed once
    assert outcome.detail.endswith("saved: the prompt, the finish record")
    assert "not saved" not in outcome.detail


def test_tool_results_the_store_refused_are_named_as_not_saved(store):
    session = store.create_session()
    records = TurnRecords(RefusingStore(store, refused_once(Role.TOOL)), session.id, "run it")
    records.record_prompt()
    records.add(Message(session.id, Role.ASSISTANT, [ToolCallPart("c1", "python", "{}")]))
    outcome = records.close(FinishReason.CANCELED, "Stopped", ScriptedModel([]))
    assert outcome.detail.endswith("saved: the prompt, the answer; not saved: the tool results")
    [results] = [m for m in records.messages if m.role is Role.TOOL]
    assert results.tool_results[0].content == TOOL_CANCELED
