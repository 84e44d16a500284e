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

The methods here belong to :class:`~jupyter_crush.store.transcript.TranscriptStore` (through
:class:`_JournalReplay`) and run under its ``_lock``; they use its fields, whose comments in
``TranscriptStore.__init__`` name what each protects.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from ..core.message import FinishReason, Message, Role, Session, ToolCallPart, ToolResultPart, now
from .state import (
    _SESSION_ID,
    _WRITER_KEY,
    _WRITER_TOKEN,
    UnknownSessionError,
    _dumps,
    _Entry,
    _recompute_totals,
    _session_totals,
    _SessionState,
    _set_entry,
    _usage_tuple,
)
from .storage import Journal, WriterLease

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


class _JournalReplay:
    """Loading, catching up with and settling sessions (part of TranscriptStore)."""

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
