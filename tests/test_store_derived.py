"""Values derived from each message, kept by the store with that state of the message
(TranscriptStore.derived / kept), and history() answering from them."""

from __future__ import annotations

import jupyter_crush as crush
from jupyter_crush import Message, Role, TranscriptStore
from jupyter_crush.core.message import TextPart


def test_a_value_is_derived_once_per_state_of_a_message(tmp_path):
    with TranscriptStore(tmp_path / "store", flush_interval=3600) as store:
        sid = store.create_session().id
        first = store.add_message(Message(sid, Role.USER, [TextPart("question")]))
        reply = store.add_message(Message(sid, Role.ASSISTANT, [TextPart("an")]))
        seen: list[str] = []

        def derive(message: Message) -> str:
            seen.append(message.id)
            return message.text

        assert store.kept(sid, "texts") is None  # nothing derived yet
        assert store.derived(sid, "texts", derive) == ["question", "an"]
        assert store.derived(sid, "texts", derive) == ["question", "an"]
        assert seen == [first.id, reply.id]
        assert store.kept(sid, "texts") == ["question", "an"]

        reply.append_text("swer")
        store.update_message(reply)  # coalesced: in memory only, still a new state
        assert store.kept(sid, "texts") is None
        assert store.derived(sid, "texts", derive) == ["question", "answer"]
        assert seen == [first.id, reply.id, reply.id]  # only the changed message again


def test_kept_reads_nothing_for_a_session_not_loaded(tmp_path):
    with TranscriptStore(tmp_path / "store") as store:
        sid = store.create_session().id
        store.add_message(Message(sid, Role.USER, [TextPart("hello")]))
    with TranscriptStore(tmp_path / "store") as store:
        assert store.kept(sid, "texts") is None
        assert store.derived(sid, "texts", lambda m: m.text) == ["hello"]


def test_history_and_search_see_every_change_after_an_earlier_query(tmp_path):
    with TranscriptStore(tmp_path / "store", flush_interval=3600) as store:
        sid = store.create_session("s").id
        reply = store.add_message(Message(sid, Role.ASSISTANT, [TextPart("first")]))
        assert list(crush.history(store=store).text) == ["first"]
        assert list(crush.history(store=store, search="needle").text) == []
        reply.append_text(" then the needle")
        store.update_message(reply)
        store.rename_session(sid, "renamed")
        rows = crush.history(store=store)
        assert list(rows.text) == ["first then the needle"]
        assert list(rows.session_title) == ["renamed"]
        assert list(crush.history(store=store, search="needle").text) == ["first then the needle"]


def test_rows_handed_out_are_the_caller_s_own(tmp_path):
    with TranscriptStore(tmp_path / "store") as store:
        sid = store.create_session().id
        store.add_message(Message(sid, Role.USER, [TextPart("hello")]))
        rows = crush.history(store=store)
        rows.at[0, "text"] = "changed"
        rows.at[0, "images"].append("x.png")
        again = crush.history(store=store)
        assert list(again.text) == ["hello"]
        assert list(again.images) == [[]]
