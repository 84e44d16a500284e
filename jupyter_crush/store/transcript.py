"""The transcript store: sessions and their messages, durable and queryable with TinyDB.

On-disk layout (format version 2; version 1 has no append records)::

    <store>/
      format.json            {"format": "jupyter-crush-transcripts", "version": 2}
      sessions.jsonl         session index: one full Session record per line, last per id wins
      messages/<id>.jsonl    one journal per session: one full Message record per line, last
                             record per message id wins, or an append record continuing it
                             (see appends); messages keep the order of first record
      images/<sha256>.<ext>  the bytes of each image part, written once, named by their hash;
                             records hold only the name (see ImagePart)
      writers/<token>.lock   one per open store, flock-held while that store is alive
      rows/<id>.rows         history rows derived from a journal, never the source of truth
                             (see row_cache)
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
event loop, garbage collection of the store, or interpreter exit. A streamed write appends
only what the message gained since its last write (:mod:`jupyter_crush.store.appends`), so
its cost does not grow with the reply; any other write appends the message's full JSON,
superseding its earlier records. When superseded bytes (and append records' own keys)
dominate a journal (more than half of it, beyond ``COMPACT_MIN_BYTES``) the journal is
rewritten with each message's latest state as one record. That bounds a journal to about
twice its live size and costs O(1) amortized per appended byte. The rewrite runs on a
background thread (which also serializes the records): it writes the copy without holding
any lock, then, under the locks, appends the records written meanwhile verbatim and moves
the copy into place, so no write waits for a large session to be copied.

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

The store owns its parts, each an object with its own state: a
:class:`~jupyter_crush.store.replay.Replayer` (the sessions and the index, reading journals),
a :class:`~jupyter_crush.store.pending.Writer` (writing, coalesced and refused writes, the
timer), :class:`~jupyter_crush.store.queries.Queries` (TinyDB and searches),
:class:`_Compactions` (rewriting journals) and an
:class:`~jupyter_crush.store.opening.Opener`; they share the store's settings
(:mod:`jupyter_crush.store.state`) and its locks, and are built on the file primitives of
:mod:`jupyter_crush.store.storage`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import resource
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinydb.queries import QueryLike

from ..core.message import Message, Session, new_id, now
from .fallback import UnwrittenRecordsWarning
from .opening import Opener, _prepare_directory
from .pending import PendingWrites, Writer
from .queries import Queries, T, TranscriptDB
from .replay import (
    KERNEL_STOPPED_MESSAGE,
    TOOL_INTERRUPTED_MESSAGE,
    Replayer,
    TruncatedTranscriptWarning,
    _warn_if_cut_short,
)
from .row_cache import RowKeeper
from .rows import SessionRows
from .state import (
    _SESSION_ID,
    _WRITER_TOKEN,
    FORMAT_FILE,
    INDEX_FILE,
    Lifecycle,
    StoreConfig,
    UnknownMessageError,
    UnknownSessionError,
    _copy_session,
    _Entry,
    _SessionState,
    log,
)
from .storage import (
    Journal,
    ProcessLock,
    StoreError,
    WriterLease,
    remove_stale_temporaries,
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
        self._token = new_id()  # names this instance in the records it writes
        config = StoreConfig(self.path, self._token, fsync, self.flush_interval, clock)
        self._config = config
        self.images_dir = config.images_dir
        # Open, closing or closed, and the lock guarding the store's and its parts' state
        # (see Lifecycle); the parts share it.
        self._lifecycle = Lifecycle(self.path)
        try:
            for sub in (config.messages_dir, config.writers_dir, self.images_dir):
                sub.mkdir(exist_ok=True)
            self._plock = ProcessLock(self.path / ".lock")
        except OSError as exc:
            self._lifecycle.closed = True
            raise StoreError(
                f"the transcript store {self.path} is not writable ({exc.strerror}); "
                "choose a directory you can write to"
            ) from None
        self._replayer = Replayer(
            config, self._plock, Journal(self.path / INDEX_FILE), MAX_OPEN_JOURNALS
        )
        self._compactions = _Compactions(config, self._lifecycle, self._plock, self._replayer)
        self._writer = Writer(
            config,
            self._lifecycle,
            self._plock,
            self._replayer,
            self._compactions.maybe_compact,
            self._compactions.maybe_compact_index,
        )
        self._replayer.writer = self._writer
        self._compactions.writer = self._writer
        self._queries = Queries(config, self._lifecycle, self._replayer)
        self._rows = RowKeeper(config, self._lifecycle, self._plock, self._replayer, self._queries)
        self._compactions.rows = self._rows
        try:
            with self._lifecycle.lock, self._plock:
                # Under the process lock, like every liveness check, so no other process
                # sees this lease before it is held.
                self._lease = WriterLease(config.writers_dir, self._token)
                opener = Opener(config)
                version = opener.check_format()
                remove_stale_temporaries(self.path)
                remove_stale_temporaries(config.messages_dir)
                remove_stale_temporaries(self.images_dir)
                self._rows.sweep()
                opener.sweep_dead_writers()
                self._writer.appends = opener.allow_appends(version)
                self._replayer.catch_up_index()
                _warn_if_cut_short(self._replayer.index)
                self._writer.fold_unwritten()
        except OSError as exc:
            self._lifecycle.closed = True
            self._release_files()
            raise StoreError(f"cannot open the transcript store {self.path}: {exc}") from None
        except BaseException:
            self._lifecycle.closed = True
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
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            with self._plock:
                self._replayer.catch_up_index()
                if sid in self._replayer.sessions:
                    raise ValueError(
                        f"session {sid!r} already exists in {self.path}; use get_session({sid!r})"
                    )
                # Journals are named by id, and some file systems ignore case.
                folded = sid.casefold()
                clash = next((o for o in self._replayer.sessions if o.casefold() == folded), None)
                if clash is not None:
                    raise ValueError(
                        f"session id {sid!r} differs from the existing {clash!r} only in case; "
                        "pick another id"
                    )
                parent_id, call_id = parent or ("", "")
                if parent_id and parent_id not in self._replayer.sessions:
                    raise UnknownSessionError(parent_id, self.path)
                session = Session(
                    id=sid, title=title, parent_session_id=parent_id, parent_tool_call_id=call_id
                )
                st = self._replayer.add_session(session)
                self._writer.write_session_record(st)
            return _copy_session(st.session)

    def rename_session(self, session_id: str, title: str) -> Session:
        """Set a session's title (durable on return)."""
        if not isinstance(title, str):
            raise TypeError(f"session title must be a str, got {type(title).__name__}")
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            st = self._replayer.state(session_id)
            with self._plock:
                self._replayer.catch_up_index()
                st.session.title = title
                st.session.updated_at = now()
                self._writer.write_session_record(st)
            return _copy_session(st.session)

    def get_session(self, session_id: str) -> Session:
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            self._replayer.catch_up_index()
            st = self._replayer.state(session_id)
            if st.entries is not None:
                self._replayer.catch_up(st)
            return _copy_session(st.session)

    def has_session(self, session_id: str) -> bool:
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            if session_id not in self._replayer.sessions:
                self._replayer.catch_up_index()
            return session_id in self._replayer.sessions

    def list_sessions(self) -> list[Session]:
        """All sessions, most recently updated first."""
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            self._replayer.catch_up_index()
            for st in self._replayer.sessions.values():
                if st.entries is not None:
                    # A damaged journal is reported when its own session is used; the
                    # listing shows what was last read of it.
                    with contextlib.suppress(StoreError):
                        self._replayer.catch_up(st)
            sessions = [_copy_session(st.session) for st in self._replayer.sessions.values()]
        sessions.sort(key=lambda s: s.updated_at, reverse=True)
        return sessions

    # -- messages ------------------------------------------------------------

    def add_message(self, message: Message) -> Message:
        """Persist ``message`` (durable on return) and return it.

        Adding a message whose id the session already has replaces it, like a forced update.
        """
        self._writer.store_message(message, force=True)
        return message

    def update_message(self, message: Message, *, force: bool = False) -> None:
        """Record the message's latest state; written to disk at most once per
        ``flush_interval`` per message, immediately when ``force`` is true (or when the
        message is new to the store)."""
        self._writer.store_message(message, force=force)

    def list_messages(self, session_id: str) -> list[Message]:
        """The session's messages in the order they were added, with pending updates."""
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            st = self._replayer.loaded(session_id)
            assert st.entries is not None
            lines = [entry.line for entry in st.entries.values()]
        return [self._config.located(Message.from_dict(json.loads(line))) for line in lines]

    def get_message(self, session_id: str, message_id: str) -> Message:
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            st = self._replayer.loaded(session_id)
            assert st.entries is not None
            entry = st.entries.get(message_id)
            if entry is None:
                raise UnknownMessageError(session_id, message_id)
            line = entry.line
        return self._config.located(Message.from_dict(json.loads(line)))

    def written_elsewhere(self, session_id: str, message_id: str) -> bool:
        """Whether the message's latest record was written by another store that is still
        open (another kernel's), which alone knows what it did besides writing it."""
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            st = self._replayer.loaded(session_id)
            assert st.entries is not None
            entry = st.entries.get(message_id)
        writer = entry.writer if entry is not None else ""
        return (
            writer != self._token
            and bool(_WRITER_TOKEN.fullmatch(writer))
            and WriterLease.is_alive(self._config.writers_dir, writer)
        )

    def journal_path(self, session_id: str) -> Path:
        """The session's append-only JSON-lines file, for read-only scans such as a search
        prefilter; call :meth:`flush` first so it holds this process's latest states."""
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            return self._replayer.state(session_id).journal.path

    def settle_dangling(self, session_id: str) -> list[Message]:
        """Finish what a stopped kernel left open in the session; return what changed.

        An assistant message without a finish part gets one (reason ``error``); a tool call
        without a result later in the session gets an error result, in one appended tool
        message. Messages whose writer is still alive (this store, or a store in another
        running process) are left alone. Runs automatically the first time a session is
        loaded in a process.
        """
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            return self._replayer.settle(self._replayer.loaded(session_id, settle=False))

    # -- writes and queries, by the parts that hold them ---------------------------

    def flush(self) -> None:
        """Write every pending update, and retry what the file system refused before."""
        self._writer.flush()

    def pending_writes(self, session_id: str | None = None) -> list[PendingWrites]:
        """What the file system refused and is kept in memory until a retry succeeds.

        Empty when everything is on disk. With ``session_id``, only what concerns that
        session (its journal, and the session index if its record waits there).
        """
        return self._writer.pending_writes(session_id)

    @property
    def db(self) -> TranscriptDB:
        """A read-only :class:`tinydb.TinyDB` over all sessions and messages.

        ``store.db.search(Query().text.search("NaN"))`` searches messages;
        ``store.db.table("sessions")`` holds the sessions.
        """
        return self._queries.db

    def search_messages(self, cond: QueryLike, session_id: str | None = None) -> list[Message]:
        """Messages matching a ``tinydb.Query``, in session then message order.

        With ``session_id``, only that session is read, which is much cheaper than a query
        over the whole store.
        """
        return self._queries.search_messages(cond, session_id)

    def derived(self, session_id: str, name: str, derive: Callable[[Message], T]) -> list[T]:
        """``derive(message)`` per message of the session, in order, computed once per state
        of a message and kept under ``name`` (see :meth:`Queries.derived`)."""
        return self._queries.derived(session_id, name, derive)

    def kept(self, session_id: str, name: str) -> list[Any] | None:
        """What :meth:`derived` keeps under ``name``, if every message has it (None else)."""
        return self._queries.kept(session_id, name)

    def history_rows(self, session_id: str, *, build: bool = True) -> SessionRows | None:
        """The session's ``crush.history()`` rows, kept in memory and on disk per journal
        (see :mod:`jupyter_crush.store.row_cache`); with ``build`` false, only those at hand
        without reading a file (else None). Shared: read them, never change them."""
        return self._rows.rows(session_id, build=build)

    # -- durability ----------------------------------------------------------

    def close(self) -> None:
        """Flush, keep the history rows of the sessions written here (see
        :meth:`RowKeeper.keep_written`) and release the store's files. Idempotent."""
        with self._lifecycle.lock:
            if self._lifecycle.closed:
                return
            self._lifecycle.closing = True  # no new compactions
        if not self._lifecycle.forked():
            self._compactions.join()
        with self._lifecycle.lock:
            if self._lifecycle.closed:
                return
            try:
                self._writer.flush()
                if not self._lifecycle.forked() and not self._writer.pending_writes():
                    self._rows.keep_written()  # so the next process need not decode them
            finally:
                self._writer.save_unwritten()  # what the file system still refuses goes elsewhere
                self._lifecycle.closed = True
                _LIVE_STORES.discard(self)
                # A forked child's copy must not remove the parent's lease.
                self._release_files(release_lease=not self._lifecycle.forked())

    def __enter__(self) -> TranscriptStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A store dropped without close() still gets its pending updates written.
        lifecycle = getattr(self, "_lifecycle", None)
        if lifecycle is not None and not lifecycle.closed:
            with contextlib.suppress(Exception):
                self.close()

    def __repr__(self) -> str:
        return f"TranscriptStore({str(self.path)!r})"

    # -- internals ------------------------------------------------------------

    def _release_files(self, *, release_lease: bool = True) -> None:
        if hasattr(self, "_replayer"):
            for st in self._replayer.sessions.values():
                st.journal.close()
            self._replayer.index.close()
        if hasattr(self, "_lease"):
            if release_lease:
                self._lease.release()
            else:
                self._lease.close()
        if hasattr(self, "_plock"):
            self._plock.close()


