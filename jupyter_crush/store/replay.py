"""Journal replay: reading a session's journal and the session index into memory.

A session's messages are loaded the first time they are needed in a process; after that,
every reader and writer first applies whatever other processes appended (``_catch_up``),
or rebuilds from the whole file when it was replaced (a compaction elsewhere). A record that
cannot be a message of its session is corruption, named with its file and line; a file that
lost its end warns once (:class:`TruncatedTranscriptWarning`). A first load also recomputes
the session's totals from its messages and settles what a dead writer left open.

Settling. A kernel killed mid-reply leaves an assistant message without a finish part, and
maybe tool calls without results; providers reject such a history. When a session is
loaded for the first time in a process (and on ``settle_dangling``), such messages get an
``error`` finish part and the calls an error tool result (in one appended tool message), and
that is persisted. Only messages of dead writers are settled: each record names the store
instance that wrote it, and an instance holds a lease (a flock on ``writers/<token>.lock``)
while it lives, which the kernel drops when the process dies, even on ``kill -9``. So a
reply still streaming in another live kernel (or in this store) is never cut short; it is
settled by whoever loads the session after its kernel died.

:class:`Replayer` is the part of :class:`~jupyter_crush.store.transcript.TranscriptStore`
that holds the sessions read so far and the session index.
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Protocol

from ..core.message import FinishReason, Message, Role, Session, ToolResultPart, now
from . import appends
from .appends import APPEND_KEY
from .state import (
    _SESSION_ID,
    _WRITER_KEY,
    _WRITER_TOKEN,
    StoreConfig,
    UnknownSessionError,
    _disk_len,
    _dumps,
    _Entry,
    _recompute_totals,
    _session_totals,
    _SessionState,
    _set_entry,
    _usage_tuple,
)
from .storage import Journal, ProcessLock, WriterLease


class Writes(Protocol):
    """What replaying needs of the store's writer (:class:`jupyter_crush.store.pending.Writer`,
    which builds on this module): its pending states, and writing what replay changed."""

    pending: dict[str, dict[str, None]]

    def materialize(self, st: _SessionState) -> None: ...

    def write(self, st: _SessionState, mids: Iterable[str]) -> None: ...

    def write_session_record(self, st: _SessionState) -> None: ...


#: Append records a message's entry may chain before they are folded into a whole record.
MAX_APPEND_CHAIN = 256

KERNEL_STOPPED_MESSAGE = "The kernel stopped before this reply finished"
TOOL_INTERRUPTED_MESSAGE = "Tool call interrupted: the kernel stopped before it finished"


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


#: Name of what settling needs of a message, kept with its state (_Entry.derived).
_SETTLE_FACTS = "settle"


def _settle_facts(
    record: dict[str, Any],
) -> tuple[bool, bool, list[tuple[str, str]], list[str]]:
    """What settling needs of a message record: whether it is an assistant's, whether it
    has a finish, its tool calls' (id, name) and the call ids of its tool results."""
    parts = record["parts"]
    return (
        record["role"] == Role.ASSISTANT,
        any(p.get("type") == "finish" for p in parts),
        [(p.get("id", ""), p.get("name", "")) for p in parts if p.get("type") == "tool_call"],
        [p.get("tool_call_id", "") for p in parts if p.get("type") == "tool_result"],
    )


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


