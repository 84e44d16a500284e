"""The transcript store: sessions and their messages, durable and queryable with TinyDB.

On-disk layout (format version 1)::

    <store>/
      format.json            {"format": "jupyter-crush-transcripts", "version": 1}
      sessions.jsonl         session index: one full Session record per line, last per id wins
      messages/<id>.jsonl    one journal per session: one full Message record per line, last
                             record per message id wins; messages keep the order of first record
      images/<sha256>.<ext>  the bytes of each image part, written once, named by their hash;
                             records hold only the name (see ImagePart)
      writers/<token>.lock   one per open store, flock-held while that store is alive
      .lock                  flock that serializes writers across processes

Why this layout. Stock TinyDB (``JSONStorage``) rewrites the whole file in place on every
write, so a crash mid-write corrupts it, and its Table layer rebuilds the table on every
insert/update, so a write costs O(all messages). An agent that records every streamed token
cannot run on that. Here a write appends one line (one ``write`` syscall) to the journal of
the message's own session plus one line to the session index: its cost does not depend on
other sessions or on the length of its own. Appends are safe against ``kill -9`` at any
instant: a record counts only when its newline is on disk, a torn tail is ignored by readers
and cut off by the next writer (see :mod:`jupyter_crush.storage`). Whole-file rewrites
(compaction, ``format.json``) go through a temporary file and ``os.replace``. With
``fsync=True`` every write is also fsynced, which additionally survives power loss.

Refused writes. When the file system refuses an append (disk full, read-only, permission
removed), nothing raises and nothing is dropped: the records stay pending in memory, in
order, and are retried on every later write of their session, on ``flush()`` and by a
timer every ``RETRY_INTERVAL``; :meth:`TranscriptStore.pending_writes` says what waits,
where and why. One session's refused journal never fails another session's writes.

Streaming: the agent calls :meth:`TranscriptStore.update_message` for every token. Updates
are coalesced to at most one disk write per message per ``flush_interval`` (30/s by
default); the latest state is always visible to readers in this process, and whatever is
pending is written by a forced update, ``flush()``, ``close()``, a timer on the running
event loop, garbage collection of the store, or interpreter exit. Each write of a
message appends its full JSON, so a long streamed reply supersedes its earlier records;
when superseded bytes dominate a journal (more than half of it, beyond
``COMPACT_MIN_BYTES``) the journal is rewritten with only the latest records. That bounds a
journal to about twice its live size and costs O(1) amortized per appended byte. The rewrite
runs on a background thread: it writes the copy without holding any lock, then, under the
locks, appends the records written meanwhile verbatim and moves the copy into place, so no
write waits for a large session to be copied.

Opening reads only ``format.json`` and the session index. Each session record carries the
usage/cost totals and message count, maintained incrementally and appended after every
message write; a writer killed between the two appends leaves stale totals, which are
recomputed and rewritten when the session's journal is first read in a process (the first
time its messages are needed). Message records carry one extra key, ``_writer``.

Several processes (kernels) may use one store. Writers take the ``.lock`` flock, read
whatever other processes appended, then append, so records never interleave and a new
message gets the same place in every process. Readers need no lock: they read only the new
bytes of a file, up to its last newline. Each journal keeps a descriptor on the file version
it has read, which pins the inode, so a compaction by another process (a new inode at the
path) is always noticed and the file re-read; at most ``MAX_OPEN_JOURNALS`` are kept open,
a closed one is re-read whole when next needed. A store object inherited through ``fork``
refuses to work in the child (the flocks would be shared with the parent).

Settling. A kernel killed mid-reply leaves an assistant message without a finish part, and
maybe tool calls without results; providers reject such a history. When a session is
loaded for the first time in a process (and on ``settle_dangling``), such messages get an
``error`` finish part and the calls an error tool result (in one appended tool message), and
that is persisted. Only messages of dead writers are settled: each record names the store
instance that wrote it, and an instance holds a lease (a flock on ``writers/<token>.lock``)
while it lives, which the kernel drops when the process dies, even on ``kill -9``. So a
reply still streaming in another live kernel (or in this store) is never cut short; it is
settled by whoever loads the session after its kernel died.

TinyDB. :attr:`TranscriptStore.db` is a real :class:`tinydb.TinyDB` (tables ``sessions`` and
``messages``, the latter the default) over a custom :class:`tinydb.Storage` that reads the
store's current data, so ``tinydb.Query`` works over every session and message. It is
read-only: TinyDB's write path hands the storage the whole database on every operation
(O(N), the cost this store exists to avoid) and would bypass the journal's ordering and
totals, so writes raise :class:`StoreError` pointing at the store's methods. The query
cache is disabled so a query always sees the latest messages. Message documents carry
derived fields for convenient queries: ``text``, ``reasoning``, ``finish_reason`` and
``position`` (index in its session). A query reads every session (O(store));
``search_messages(cond, session_id=...)`` reads one.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import json
import logging
import os
import re
import resource
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.queries import QueryLike
from tinydb.storages import Storage
from tinydb.table import Table

from .message import (
    FinishReason,
    ImagePart,
    Message,
    Role,
    Session,
    ToolCallPart,
    ToolResultPart,
    Usage,
    new_id,
    now,
)
from .storage import (
    Journal,
    ProcessLock,
    StoreError,
    WriterLease,
    remove_stale_temporaries,
    write_atomic,
)

__all__ = [
    "KERNEL_STOPPED_MESSAGE",
    "TOOL_INTERRUPTED_MESSAGE",
    "PendingWrites",
    "StoreError",
    "TranscriptDB",
    "TranscriptStore",
    "TruncatedTranscriptWarning",
    "UnknownMessageError",
    "UnknownSessionError",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "jupyter-crush-transcripts"
FORMAT_VERSION = 1
#: A journal is compacted only beyond this size (and when over half of it is superseded).
COMPACT_MIN_BYTES = 256 * 1024
#: Seconds between retries of writes the file system refused (disk full, read-only).
RETRY_INTERVAL = 1.0


def _journal_cap() -> int:
    """Session journals to keep open at once: a quarter of the descriptor limit, so the rest
    of the kernel keeps plenty, but at least 32 and at most 1024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(32, min(1024, soft // 4))


#: Session journals kept open at once (each pins the file version it has read).
MAX_OPEN_JOURNALS = _journal_cap()
KERNEL_STOPPED_MESSAGE = "The kernel stopped before this reply finished"
TOOL_INTERRUPTED_MESSAGE = "Tool call interrupted: the kernel stopped before it finished"

# Session ids name files, so they are restricted to a portable, path-safe alphabet.
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_WRITER_TOKEN = re.compile(r"[0-9a-f]{32}")
FORMAT_FILE = "format.json"  # the format version; written once
IMAGES_DIR = "images"  # image parts' bytes, one file per distinct image
INDEX_FILE = "sessions.jsonl"  # the session index
_WRITER_KEY = "_writer"  # record key naming the store instance that wrote it

_UsageTuple = tuple[int, int, int, int]


class UnknownSessionError(KeyError):
    """No session with this id exists in the store."""

    def __init__(self, session_id: str, store_path: Path) -> None:
        super().__init__(session_id)
        self.session_id = session_id
        self.store_path = store_path

    def __str__(self) -> str:
        return (
            f"no session {self.session_id!r} in the transcript store {self.store_path}; "
            f"create it with create_session(session_id={self.session_id!r}) or pick an id "
            "from list_sessions()"
        )


class UnknownMessageError(KeyError):
    """No message with this id exists in the session."""

    def __init__(self, session_id: str, message_id: str) -> None:
        super().__init__(message_id)
        self.session_id = session_id
        self.message_id = message_id

    def __str__(self) -> str:
        return (
            f"no message {self.message_id!r} in session {self.session_id!r}; "
            "list_messages(session_id) shows the ids there"
        )


def _dumps(data: dict[str, Any]) -> bytes:
    try:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        # Text decoded with surrogateescape holds lone surrogates, which UTF-8 cannot
        # encode; ASCII JSON escapes them (\udcXX) and reads back the same string.
        return json.dumps(data, separators=(",", ":")).encode()


def _usage_tuple(usage: dict[str, Any] | Usage) -> _UsageTuple:
    if isinstance(usage, Usage):
        return (
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_tokens,
            usage.cache_write_tokens,
        )
    return (
        int(usage.get("input_tokens", 0)),
        int(usage.get("output_tokens", 0)),
        int(usage.get("cache_read_tokens", 0)),
        int(usage.get("cache_write_tokens", 0)),
    )


@dataclasses.dataclass(eq=False)
class _Entry:
    """One message as this process knows it."""

    line: bytes  # its latest JSON (newer than the disk while the message is pending)
    usage: _UsageTuple
    cost: float
    writer: str  # token of the store instance whose record this is
    disk_len: int = 0  # bytes of its latest on-disk record incl. newline; 0 if never written


@dataclasses.dataclass(frozen=True)
class Refusal:
    """The file system refused a write to ``path``, saying ``reason``."""

    path: Path
    reason: str


@dataclasses.dataclass(frozen=True)
class PendingWrites:
    """Records kept in memory because their file refused them; retried until written."""

    path: Path
    records: int
    reason: str

    def __str__(self) -> str:
        noun = "record" if self.records == 1 else "records"
        return f"{self.records} {noun} not yet written to {self.path}: {self.reason}"


class _SessionState:
    """A session and, once loaded in this process, its messages."""

    def __init__(self, session: Session, journal: Journal) -> None:
        self.session = session
        self.journal = journal
        # None until the journal is loaded in this process; insertion order is message order.
        self.entries: dict[str, _Entry] | None = None
        self.live_bytes = 0  # sum of entries' disk_len: the size of a compacted journal
        self.index_line = b""  # this session's latest record in sessions.jsonl
        self.compactor: threading.Thread | None = None  # compacting its journal, if any


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

    def __init__(self, store: TranscriptStore, session_id: str | None = None) -> None:
        # A weak reference, so a TinyDB handle a user keeps does not keep the store alive.
        self._store = weakref.ref(store)
        self._session_id = session_id

    def read(self) -> dict[str, dict[str, Any]]:
        store = self._store()
        if store is None:
            raise StoreError("the transcript store behind this TinyDB was closed; reopen it")
        return store._tinydb_tables(self._session_id)

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        raise StoreError(
            "the TinyDB view of the transcript store is read-only; change it with "
            "TranscriptStore.create_session/add_message/update_message"
        )


class TranscriptStore:
    """Sessions and messages in a directory; see the module docstring for the design."""

    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` holds a transcript store, checked without creating one."""
        path = Path(path)
        return (path / FORMAT_FILE).is_file() or (path / INDEX_FILE).is_file()

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_interval: float = 1 / 30,
        fsync: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not flush_interval >= 0:
            raise ValueError(f"flush_interval must be >= 0 seconds, got {flush_interval!r}")
        self.path = _prepare_directory(Path(path))
        self.flush_interval = float(flush_interval)
        self.fsync = fsync
        self._clock = clock  # injectable so tests can drive coalescing deterministically
        self._token = new_id()  # names this instance in the records it writes
        self._messages_dir = self.path / "messages"
        self._writers_dir = self.path / "writers"
        self.images_dir = self.path / IMAGES_DIR
        # _lock guards every field below and all file access by this instance: the session
        # map and each session's entries/totals, pending updates, write times, the journals'
        # offsets and descriptors, and the timer. The agent writes from the event loop
        # thread while a shutdown hook may flush from another.
        self._lock = threading.RLock()
        self._closed = False
        self._closing = False  # set by close(): compactions may no longer start
        self._pid = os.getpid()  # the process that opened the store (see _forked)
        self._sessions: dict[str, _SessionState] = {}  # creation order
        # session id -> ids of messages whose latest state is in memory only (coalesced)
        self._pending: dict[str, dict[str, None]] = {}
        # session id -> message id -> the caller's live Message of a coalesced update, not yet
        # serialized. Folded into the session's entries (_materialize) before anything reads
        # or writes them, so a streamed token costs no JSON encoding.
        self._live: dict[str, dict[str, Message]] = {}
        # session ids whose journal holds a descriptor, least recently used first
        self._open_journals: OrderedDict[str, None] = OrderedDict()
        self._last_write: dict[tuple[str, str], float] = {}  # (session, message) -> clock()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._index_live = 0  # sum of the session records' sizes: a compacted index's size
        # What the file system refused, by session id (its journal) or INDEX_FILE: the file
        # and the reason. The refused records stay in _pending / _stale_index until a retry
        # succeeds; nothing of one session waits for another's.
        self._refusals: dict[str, Refusal] = {}
        self._stale_index: dict[str, None] = {}  # sessions whose latest record is not indexed
        self._db: TranscriptDB | None = None
        try:
            for sub in (self._messages_dir, self._writers_dir, self.images_dir):
                sub.mkdir(exist_ok=True)
            self._plock = ProcessLock(self.path / ".lock")
        except OSError as exc:
            self._closed = True
            raise StoreError(
                f"the transcript store {self.path} is not writable ({exc.strerror}); "
                "choose a directory you can write to"
            ) from None
        self._index = Journal(self.path / INDEX_FILE)
        try:
            with self._lock, self._plock:
                # Under the process lock, like every liveness check, so no other process
                # sees this lease before it is held.
                self._lease = WriterLease(self._writers_dir, self._token)
                self._check_format()
                remove_stale_temporaries(self.path)
                remove_stale_temporaries(self._messages_dir)
                remove_stale_temporaries(self.images_dir)
                self._sweep_dead_writers()
                self._catch_up_index()
                _warn_if_cut_short(self._index)
        except OSError as exc:
            self._closed = True
            self._release_files()
            raise StoreError(f"cannot open the transcript store {self.path}: {exc}") from None
        except BaseException:
            self._closed = True
            self._release_files()
            raise
        _LIVE_STORES.add(self)

    # -- sessions ------------------------------------------------------------

    def create_session(self, title: str = "", session_id: str | None = None) -> Session:
        """Create and persist a new session. ``session_id`` defaults to a fresh random id."""
        if not isinstance(title, str):
            raise TypeError(f"session title must be a str, got {type(title).__name__}")
        sid = new_id() if session_id is None else session_id
        if not isinstance(sid, str) or not _SESSION_ID.fullmatch(sid):
            raise ValueError(
                f"invalid session id {sid!r}: use 1-128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        with self._lock:
            self._check_open()
            with self._plock:
                self._catch_up_index()
                if sid in self._sessions:
                    raise ValueError(
                        f"session {sid!r} already exists in {self.path}; use get_session({sid!r})"
                    )
                # Journals are named by id, and some file systems ignore case.
                folded = sid.casefold()
                clash = next((o for o in self._sessions if o.casefold() == folded), None)
                if clash is not None:
                    raise ValueError(
                        f"session id {sid!r} differs from the existing {clash!r} only in case; "
                        "pick another id"
                    )
                st = _SessionState(
                    Session(id=sid, title=title), Journal(self._messages_dir / f"{sid}.jsonl")
                )
                self._sessions[sid] = st
                self._write_session_record(st)
            return _copy_session(st.session)

    def rename_session(self, session_id: str, title: str) -> Session:
        """Set a session's title (durable on return)."""
        if not isinstance(title, str):
            raise TypeError(f"session title must be a str, got {type(title).__name__}")
        with self._lock:
            self._check_open()
            st = self._state(session_id)
            with self._plock:
                self._catch_up_index()
                st.session.title = title
                st.session.updated_at = now()
                self._write_session_record(st)
            return _copy_session(st.session)

    def get_session(self, session_id: str) -> Session:
        with self._lock:
            self._check_open()
            self._catch_up_index()
            st = self._state(session_id)
            if st.entries is not None:
                self._catch_up(st)
            return _copy_session(st.session)

    def has_session(self, session_id: str) -> bool:
        with self._lock:
            self._check_open()
            if session_id not in self._sessions:
                self._catch_up_index()
            return session_id in self._sessions

    def list_sessions(self) -> list[Session]:
        """All sessions, most recently updated first."""
        with self._lock:
            self._check_open()
            self._catch_up_index()
            for st in self._sessions.values():
                if st.entries is not None:
                    # A damaged journal is reported when its own session is used; the
                    # listing shows what was last read of it.
                    with contextlib.suppress(StoreError):
                        self._catch_up(st)
            sessions = [_copy_session(st.session) for st in self._sessions.values()]
        sessions.sort(key=lambda s: s.updated_at, reverse=True)
        return sessions

    # -- messages ------------------------------------------------------------

    def add_message(self, message: Message) -> Message:
        """Persist ``message`` (durable on return) and return it.

        Adding a message whose id the session already has replaces it, like a forced update.
        """
        self._store_message(message, force=True)
        return message

    def update_message(self, message: Message, *, force: bool = False) -> None:
        """Record the message's latest state; written to disk at most once per
        ``flush_interval`` per message, immediately when ``force`` is true (or when the
        message is new to the store)."""
        self._store_message(message, force=force)

    def list_messages(self, session_id: str) -> list[Message]:
        """The session's messages in the order they were added, with pending updates."""
        with self._lock:
            self._check_open()
            st = self._loaded(session_id)
            assert st.entries is not None
            lines = [entry.line for entry in st.entries.values()]
        return [self._located(Message.from_dict(json.loads(line))) for line in lines]

    def get_message(self, session_id: str, message_id: str) -> Message:
        with self._lock:
            self._check_open()
            st = self._loaded(session_id)
            assert st.entries is not None
            entry = st.entries.get(message_id)
            if entry is None:
                raise UnknownMessageError(session_id, message_id)
            line = entry.line
        return self._located(Message.from_dict(json.loads(line)))

    def journal_path(self, session_id: str) -> Path:
        """The session's append-only JSON-lines file, for read-only scans such as a search
        prefilter; call :meth:`flush` first so it holds this process's latest states."""
        with self._lock:
            self._check_open()
            return self._state(session_id).journal.path

    def settle_dangling(self, session_id: str) -> list[Message]:
        """Finish what a stopped kernel left open in the session; return what changed.

        An assistant message without a finish part gets one (reason ``error``); a tool call
        without a result later in the session gets an error result, in one appended tool
        message. Messages whose writer is still alive (this store, or a store in another
        running process) are left alone. Runs automatically the first time a session is
        loaded in a process.
        """
        with self._lock:
            self._check_open()
            return self._settle(self._loaded(session_id, settle=False))

    # -- durability ----------------------------------------------------------

    def flush(self) -> None:
        """Write every pending update, and retry what the file system refused before."""
        with self._lock:
            if self._closed or self._forked():
                return
            for sid in list(self._pending):
                if self._pending.get(sid):
                    self._write(self._sessions[sid], ())
            if self._stale_index and not self._pending:
                self._write_session_record(self._sessions[next(iter(self._stale_index))])

    def pending_writes(self, session_id: str | None = None) -> list[PendingWrites]:
        """What the file system refused and is kept in memory until a retry succeeds.

        Empty when everything is on disk. With ``session_id``, only what concerns that
        session (its journal, and the session index if its record waits there).
        """
        with self._lock:
            found = []
            for key, refusal in self._refusals.items():
                if key == INDEX_FILE:
                    sids = [s for s in self._stale_index if session_id in (None, s)]
                    if sids:
                        found.append(PendingWrites(refusal.path, len(sids), refusal.reason))
                elif session_id in (None, key) and self._pending.get(key):
                    found.append(
                        PendingWrites(refusal.path, len(self._pending[key]), refusal.reason)
                    )
            return found

    def close(self) -> None:
        """Flush and release the store's files. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closing = True  # no new compactions
        if not self._forked():
            self._join_compactions()
        with self._lock:
            if self._closed:
                return
            try:
                self.flush()
                for lost in self.pending_writes():
                    log.error("closing the transcript store lost what it could not write: %s", lost)
            finally:
                self._closed = True
                _LIVE_STORES.discard(self)
                # A forked child's copy must not remove the parent's lease.
                self._release_files(release_lease=not self._forked())

    def __enter__(self) -> TranscriptStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A store dropped without close() still gets its pending updates written.
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                self.close()

    def __repr__(self) -> str:
        return f"TranscriptStore({str(self.path)!r})"

    # -- TinyDB --------------------------------------------------------------

    @property
    def db(self) -> TranscriptDB:
        """A read-only :class:`tinydb.TinyDB` over all sessions and messages.

        ``store.db.search(Query().text.search("NaN"))`` searches messages;
        ``store.db.table("sessions")`` holds the sessions.
        """
        with self._lock:
            self._check_open()
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
        return [self._located(Message.from_dict(doc)) for doc in table.search(cond)]

    def _tinydb_tables(self, session_id: str | None) -> dict[str, dict[str, Any]]:
        with self._lock:
            self._check_open()
            if session_id is None:
                self._catch_up_index()
                states = list(self._sessions.values())
            else:
                states = [self._state(session_id)]
            sessions: dict[str, Any] = {}
            messages: dict[str, Any] = {}
            for st in states:
                self._loaded(st.session.id)
                sessions[str(len(sessions) + 1)] = st.session.to_dict()
                assert st.entries is not None
                for position, entry in enumerate(st.entries.values()):
                    messages[str(len(messages) + 1)] = _query_document(entry.line, position)
        return {"sessions": sessions, "messages": messages}

    # -- internals: reading ----------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the transcript store {self.path} is closed; open a new one")
        if self._forked():
            raise StoreError(
                f"this TranscriptStore for {self.path} was opened in process {self._pid} and "
                "inherited by a fork; open a new TranscriptStore in this process"
            )

    def _forked(self) -> bool:
        # A fork shares the parent's flocks (same open file descriptions), so a child
        # writing through the inherited store would not be serialized against its parent.
        return os.getpid() != self._pid

    def _state(self, session_id: str) -> _SessionState:
        st = self._sessions.get(session_id)
        if st is None:
            self._catch_up_index()
            st = self._sessions.get(session_id)
            if st is None:
                raise UnknownSessionError(session_id, self.path)
        return st

    def _loaded(self, session_id: str, *, settle: bool = True) -> _SessionState:
        """The session with its messages loaded and caught up with other processes."""
        st = self._state(session_id)
        if st.entries is not None:
            self._catch_up(st)
            return st
        with self._plock:
            indexed = _session_totals(st.session)
            st.entries = {}
            try:
                self._catch_up(st)  # a first read: recomputes the totals from the messages
            except BaseException:
                st.entries = None
                raise
            _warn_if_cut_short(st.journal, st.session.message_count, indexed[2])
            if _session_totals(st.session) != indexed:
                # A writer stopped between a message write and its session record.
                self._write_session_record(st)
            if settle:
                self._settle(st)
        return st

    def _catch_up(self, st: _SessionState) -> None:
        """Apply records other processes appended to the session's journal."""
        assert st.entries is not None
        self._materialize(st)  # every reader and writer passes here
        reset, records = st.journal.read_new()
        self._note_journal(st)
        if not reset:
            for record, line in records:
                self._apply_record(st, record, line)
            return
        # Rebuild from the file's whole content in its order, then lay our pending (newer,
        # not yet written) states over it.
        pending = self._pending.get(st.session.id, {})
        kept = {mid: st.entries[mid] for mid in pending if mid in st.entries}
        st.entries = {}
        st.live_bytes = 0
        for record, line in records:
            self._apply_record(st, record, line)
        for mid, entry in kept.items():
            on_disk = st.entries.get(mid)
            entry.disk_len = on_disk.disk_len if on_disk is not None else 0
            st.entries[mid] = entry
        _recompute_totals(st)

    def _note_journal(self, st: _SessionState) -> None:
        """Track journals holding a descriptor; close the least recently used beyond a cap.

        A closed journal is simply re-read from the start on its next use. Journals with
        pending updates stay open: their in-memory state is newer than the disk.
        """
        sid = st.session.id
        if not st.journal.is_open:
            self._open_journals.pop(sid, None)
            return
        self._open_journals[sid] = None
        self._open_journals.move_to_end(sid)
        if len(self._open_journals) <= MAX_OPEN_JOURNALS:
            return
        for victim in list(self._open_journals):
            if victim != sid and victim not in self._pending:
                self._sessions[victim].journal.close()
                del self._open_journals[victim]
                return

    def _apply_record(self, st: _SessionState, record: dict[str, Any], line: bytes) -> None:
        assert st.entries is not None
        mid = record.get("id")
        problem = _record_problem(record, st.session.id)
        if problem:
            raise st.journal.corrupt(line, problem)
        assert isinstance(mid, str)
        size = len(line) + 1
        old = st.entries.get(mid)
        if old is not None:
            st.live_bytes += size - old.disk_len
            old.disk_len = size
            if mid in self._pending.get(st.session.id, ()):
                return  # our in-memory state is newer than anything on disk
        else:
            st.live_bytes += size
        try:
            entry = _Entry(
                line,
                _usage_tuple(record.get("usage") or {}),
                float(record.get("cost") or 0.0),
                str(record.get(_WRITER_KEY, "")),
                size,
            )
        except (TypeError, ValueError, AttributeError):
            raise st.journal.corrupt(
                line, "a message record with malformed usage or cost"
            ) from None
        _set_entry(st, mid, entry)

    def _catch_up_index(self) -> None:
        """Apply session records other processes appended to the session index."""
        reset, records = self._index.read_new()
        if reset:
            self._index_live = 0
            for st in self._sessions.values():
                st.index_line = b""
        for record, line in records:
            try:
                session = Session.from_dict(record)
            except (TypeError, ValueError, KeyError, AttributeError):
                raise self._index.corrupt(line, "not a valid session record") from None
            if not isinstance(session.id, str) or not _SESSION_ID.fullmatch(session.id):
                # ids name files: never follow one out of the store
                raise self._index.corrupt(line, f"a session with an invalid id {session.id!r}")
            st = self._sessions.get(session.id)
            if st is None:
                st = _SessionState(session, Journal(self._messages_dir / f"{session.id}.jsonl"))
                self._sessions[session.id] = st
            elif st.entries is None:
                st.session = session
            else:
                # Totals of a loaded session come from its messages; take only what the
                # messages cannot tell.
                st.session.title = session.title
                st.session.updated_at = max(st.session.updated_at, session.updated_at)
            if st.index_line:
                self._index_live -= len(st.index_line) + 1
            st.index_line = line
            self._index_live += len(line) + 1

    # -- internals: writing ----------------------------------------------------

    def _store_message(self, message: Message, *, force: bool) -> None:
        if not isinstance(message, Message):
            raise TypeError(f"expected a Message, got {type(message).__name__}")
        sid, mid = message.session_id, message.id
        unsaved = [image for image in message.images if image.directory != self.images_dir]
        # A message with images not yet on disk is written now, with them, never coalesced:
        # its record must not reach the journal before the files it names.
        force = force or bool(unsaved)
        with self._lock:
            self._check_open()
            last = self._last_write.get((sid, mid))
            if not force and last is not None and self._clock() - last < self.flush_interval:
                # Coalesced (the streaming hot path): keep a reference to the live message;
                # it is serialized when written or read.
                self._live.setdefault(sid, {})[mid] = message
                self._pending.setdefault(sid, {})[mid] = None
                self._schedule_deadline()
                return
        entry = self._entry_for(message)  # the caller keeps mutating its object; snapshot it
        with self._lock:
            self._check_open()
            self._live.get(sid, {}).pop(mid, None)  # superseded by this newer snapshot
            st = self._loaded(sid)
            assert st.entries is not None
            with self._plock:
                # Read other processes' records first, so a new message takes the same
                # place in memory as on disk: after them.
                self._catch_up(st)
                self._save_images(unsaved)
                old = st.entries.get(mid)
                entry.disk_len = old.disk_len if old is not None else 0
                _set_entry(st, mid, entry)
                st.session.updated_at = now()
                self._write(st, [mid])

    def _save_images(self, images: list[ImagePart]) -> None:
        """Write the bytes of images new to the store; each file once (named by content).

        Under the process lock, like every atomic write (see remove_stale_temporaries).
        """
        for image in images:
            path = image.path_in(self.images_dir)
            if not path.exists():
                if image.data is None:
                    raise StoreError(
                        f"image {image.file} has no bytes to store; make it with "
                        "jupyter_crush.images (image_part)"
                    )
                try:
                    write_atomic(path, image.data, fsync=self.fsync)
                except OSError as exc:
                    raise StoreError(
                        f"could not write the image file {path} ({exc.strerror}); "
                        "free some space or make the store's directory writable"
                    ) from exc
            image.directory = self.images_dir

    def _located(self, message: Message) -> Message:
        """``message`` with its images pointing at this store's image files."""
        for image in message.images:
            image.directory = self.images_dir
        return message

    def _entry_for(self, message: Message) -> _Entry:
        data = message.to_dict()
        data[_WRITER_KEY] = self._token
        usage, cost = _usage_tuple(message.usage), float(message.cost or 0.0)
        return _Entry(_dumps(data), usage, cost, self._token)

    def _materialize(self, st: _SessionState) -> None:
        """Serialize the session's coalesced live messages into its entries."""
        live = self._live.pop(st.session.id, None)
        if not live:
            return
        assert st.entries is not None
        for mid, message in live.items():
            entry = self._entry_for(message)
            old = st.entries.get(mid)
            entry.disk_len = old.disk_len if old is not None else 0
            _set_entry(st, mid, entry)
        st.session.updated_at = now()

    def _write(self, st: _SessionState, mids: Iterable[str]) -> None:
        """Append the latest state of ``mids`` to the session journal, then the session record.

        A write the file system refuses (disk full, read-only, permission) raises nothing:
        the messages stay pending in memory, in order, and every later write of the
        session, :meth:`flush` and a retry timer try again (see :meth:`pending_writes`).
        """
        sid = st.session.id
        pending = self._pending.setdefault(sid, {})
        for mid in mids:
            pending[mid] = None  # so a re-read during catch-up keeps our newer state
        with self._plock:
            self._catch_up(st)
            assert st.entries is not None
            # Everything pending goes in one append, in the order it became pending: a
            # message refused earlier must not land on disk after the ones that followed
            # it (a message enters pending first when it is new, so in message order).
            mids = list(pending)
            entries = [st.entries[mid] for mid in mids]
            try:
                st.journal.append(b"".join(e.line + b"\n" for e in entries), fsync=self.fsync)
            except OSError as exc:
                self._refused(sid, st.journal.path, exc)
                return
            self._refusals.pop(sid, None)
            written = self._clock()
            for mid, entry in zip(mids, entries, strict=True):
                st.live_bytes += len(entry.line) + 1 - entry.disk_len
                entry.disk_len = len(entry.line) + 1
                self._last_write[(sid, mid)] = written
            del self._pending[sid]
            self._maybe_compact(st)
            self._write_session_record(st)

    def _refused(self, key: str, path: Path, exc: OSError) -> None:
        """Note a write the file system refused; a timer retries it (see _retry_refused)."""
        if key not in self._refusals:
            # Said on the run's status line (pending_writes); a log line at warning level
            # would land in whichever cell runs next.
            log.info("could not write %s (%s); kept in memory, retrying", path, exc.strerror)
        self._refusals[key] = Refusal(path, exc.strerror or str(exc))
        self._schedule_deadline()

    def _write_session_record(self, st: _SessionState) -> None:
        self._catch_up_index()
        # Session records the index refused before go along; the latest record per id wins.
        self._stale_index[st.session.id] = None
        states = [self._sessions[sid] for sid in self._stale_index]
        lines = [_dumps(s.session.to_dict()) for s in states]
        try:
            self._index.append(b"".join(line + b"\n" for line in lines), fsync=self.fsync)
        except OSError as exc:
            self._refused(INDEX_FILE, self._index.path, exc)
            return
        self._refusals.pop(INDEX_FILE, None)
        self._stale_index.clear()
        for s, line in zip(states, lines, strict=True):
            if s.index_line:
                self._index_live -= len(s.index_line) + 1
            s.index_line = line
            self._index_live += len(line) + 1
        if self._index.offset > max(COMPACT_MIN_BYTES, 2 * self._index_live):
            payload = b"".join(s.index_line + b"\n" for s in self._sessions.values())
            try:
                self._index.rewrite(payload, fsync=self.fsync)
            except OSError as exc:  # only space is lost; the next record's write retries
                log.info("compacting %s failed (%s)", self._index.path, exc.strerror)

    def _maybe_compact(self, st: _SessionState) -> None:
        """Start compacting the journal once superseded records dominate it.

        The copy is written by a background thread without any lock and installed under
        the locks together with whatever was appended meanwhile, so a write never waits for
        a whole session to be rewritten.
        """
        if st.compactor is not None or self._closing:
            return
        if st.journal.offset <= max(COMPACT_MIN_BYTES, 2 * st.live_bytes):
            return
        if st.session.id in self._pending:
            return  # the copy must be the disk's state; the write that flushes retries
        assert st.entries is not None
        lines = [entry.line for entry in st.entries.values()]
        st.compactor = threading.Thread(
            target=self._compact,
            args=(st, lines, st.journal.snapshot()),
            name="crush-store-compact",
            daemon=True,
        )
        st.compactor.start()

    def _compact(self, st: _SessionState, lines: list[bytes], snapshot: tuple[int, int]) -> None:
        tmp = None
        try:
            tmp = st.journal.write_compacted(b"".join(line + b"\n" for line in lines), self._token)
            with self._lock:
                if self._closed:
                    return
                with self._plock:
                    self._catch_up(st)
                    if st.journal.install_compacted(tmp, snapshot, fsync=self.fsync):
                        tmp = None
        except OSError as exc:  # a full disk: the journal stays as it was, a later write retries
            log.info("compacting %s failed (%s)", st.journal.path, exc.strerror)
        except Exception:
            log.exception("compacting %s failed; a later write retries", st.journal.path)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            with self._lock:
                st.compactor = None

    def _join_compactions(self) -> None:
        """Wait for running compactions. Call without holding ``_lock``: they need it."""
        with self._lock:
            running = [st.compactor for st in self._sessions.values() if st.compactor]
        for thread in running:
            thread.join()

    def _schedule_deadline(self) -> None:
        """Make sure coalesced updates reach the disk even if no further update comes.

        Only possible from a thread running an event loop (the agent's); elsewhere pending
        updates wait for the next write, flush(), close() or interpreter exit.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._timer is not None and self._timer_loop is loop and not self._timer.cancelled():
            return
        self._timer_loop = loop
        self._timer = loop.call_later(self.flush_interval, self._flush_due)

    def _flush_due(self) -> None:
        # A loop callback: an exception here would be printed into whichever cell runs.
        try:
            self._flush_due_locked()
        except Exception as exc:  # a journal damaged meanwhile: said when the session is used
            log.warning("writing pending transcript updates to %s failed: %s", self.path, exc)

    def _flush_due_locked(self) -> None:
        with self._lock:
            self._timer = None
            if self._closed or self._forked():
                return
            if self._refusals:
                # Something was refused: retry everything, at a pace that does not spin.
                self.flush()
                if self._refusals and self._timer_loop is not None:
                    self._timer = self._timer_loop.call_later(RETRY_INTERVAL, self._flush_due)
                return
            clock = self._clock()
            wait: float | None = None
            for sid in list(self._pending):
                due = False
                for mid in self._pending.get(sid, ()):
                    left = self._last_write.get((sid, mid), clock) + self.flush_interval - clock
                    if left <= 0:
                        due = True
                    else:
                        wait = left if wait is None else min(wait, left)
                if due:
                    self._write(self._sessions[sid], ())
            if wait is not None and self._timer_loop is not None:
                self._timer = self._timer_loop.call_later(wait, self._flush_due)

    # -- internals: settling -------------------------------------------------

    def _settle(self, st: _SessionState) -> list[Message]:
        with self._plock:  # nobody appends between our reading and our writing
            self._catch_up(st)
            return self._settle_locked(st)

    def _settle_locked(self, st: _SessionState) -> list[Message]:
        assert st.entries is not None
        alive: dict[str, bool] = {}

        def owned(writer: str) -> bool:
            if writer not in alive:
                alive[writer] = writer == self._token or (
                    bool(_WRITER_TOKEN.fullmatch(writer))
                    and WriterLease.is_alive(self._writers_dir, writer)
                )
            return alive[writer]

        messages = [(Message.from_dict(json.loads(e.line)), e.writer) for e in st.entries.values()]
        answered: set[str] = set()
        dangling: list[ToolCallPart] = []
        changed: list[Message] = []
        for message, writer in reversed(messages):
            answered.update(r.tool_call_id for r in message.tool_results)
            if message.role is not Role.ASSISTANT or owned(writer):
                continue
            calls = [c for c in message.tool_calls if c.id not in answered]
            dangling[:0] = calls
            if not message.is_finished:
                message.add_finish(FinishReason.ERROR, KERNEL_STOPPED_MESSAGE)
                changed.append(message)
        changed.reverse()
        if dangling:
            changed.append(
                Message(
                    session_id=st.session.id,
                    role=Role.TOOL,
                    parts=[
                        ToolResultPart(c.id, c.name, TOOL_INTERRUPTED_MESSAGE, is_error=True)
                        for c in dangling
                    ],
                )
            )
        if changed:
            for message in changed:
                data = message.to_dict()
                data[_WRITER_KEY] = self._token
                old = st.entries.get(message.id)
                _set_entry(
                    st,
                    message.id,
                    _Entry(
                        _dumps(data),
                        _usage_tuple(message.usage),
                        float(message.cost or 0.0),
                        self._token,
                        old.disk_len if old is not None else 0,
                    ),
                )
            st.session.updated_at = now()
            self._write(st, [m.id for m in changed])
        return changed

    # -- internals: files ------------------------------------------------------

    def _check_format(self) -> None:
        path = self.path / FORMAT_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            if any(self.path.glob("*.jsonl")):
                raise StoreError(
                    f"{path} is missing but {self.path} holds transcript files; restore it "
                    f'as {{"format": "{FORMAT_NAME}", "version": {FORMAT_VERSION}}}'
                ) from None
            meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
            write_atomic(path, _dumps(meta) + b"\n", fsync=self.fsync)
            return
        try:
            meta = json.loads(raw)
            name, version = meta["format"], meta["version"]
        except (ValueError, TypeError, KeyError):
            raise StoreError(
                f"corrupted transcript store file {path}; restore it "
                f'as {{"format": "{FORMAT_NAME}", "version": {FORMAT_VERSION}}}'
            ) from None
        if name != FORMAT_NAME:
            raise StoreError(f"{self.path} is not a jupyter-crush transcript store ({path})")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StoreError(
                f"the transcript store {self.path} has format version {version!r}, newer than "
                f"this jupyter-crush supports ({FORMAT_VERSION}); upgrade jupyter-crush"
            )

    def _sweep_dead_writers(self) -> None:
        """Remove what dead writers left: leases and compaction copies. Runs under the
        process lock at open; leases are made under it too, so a half-made lease here
        belongs to a dead writer."""
        for lease in self._writers_dir.iterdir():
            name = lease.name
            if name.startswith(".") and name.endswith(".new"):
                with contextlib.suppress(OSError):
                    lease.unlink()
            elif (
                name.endswith(".lock")
                and _WRITER_TOKEN.fullmatch(lease.stem)
                and lease.stem != self._token
            ):
                WriterLease.is_alive(self._writers_dir, lease.stem)
        # Background compactions write their copy outside the process lock, named by token.
        for copy in self._messages_dir.glob(".*.compact"):
            token = copy.name.rsplit(".", 2)[-2]
            if not _WRITER_TOKEN.fullmatch(token) or not WriterLease.is_alive(
                self._writers_dir, token
            ):
                with contextlib.suppress(OSError):
                    copy.unlink()

    def _release_files(self, *, release_lease: bool = True) -> None:
        for st in getattr(self, "_sessions", {}).values():
            st.journal.close()
        if hasattr(self, "_index"):
            self._index.close()
        if hasattr(self, "_lease"):
            if release_lease:
                self._lease.release()
            else:
                self._lease.close()
        if hasattr(self, "_plock"):
            self._plock.close()


# -- helpers -------------------------------------------------------------------


def _prepare_directory(path: Path) -> Path:
    path = path.expanduser().absolute()
    if path.exists():
        if not path.is_dir():
            raise StoreError(
                f"transcript store path {path} exists and is not a directory; pass a directory"
            )
    else:
        parent = path.parent
        if not parent.is_dir():
            problem = "is not a directory" if parent.exists() else "does not exist"
            raise StoreError(
                f"cannot create the transcript store {path}: its parent {parent} {problem}; "
                "pass a path inside an existing directory"
            )
        try:
            path.mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the transcript store directory {path} ({exc.strerror}); "
                "choose a directory you can write to"
            ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StoreError(
            f"the transcript store {path} is not writable; choose a directory you can write to"
        )
    return path


_ROLES = frozenset(str(role) for role in Role)


def _record_problem(record: dict[str, Any], session_id: str) -> str:
    """Why a journal record cannot be a message of this session ("" if it can)."""
    if not isinstance(record.get("id"), str):
        return "a message record without an id"
    if record.get("session_id") != session_id:
        return f"a message of another session ({record.get('session_id')!r})"
    if record.get("role") not in _ROLES:
        return f"a message record with an unknown role ({record.get('role')!r})"
    parts = record.get("parts")
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        return "a message record whose parts are not a list of objects"
    return ""


class TruncatedTranscriptWarning(UserWarning):
    """A transcript file was cut short (an interrupted copy, a restored disk)."""


def _warn_if_cut_short(journal: Journal, found: int = 0, indexed: int = 0) -> None:
    """Say once, at the first read in this process, that a file lost its end.

    Call under the process lock: every append happens under it, so bytes after the last
    newline then are a torn record, never one still being written. A journal holding
    fewer messages than its session record counts lost whole records.
    """
    problems = []
    if journal.tail:
        problems.append(f"its last {journal.tail} bytes are an incomplete record, ignored")
    if found < indexed:
        problems.append(
            f"it holds {found} messages where the session index counts {indexed}, so "
            f"{indexed - found} are missing"
        )
    if problems:
        warnings.warn(
            f"transcript file {journal.path} was cut short: {'; '.join(problems)}. The "
            "records before are read; restore the file from a backup to recover the rest.",
            TruncatedTranscriptWarning,
            stacklevel=2,
        )


def _set_entry(st: _SessionState, mid: str, entry: _Entry) -> None:
    """Insert or replace a message entry, keeping the session totals in step (O(1))."""
    assert st.entries is not None
    old = st.entries.get(mid)
    session = st.session
    usage = list(_usage_tuple(session.usage))
    for i, value in enumerate(entry.usage):
        usage[i] += value - (old.usage[i] if old is not None else 0)
    session.usage = Usage(*usage)
    session.cost += entry.cost - (old.cost if old is not None else 0.0)
    st.entries[mid] = entry
    session.message_count = len(st.entries)


def _session_totals(session: Session) -> tuple[_UsageTuple, float, int]:
    return _usage_tuple(session.usage), round(session.cost, 9), session.message_count


def _recompute_totals(st: _SessionState) -> None:
    assert st.entries is not None
    usage = [0, 0, 0, 0]
    cost = 0.0
    for entry in st.entries.values():
        for i, value in enumerate(entry.usage):
            usage[i] += value
        cost += entry.cost
    st.session.usage = Usage(*usage)
    st.session.cost = round(cost, 9)
    st.session.message_count = len(st.entries)


def _copy_session(session: Session) -> Session:
    return dataclasses.replace(session, usage=dataclasses.replace(session.usage))


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


# Every open store, weakly: flushed and closed at interpreter exit, yet free to be
# garbage-collected (and then flushed by __del__) before that.
_LIVE_STORES: weakref.WeakSet[TranscriptStore] = weakref.WeakSet()


def _reset_locks_in_child() -> None:
    # A fork copies a lock held by another thread (a compaction, a flush) as held forever;
    # fresh locks let the child's inherited stores at least refuse work and close.
    for store in list(_LIVE_STORES):
        store._lock = threading.RLock()


os.register_at_fork(after_in_child=_reset_locks_in_child)


@atexit.register
def _close_live_stores() -> None:
    for store in list(_LIVE_STORES):
        try:
            store.close()
        except Exception:
            log.exception("could not flush the transcript store %s at exit", store.path)