class _Compactions:
    """Rewriting a journal (or the session index) once superseded records dominate it.

    A compaction thread takes the store's lock (``lifecycle.lock``, shared with the store
    and its other parts), with the process lock ``plock`` (also shared), to install its
    copy; the other methods run with the caller holding it. Each running compaction is the
    ``compactor`` of its session's state, set and cleared under it, so at most one runs per
    journal and close() can wait for them all.
    """

    def __init__(
        self,
        config: StoreConfig,
        lifecycle: Lifecycle,
        plock: ProcessLock,
        replayer: Replayer,
    ) -> None:
        self._config = config
        self._lifecycle = lifecycle
        self._plock = plock
        self._replayer = replayer
        # What waits to be written, and the history rows kept per journal; set by the store
        # right after they exist.
        self.writer: Writer
        self.rows: RowKeeper

    def maybe_compact(self, st: _SessionState) -> None:
        """Start compacting the journal once superseded records dominate it.

        The copy is written by a background thread without any lock and installed under
        the locks together with whatever was appended meanwhile, so a write never waits for
        a whole session to be rewritten.
        """
        if st.compactor is not None or self._lifecycle.closing:
            return
        if st.journal.offset <= max(COMPACT_MIN_BYTES, 2 * st.live_bytes):
            return
        if st.session.id in self.writer.pending:
            return  # the copy must be the disk's state; the write that flushes retries
        assert st.entries is not None
        # Serialized (or folded) by the thread: on this one it could take longer than a frame.
        entries = list(st.entries.values())
        st.compactor = threading.Thread(
            target=self._compact,
            args=(st, entries, st.journal.snapshot()),
            name="crush-store-compact",
            daemon=True,
        )
        st.compactor.start()

    def _compact(self, st: _SessionState, entries: list[_Entry], snapshot: tuple[int, int]) -> None:
        tmp = None
        try:
            tmp = st.journal.write_compacted(
                b"".join(entry.line + b"\n" for entry in entries), self._config.token
            )
            with self._lifecycle.lock:
                if self._lifecycle.closed:
                    return
                with self._plock:
                    self._replayer.catch_up(st)
                    if st.journal.install_compacted(tmp, snapshot, fsync=self._config.fsync):
                        tmp = None
                        # Rows derived from records the copy dropped go with them.
                        self.rows.forget(st.session.id)
        except OSError as exc:  # a full disk: the journal stays as it was, a later write retries
            log.info("compacting %s failed (%s)", st.journal.path, exc.strerror)
        except Exception:
            log.exception("compacting %s failed; a later write retries", st.journal.path)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            with self._lifecycle.lock:
                st.compactor = None

    def join(self) -> None:
        """Wait for running compactions. Call without holding the store's lock: they need it."""
        with self._lifecycle.lock:
            running = [st.compactor for st in self._replayer.sessions.values() if st.compactor]
        for thread in running:
            thread.join()

    def maybe_compact_index(self) -> None:
        """Rewrite the session index once superseded session records dominate it."""
        if self._replayer.index.offset > max(COMPACT_MIN_BYTES, 2 * self._replayer.index_live):
            payload = b"".join(s.index_line + b"\n" for s in self._replayer.sessions.values())
            try:
                self._replayer.index.rewrite(payload, fsync=self._config.fsync)
            except OSError as exc:  # only space is lost; the next record's write retries
                log.info("compacting %s failed (%s)", self._replayer.index.path, exc.strerror)


# Every open store, weakly: flushed and closed at interpreter exit, yet free to be
# garbage-collected (and then flushed by __del__) before that.
_LIVE_STORES: weakref.WeakSet[TranscriptStore] = weakref.WeakSet()


def _reset_locks_in_child() -> None:
    for store in list(_LIVE_STORES):
        store._lifecycle.renew_lock()


os.register_at_fork(after_in_child=_reset_locks_in_child)


@atexit.register
def _close_live_stores() -> None:
    for store in list(_LIVE_STORES):
        try:
            store.close()
        except Exception:
            log.exception("could not flush the transcript store %s at exit", store.path)
