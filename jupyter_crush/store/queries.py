"""Queries: the read-only TinyDB view of a transcript store and ``search_messages``.

:attr:`TranscriptStore.db` is a real :class:`tinydb.TinyDB` (tables ``sessions`` and
``messages``, the latter the default) over a custom :class:`tinydb.Storage` that reads the
store's current data, so ``tinydb.Query`` works over every session and message. It is
read-only: TinyDB's write path hands the storage the whole database on every operation
(O(N), the cost this store exists to avoid) and would bypass the journal's ordering and
totals, so writes raise :class:`StoreError` pointing at the store's methods. The query
cache is disabled so a query always sees the latest messages. Message documents carry
derived fields for convenient queries: ``text``, ``reasoning``, ``finish_reason`` and
``position`` (index in its session). A query reads every session (O(store));
``search_messages(cond, session_id=...)`` reads one.

``derived`` hands out a value computed from each message (history's rows) and keeps it with
that state of the message, so asking again decodes nothing; it costs the memory of those
values for as long as the session stays loaded.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from tinydb import TinyDB
from tinydb.queries import QueryLike
from tinydb.storages import Storage
from tinydb.table import Table

from ..core.message import Message
from .replay import Replayer
from .state import _WRITER_KEY, Lifecycle, StoreConfig
from .storage import StoreError

T = TypeVar("T")
_MISSING = object()


class _LiveTable(Table):
    """A table without TinyDB's query cache, which is only invalidated by TinyDB's own
    writes and would keep answering with messages from before the store changed."""

    def __init__(self, storage: Storage, name: str, cache_size: int = 0, **kwargs: Any) -> None:
        super().__init__(storage, name, cache_size=cache_size, **kwargs)


class TranscriptDB(TinyDB):
    """A read-only TinyDB over a transcript store: tables ``messages`` (default), ``sessions``."""

    table_class = _LiveTable
    default_table_name = "messages"


class _StoreStorage(Storage):
    """TinyDB storage reading a store's current sessions and messages (read-only)."""

    def __init__(self, queries: Queries, session_id: str | None = None) -> None:
        # A weak reference, so a TinyDB handle a user keeps does not keep the store's
        # parts alive.
        self._queries = weakref.ref(queries)
        self._session_id = session_id

    def read(self) -> dict[str, dict[str, Any]]:
        queries = self._queries()
        if queries is None:
            raise StoreError("the transcript store behind this TinyDB was closed; reopen it")
        return queries.tinydb_tables(self._session_id)

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        raise StoreError(
            "the TinyDB view of the transcript store is read-only; change it with "
            "TranscriptStore.create_session/add_message/update_message"
        )


class Queries:
    """The TinyDB view and searches of a store.

    Reading the store's data takes the store's lock (``lifecycle.lock``, shared with the
    store and its other parts): it guards the sessions read and the cached TinyDB handle
    ``_db``.
    """

    def __init__(
        self,
        config: StoreConfig,
        lifecycle: Lifecycle,
        replayer: Replayer,
    ) -> None:
        self._config = config
        self._lifecycle = lifecycle
        self._replayer = replayer
        self._db: TranscriptDB | None = None

    @property
    def db(self) -> TranscriptDB:
        """A read-only :class:`tinydb.TinyDB` over all sessions and messages.

        ``store.db.search(Query().text.search("NaN"))`` searches messages;
        ``store.db.table("sessions")`` holds the sessions.
        """
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            if self._db is None:
                self._db = TranscriptDB(self, storage=_StoreStorage)
            return self._db

    def search_messages(self, cond: QueryLike, session_id: str | None = None) -> list[Message]:
        """Messages matching a ``tinydb.Query``, in session then message order.

        With ``session_id``, only that session is read, which is much cheaper than a query
        over the whole store.
        """
        if session_id is None:
            table = self.db.table("messages")
        else:
            table = TranscriptDB(self, session_id, storage=_StoreStorage).table("messages")
        return [self._config.located(Message.from_dict(doc)) for doc in table.search(cond)]

    def derived(self, session_id: str, name: str, derive: Callable[[Message], T]) -> list[T]:
        """``derive(message)`` for each of the session's messages, in order, computed once per
        state of a message and kept with it under ``name``: asking again costs a lookup for
        every message unchanged since. What ``derive`` returns is shared; do not change it."""
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            st = self._replayer.loaded(session_id)
            assert st.entries is not None
            entries = list(st.entries.values())
        # Outside the lock, so writers do not wait; an entry replaced meanwhile keeps a
        # value nobody asks for again.
        found = []
        for entry in entries:
            value = entry.derived.get(name, _MISSING)
            if value is _MISSING:
                message = self._config.located(Message.from_dict(json.loads(entry.line)))
                value = entry.derived[name] = derive(message)
            found.append(value)
        return found

    def kept(self, session_id: str, name: str) -> list[Any] | None:
        """What :meth:`derived` keeps under ``name`` for the session's messages as they are
        now, or None when a message lacks it or the session is not loaded (nothing is read)."""
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            st = self._replayer.state(session_id)
            if st.entries is None:
                return None
            self._replayer.catch_up(st)
            kept = [entry.derived.get(name, _MISSING) for entry in st.entries.values()]
        return None if any(value is _MISSING for value in kept) else kept

    def tinydb_tables(self, session_id: str | None) -> dict[str, dict[str, Any]]:
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            if session_id is None:
                self._replayer.catch_up_index()
                states = list(self._replayer.sessions.values())
            else:
                states = [self._replayer.state(session_id)]
            sessions: dict[str, Any] = {}
            messages: dict[str, Any] = {}
            for st in states:
                self._replayer.loaded(st.session.id)
                sessions[str(len(sessions) + 1)] = st.session.to_dict()
                assert st.entries is not None
                for position, entry in enumerate(st.entries.values()):
                    messages[str(len(messages) + 1)] = _query_document(entry.line, position)
        return {"sessions": sessions, "messages": messages}


def _query_document(line: bytes, position: int) -> dict[str, Any]:
    doc = json.loads(line)
    doc.pop(_WRITER_KEY, None)
    parts = doc.get("parts", ())
    doc["text"] = "".join(p.get("text", "") for p in parts if p.get("type") == "text")
    doc["reasoning"] = "".join(p.get("text", "") for p in parts if p.get("type") == "reasoning")
    finishes = [p.get("reason") for p in parts if p.get("type") == "finish"]
    doc["finish_reason"] = finishes[-1] if finishes else None
    doc["position"] = position
    return doc
