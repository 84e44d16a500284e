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
and cut off by the next writer (see :mod:`jupyter_crush.store.storage`). Whole-file rewrites
(compaction, ``format.json``) go through a temporary file and ``os.replace``. With
``fsync=True`` every write is also fsynced, which additionally survives power loss.

Refused writes are kept pending in memory and retried, per session; see
:mod:`jupyter_crush.store.pending`. What is still refused when the store closes is saved in a
fallback journal outside it and folded in when the store next opens; see
:mod:`jupyter_crush.store.fallback`.

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

Settling: what a dead writer left open (a reply without its finish, tool calls without
results) is closed when the session is first loaded; see :mod:`jupyter_crush.store.replay`.

TinyDB: :attr:`TranscriptStore.db` is a read-only :class:`tinydb.TinyDB` over every session
and message; see :mod:`jupyter_crush.store.queries`.

The store's parts: :mod:`jupyter_crush.store.state` (the in-memory sessions and messages),
:mod:`jupyter_crush.store.replay` (reading journals), :mod:`jupyter_crush.store.pending`
(writing, and refused writes), :mod:`jupyter_crush.store.queries` (TinyDB and searches), all
built on the file primitives of :mod:`jupyter_crush.store.storage`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import resource
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from ..core.message import ImagePart, Message, Session, new_id, now
from .fallback import UnwrittenRecordsWarning
from .opening import _Opening, _prepare_directory
from .pending import RETRY_INTERVAL, PendingWrites, Refusal, _PendingWrites
from .queries import TranscriptDB, _Queries
from .replay import (
    KERNEL_STOPPED_MESSAGE,
    TOOL_INTERRUPTED_MESSAGE,
    TruncatedTranscriptWarning,
    _JournalReplay,
    _warn_if_cut_short,
)
from .state import (
    _SESSION_ID,
    _WRITER_KEY,
    _WRITER_TOKEN,
    FORMAT_FILE,
    IMAGES_DIR,
    INDEX_FILE,
    UnknownMessageError,
    UnknownSessionError,
    _copy_session,
    _dumps,
    _Entry,
    _SessionState,
    _set_entry,
    _usage_tuple,
    log,
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
    "UnwrittenRecordsWarning",
]

#: A journal is compacted only beyond this size (and when over half of it is superseded).
COMPACT_MIN_BYTES = 256 * 1024


def _journal_cap() -> int:
    """Session journals to keep open at once: a quarter of the descriptor limit, so the rest
    of the kernel keeps plenty, but at least 32 and at most 1024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(32, min(1024, soft // 4))


#: Session journals kept open at once (each pins the file version it has read).
MAX_OPEN_JOURNALS = _journal_cap()


class TranscriptStore(_Opening, _JournalReplay, _PendingWrites, _Queries):
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
        # The store's one timer on the event loop: it writes coalesced updates once due and
        # retries refused writes. At most one is pending per store, whatever the updates and
        # refusals: it is only scheduled through _arm_timer, which keeps the pending one when
        # it fires soon enough and cancels it otherwise, and _flush_due clears it on running.
        # (Each refusal scheduling a timer of its own once multiplied them until a disk that
        # stayed full took the whole loop.)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._retry_at = 0.0  # clock() after which the timer retries refused writes
        self._index_live = 0  # sum of the session records' sizes: a compacted index's size
        # What the file system refused, by session id (its journal) or INDEX_FILE: the file
        # and the reason. The refused records stay in _pending / _stale_index until a retry
        # succeeds; nothing of one session waits for another's.
        self._refusals: dict[str, Refusal] = {}
        self._stale_index: dict[str, None] = {}  # sessions whose latest record is not indexed
        # Fallback journals folded in at open whose records still wait in _pending: removed
        # once those are written, or once a close saves them again (store_fallback).
        self._folded: list[Path] = []
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
                self._fold_unwritten()
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

    def create_session(
        self,
        title: str = "",
        session_id: str | None = None,
        *,
        parent: tuple[str, str] | None = None,
    ) -> Session:
        """Create and persist a new session. ``session_id`` defaults to a fresh random id.

        ``parent`` (session id, tool call id) makes it a sub-agent's session, run by that
        call of that session, which must exist.
        """
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
                parent_id, call_id = parent or ("", "")
                if parent_id and parent_id not in self._sessions:
                    raise UnknownSessionError(parent_id, self.path)
                session = Session(
                    id=sid, title=title, parent_session_id=parent_id, parent_tool_call_id=call_id
                )
                st = _SessionState(session, Journal(self._messages_dir / f"{sid}.jsonl"))
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

    def written_elsewhere(self, session_id: str, message_id: str) -> bool:
        """Whether the message's latest record was written by another store that is still
        open (another kernel's), which alone knows what it did besides writing it."""
        with self._lock:
            self._check_open()
            st = self._loaded(session_id)
            assert st.entries is not None
            entry = st.entries.get(message_id)
        writer = entry.writer if entry is not None else ""
        return (
            writer != self._token
            and bool(_WRITER_TOKEN.fullmatch(writer))
            and WriterLease.is_alive(self._writers_dir, writer)
        )

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
            finally:
                self._save_unwritten()  # what the file system still refuses goes elsewhere
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

    # -- internals ------------------------------------------------------------

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
            refused = sid in self._refusals  # the retry timer writes it, not every token
            if (
                not force
                and last is not None
                and (refused or self._clock() - last < self.flush_interval)
            ):
                # Coalesced (the streaming hot path): keep a reference to the live message;
                # it is serialized when written or read.
                self._live.setdefault(sid, {})[mid] = message
                self._pending.setdefault(sid, {})[mid] = None
                self._arm_timer(RETRY_INTERVAL if refused else self.flush_interval)
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
                        "jupyter_crush.core.images (image_part)"
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

    def _maybe_compact_index(self) -> None:
        """Rewrite the session index once superseded session records dominate it."""
        if self._index.offset > max(COMPACT_MIN_BYTES, 2 * self._index_live):
            payload = b"".join(s.index_line + b"\n" for s in self._sessions.values())
            try:
                self._index.rewrite(payload, fsync=self.fsync)
            except OSError as exc:  # only space is lost; the next record's write retries
                log.info("compacting %s failed (%s)", self._index.path, exc.strerror)

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
