"""The transcript store's in-memory state: each session and, once loaded, its messages.

A :class:`_SessionState` holds a session's record and journal and, once the journal is read
in this process, one :class:`_Entry` per message (its latest JSON, usage and cost, writer and
on-disk size) in message order. :func:`_set_entry` keeps the session's usage/cost totals and
message count in step with the entries in O(1). Also what the store's parts share, each
handed to them by :class:`~jupyter_crush.store.transcript.TranscriptStore`: its settings
(:class:`StoreConfig`) and whether it is open, with the lock its state changes under
(:class:`Lifecycle`); and the ids, record keys and errors of the store's modules.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.message import Message, Session, Usage
from . import appends
from .storage import Journal, StoreError

# The store's modules log as one.
log = logging.getLogger("jupyter_crush.store.transcript")

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
    """One message as this process knows it: a state of it, newer than the disk while the
    message is pending. The state is held as its whole JSON record (``base``), as the record
    not yet serialized (``data``: a message written here), or as an append record
    (``append``) continuing the entry ``prior`` (read from a journal); :attr:`line` is the
    whole record in every case (see :mod:`jupyter_crush.store.appends`)."""

    base: bytes | None
    usage: _UsageTuple
    cost: float
    writer: str  # token of the store instance whose record this is
    # bytes it adds to a compacted journal: its last whole record on disk (incl. newline)
    # and what the append records after it add (appends.growth); 0 if never written
    disk_len: int = 0
    # Values derived from this state by Queries.derived, by name; a new state is a new entry.
    derived: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] | None = None
    prior: _Entry | None = None
    append: dict[str, Any] | None = None
    depth: int = 0  # append records between this state and a whole record
    known: dict[Any, int] | None = None  # appends.lengths of the state, once needed
    # What is still to be written of this state: None the whole record, else the operations
    # of an append record continuing the state on disk ([]: nothing).
    unwritten: list[list[Any]] | None = None
    streamed: bool = False  # a streamed (coalesced, unforced) state: more appends will follow

    @property
    def line(self) -> bytes:
        """The state's whole JSON record (serialized or folded once, when first needed)."""
        if self.base is None:
            if self.data is not None:
                self.base = _dumps(self.data)
            else:
                chain = []
                entry: _Entry = self
                while entry.base is None and entry.data is None:
                    assert entry.prior is not None and entry.append is not None
                    chain.append(entry.append)
                    entry = entry.prior
                self.base = _dumps(appends.fold(entry.record(), chain[::-1]))
                self.prior = self.append = None
                self.depth = 0
        return self.base

    def record(self) -> dict[str, Any]:
        """The state's whole record as a dict (the caller's own unless written here)."""
        return self.data if self.data is not None else json.loads(self.line)

    def lengths(self) -> dict[Any, int]:
        if self.known is None:
            self.known = appends.lengths(self.record())
        return self.known

    def pending_record(self) -> bytes:
        """The journal line that brings the disk to this state, with its newline."""
        if self.unwritten is None:
            return self.line + b"\n"
        return _dumps(appends.append_record(self.record(), self.unwritten)) + b"\n"

    def wrote(self, size: int) -> int:
        """Note that :meth:`pending_record`, ``size`` bytes, is on disk; return by how much
        the journal's live size grew."""
        if self.unwritten is None:
            grown, self.disk_len = size - self.disk_len, size
            if not self.streamed:
                # Kept as its line alone, as read states are: a message written whole other
                # than by streaming has mostly stopped growing (a finish, a tool call's end);
                # if not, its next streamed write is whole too, and appends follow that.
                self.data = None
        else:
            grown = appends.growth(self.unwritten)
            self.disk_len += grown
        self.unwritten = []
        return grown


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


def _disk_len(entry: _Entry | None) -> int:
    """Bytes of the record on disk behind ``entry``, a message's entry so far (0 if none): a
    new in-memory state replaces the entry, not what the journal holds."""
    return entry.disk_len if entry is not None else 0


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


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """A store's directories and settings, fixed when it opens; read by each of its parts."""

    path: Path
    token: str  # names the store instance in the records it writes
    fsync: bool
    flush_interval: float
    clock: Callable[[], float]  # injectable so tests can drive coalescing deterministically

    @property
    def messages_dir(self) -> Path:
        return self.path / "messages"

    @property
    def writers_dir(self) -> Path:
        return self.path / "writers"

    @functools.cached_property
    def images_dir(self) -> Path:
        # Cached: every streamed update compares its images' directory with it.
        return self.path / IMAGES_DIR

    def located(self, message: Message) -> Message:
        """``message`` with its images pointing at this store's image files."""
        for image in message.images:
            image.directory = self.images_dir
        return message


class Lifecycle:
    """Whether a store is open, closing or closed, in which process it was opened, and the
    lock its state changes under.

    Shared by the store and its parts. ``lock`` guards the in-memory state of the store and
    of every part (sessions and their entries, pending and refused writes, the timer, running
    compactions, the TinyDB handle) and this instance's file access: the agent writes from
    the event loop's thread while a shutdown hook or another thread may flush. Take it as
    ``with lifecycle.lock:`` each time, never keep it: :meth:`renew_lock` replaces it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.closed = False  # changed under lock
        self.closing = False  # set by close() under lock: compactions may no longer start
        self.pid = os.getpid()  # the process that opened the store (see forked)

    def renew_lock(self) -> None:
        """Give the store a fresh lock in a forked child: a fork copies a lock held by
        another thread (a compaction, a flush) as held forever; a fresh one lets the
        child's inherited store at least refuse work and close."""
        self.lock = threading.RLock()

    def forked(self) -> bool:
        # A fork shares the parent's flocks (same open file descriptions), so a child
        # writing through the inherited store would not be serialized against its parent.
        return os.getpid() != self.pid

    def check_open(self) -> None:
        if self.closed:
            raise StoreError(f"the transcript store {self.path} is closed; open a new one")
        if self.forked():
            raise StoreError(
                f"this TranscriptStore for {self.path} was opened in process {self.pid} and "
                "inherited by a fork; open a new TranscriptStore in this process"
            )