class Replayer:
    """The sessions known to this process, their loaded messages and the session index;
    loading, catching up with and settling sessions.

    Its methods run under the store's ``_lock`` (the caller holds it; this object never
    takes it), which guards every field here. Those that read files take the store's
    process lock ``plock`` (shared with the store and its other parts) where the reading
    must not interleave with another process's appends.
    """

    def __init__(
        self, config: StoreConfig, plock: ProcessLock, index: Journal, max_open_journals: int
    ) -> None:
        self._config = config
        self._plock = plock
        self.index = index  # the session index, sessions.jsonl
        self._max_open_journals = max_open_journals
        self.sessions: dict[str, _SessionState] = {}  # creation order
        self.index_live = 0  # sum of the session records' sizes: a compacted index's size
        # session ids whose journal holds a descriptor, least recently used first
        self._open_journals: OrderedDict[str, None] = OrderedDict()
        # Writes what loading recomputes or settles; set by the store right after both exist.
        self.writer: Writes

    def state(self, session_id: str) -> _SessionState:
        st = self.sessions.get(session_id)
        if st is None:
            self.catch_up_index()
            st = self.sessions.get(session_id)
            if st is None:
                raise UnknownSessionError(session_id, self._config.path)
        return st

    def loaded(self, session_id: str, *, settle: bool = True) -> _SessionState:
        """The session with its messages loaded and caught up with other processes."""
        st = self.state(session_id)
        if st.entries is not None:
            self.catch_up(st)
            return st
        with self._plock:
            indexed = _session_totals(st.session)
            st.entries = {}
            try:
                self.catch_up(st)  # a first read: recomputes the totals from the messages
            except BaseException:
                st.entries = None
                raise
            _warn_if_cut_short(st.journal, st.session.message_count, indexed[2])
            if _session_totals(st.session) != indexed:
                # A writer stopped between a message write and its session record.
                self.writer.write_session_record(st)
            if settle:
                self.settle(st)
        return st

    def catch_up(self, st: _SessionState) -> None:
        """Apply records other processes appended to the session's journal."""
        assert st.entries is not None
        self.writer.materialize(st)  # every reader and writer passes here
        reset, records = st.journal.read_new()
        self._note_journal(st)
        if not reset:
            for record, line in records:
                self._apply_record(st, record, line)
            return
        # Rebuild from the file's whole content in its order, then lay our pending (newer,
        # not yet written) states over it.
        pending = self.writer.pending.get(st.session.id, {})
        kept = {mid: st.entries[mid] for mid in pending if mid in st.entries}
        st.entries = {}
        st.live_bytes = 0
        for record, line in records:
            self._apply_record(st, record, line)
        for mid, entry in kept.items():
            entry.disk_len = _disk_len(st.entries.get(mid))
            st.entries[mid] = entry
        _recompute_totals(st)

    def _apply_record(self, st: _SessionState, record: dict[str, Any], line: bytes) -> None:
        assert st.entries is not None
        if APPEND_KEY in record:
            self._apply_append(st, record, line)
            return
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
            if mid in self.writer.pending.get(st.session.id, ()):
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
                unwritten=[],
            )
        except (TypeError, ValueError, AttributeError):
            raise st.journal.corrupt(
                line, "a message record with malformed usage or cost"
            ) from None
        entry.derived[_SETTLE_FACTS] = _settle_facts(record)  # decoded now: spares a decode
        _set_entry(st, mid, entry)

    def _apply_append(self, st: _SessionState, record: dict[str, Any], line: bytes) -> None:
        """Apply an append record (:mod:`jupyter_crush.store.appends`) to its message."""
        assert st.entries is not None
        mid = record.get("id")
        old = st.entries.get(mid) if isinstance(mid, str) else None
        if record.get("session_id") != st.session.id or old is None:
            raise st.journal.corrupt(line, "an append record to a message not before it")
        if mid in self.writer.pending.get(st.session.id, ()):
            return  # our in-memory state is newer than anything on disk (and counted so)
        try:
            known = appends.check(record, old.lengths())
        except appends.NotAnAppend as exc:
            raise st.journal.corrupt(line, str(exc)) from None
        grown = appends.growth(record[APPEND_KEY])
        st.live_bytes += grown
        entry = _Entry(
            None,
            old.usage,
            old.cost,
            str(record.get(_WRITER_KEY, "")),
            old.disk_len + grown,
            prior=old,
            append=record,
            depth=old.depth + 1,
            known=known,
            unwritten=[],
        )
        if entry.depth >= MAX_APPEND_CHAIN:
            entry.line  # noqa: B018 - folds the chain, so it never grows past the bound
        _set_entry(st, mid, entry)

    def catch_up_index(self) -> None:
        """Apply session records other processes appended to the session index."""
        reset, records = self.index.read_new()
        if reset:
            self.index_live = 0
            for st in self.sessions.values():
                st.index_line = b""
        for record, line in records:
            try:
                session = Session.from_dict(record)
            except (TypeError, ValueError, KeyError, AttributeError):
                raise self.index.corrupt(line, "not a valid session record") from None
            if not isinstance(session.id, str) or not _SESSION_ID.fullmatch(session.id):
                # ids name files: never follow one out of the store
                raise self.index.corrupt(line, f"a session with an invalid id {session.id!r}")
            st = self.sessions.get(session.id)
            if st is None:
                st = self.add_session(session)
            elif st.entries is None:
                st.session = session
            else:
                # Totals of a loaded session come from its messages; take only what the
                # messages cannot tell.
                st.session.title = session.title
                st.session.updated_at = max(st.session.updated_at, session.updated_at)
            self.note_index_line(st, line)

    def add_session(self, session: Session) -> _SessionState:
        """Start knowing ``session``, new to this process, with its journal (by its id)."""
        st = _SessionState(session, Journal(self._config.messages_dir / f"{session.id}.jsonl"))
        self.sessions[session.id] = st
        return st

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
        if len(self._open_journals) <= self._max_open_journals:
            return
        for victim in list(self._open_journals):
            if victim != sid and victim not in self.writer.pending:
                self.sessions[victim].journal.close()
                del self._open_journals[victim]
                return

    def note_index_line(self, st: _SessionState, line: bytes) -> None:
        """Count ``line``, the session's new record in the index, toward its live size."""
        if st.index_line:
            self.index_live -= len(st.index_line) + 1
        st.index_line = line
        self.index_live += len(line) + 1

    # -- internals: settling -------------------------------------------------

    def settle(self, st: _SessionState) -> list[Message]:
        with self._plock:  # nobody appends between our reading and our writing
            self.catch_up(st)
            return self._settle_locked(st)

    def _settle_locked(self, st: _SessionState) -> list[Message]:
        assert st.entries is not None
        alive: dict[str, bool] = {}

        def owned(writer: str) -> bool:
            if writer not in alive:
                alive[writer] = writer == self._config.token or (
                    bool(_WRITER_TOKEN.fullmatch(writer))
                    and WriterLease.is_alive(self._config.writers_dir, writer)
                )
            return alive[writer]

        answered: set[str] = set()
        dangling: list[tuple[str, str]] = []  # (id, name) of calls without a result
        changed: list[Message] = []
        for entry in reversed(st.entries.values()):
            facts = entry.derived.get(_SETTLE_FACTS)
            if facts is None:
                facts = entry.derived[_SETTLE_FACTS] = _settle_facts(entry.record())
            assistant, finished, calls, results = facts
            answered.update(results)
            if not assistant or owned(entry.writer):
                continue
            dangling[:0] = [call for call in calls if call[0] not in answered]
            if not finished:
                message = Message.from_dict(json.loads(entry.line))
                message.add_finish(FinishReason.ERROR, KERNEL_STOPPED_MESSAGE)
                changed.append(message)
        changed.reverse()
        if dangling:
            changed.append(
                Message(
                    session_id=st.session.id,
                    role=Role.TOOL,
                    parts=[
                        ToolResultPart(call_id, name, TOOL_INTERRUPTED_MESSAGE, is_error=True)
                        for call_id, name in dangling
                    ],
                )
            )
        if changed:
            for message in changed:
                data = message.to_dict()
                data[_WRITER_KEY] = self._config.token
                _set_entry(
                    st,
                    message.id,
                    _Entry(
                        _dumps(data),
                        _usage_tuple(message.usage),
                        float(message.cost or 0.0),
                        self._config.token,
                        _disk_len(st.entries.get(message.id)),
                    ),
                )
            st.session.updated_at = now()
            self.writer.write(st, [m.id for m in changed])
        return changed
