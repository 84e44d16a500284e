"""Writing records, and keeping what the file system refuses pending until it takes it.

Refused writes. When the file system refuses an append (disk full, read-only, permission
removed), nothing raises and nothing is dropped: the records stay pending in memory, in
order, and are retried by the store's timer every ``RETRY_INTERVAL``, on every forced write
of their session (a new message, a finished one) and on ``flush()``; streamed updates of the
session meanwhile only join what is pending. :meth:`TranscriptStore.pending_writes` says
what waits, where and why. One session's refused journal never fails another session's
writes. A disk that stays full thus costs one attempt a second and one pending timer,
however long it lasts; what is still pending when the store closes goes to a fallback
journal outside it and is folded back in at the next opening
(:mod:`jupyter_crush.store.fallback`).

The same pending map carries coalesced streaming updates: the same timer writes them once
their ``flush_interval`` has passed.

The methods here belong to :class:`~jupyter_crush.store.transcript.TranscriptStore` (through
:class:`_PendingWrites`) and run under its ``_lock``; they use its fields, whose comments in
``TranscriptStore.__init__`` name what each protects.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..core.message import Session, Usage
from . import fallback as store_fallback
from .fallback import Unwritten
from .state import (
    _WRITER_KEY,
    INDEX_FILE,
    _dumps,
    _Entry,
    _SessionState,
    _set_entry,
    _usage_tuple,
    log,
)
from .storage import Journal, StoreError, WriterLease

#: Seconds between retries of writes the file system refused (disk full, read-only).
RETRY_INTERVAL = 1.0
#: Seconds within which two times count as the same for the store's timer: the loop runs a
#: timer up to its clock's resolution early, the clock moves between two readings, and sums
#: of float times differ in their last bits. Without it, a run a sliver early would arm
#: another timer for the sliver, and an arming a sliver later would replace the timer.
_TIMER_SLACK = 1e-3


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


class _PendingWrites:
    """Appending records, and retrying what was refused (part of TranscriptStore)."""

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

    def _write(self, st: _SessionState, mids: Iterable[str]) -> None:
        """Append the latest state of ``mids`` to the session journal, then the session record.

        A write the file system refuses (disk full, read-only, permission) raises nothing:
        the messages stay pending in memory, in order, and the retry timer, forced writes
        of the session and :meth:`flush` try again (see :meth:`pending_writes`).
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
        """Note a write the file system refused; the store's timer retries it."""
        if key not in self._refusals:
            # Said on the run's status line (pending_writes); a log line at warning level
            # would land in whichever cell runs next.
            log.info("could not write %s (%s); kept in memory, retrying", path, exc.strerror)
        self._refusals[key] = Refusal(path, exc.strerror or str(exc))
        self._retry_at = self._clock() + RETRY_INTERVAL
        self._arm_timer(RETRY_INTERVAL)

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
        if self._folded and not self._pending:
            store_fallback.drop(self._folded)  # all they held is in the store now
            self._folded = []
        for s, line in zip(states, lines, strict=True):
            if s.index_line:
                self._index_live -= len(s.index_line) + 1
            s.index_line = line
            self._index_live += len(line) + 1
        self._maybe_compact_index()

    def _arm_timer(self, delay: float) -> None:
        """Make sure the store's timer fires within ``delay`` seconds (see ``_timer``).

        Only possible from a thread running an event loop (the agent's); elsewhere pending
        updates wait for the next write, flush(), close() or interpreter exit.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        timer = self._timer
        if timer is not None and not timer.cancelled():
            if self._timer_loop is loop and timer.when() <= loop.time() + delay + _TIMER_SLACK:
                return  # fires soon enough: its run arms whatever is due after it
            timer.cancel()  # replaced, never left behind (the store's one-timer rule)
        self._timer_loop = loop
        self._timer = loop.call_later(delay, self._flush_due)

    def _flush_due(self) -> None:
        # A loop callback: an exception here would be printed into whichever cell runs.
        try:
            self._flush_due_locked()
        except Exception as exc:  # a journal damaged meanwhile: said when the session is used
            log.warning("writing pending transcript updates to %s failed: %s", self.path, exc)

    def _flush_due_locked(self) -> None:
        """Write what is due: coalesced updates past their ``flush_interval``, and once per
        ``RETRY_INTERVAL`` whatever the file system refused; then arm the timer for what
        remains. A session whose journal refuses waits for the retry, so a disk that stays
        full costs one attempt per ``RETRY_INTERVAL`` whatever is streamed meanwhile."""
        with self._lock:
            self._timer = None  # this run; from here on, _arm_timer may schedule the next one
            if self._closed or self._forked():
                return
            if self._refusals and self._clock() + _TIMER_SLACK >= self._retry_at:
                self.flush()  # refused again: _refused arms the next retry
            clock = self._clock()
            wait = self._retry_at - clock if self._refusals else None
            for sid in list(self._pending):
                if sid in self._refusals:
                    continue  # waits for the retry
                due = False
                for mid in self._pending.get(sid, ()):
                    left = self._last_write.get((sid, mid), clock) + self.flush_interval - clock
                    if left <= _TIMER_SLACK:
                        due = True
                    else:
                        wait = left if wait is None else min(wait, left)
                if due:
                    self._write(self._sessions[sid], ())
            if wait is not None:
                self._arm_timer(max(wait, 0.0))

    # -- records still refused when the store closes ---------------------------------------

    def _save_unwritten(self) -> None:
        """At close: write what is still pending to a fallback journal outside the store
        (:mod:`jupyter_crush.store.fallback`), for the next store opened here to fold in.
        Never raises: the store is closing whatever happens here."""
        if self._forked():
            return  # the parent's records, which the parent still holds
        try:
            unwritten = self._unwritten()
            if unwritten is None:
                store_fallback.drop(self._folded)
                return
            saved = store_fallback.save(self.path, self._token, unwritten)
        except Exception as exc:
            for lost in self.pending_writes():
                log.error("closing the transcript store lost what it could not write: %s", lost)
            log.error("no fallback journal could take them either: %s", exc)
            return
        store_fallback.drop(self._folded)  # superseded: the new journal holds what they held
        log.warning(
            "the transcript store %s could not write %d records before closing (%s); they "
            "are kept in %s and folded back in when the store next opens",
            self.path,
            len(unwritten.messages) + len(unwritten.sessions),
            unwritten.reason,
            saved,
        )

    def _unwritten(self) -> Unwritten | None:
        sids = list(self._stale_index)
        messages = []
        for sid, mids in self._pending.items():
            if not mids:
                continue
            st = self._sessions[sid]
            self._materialize(st)
            assert st.entries is not None
            messages += [json.loads(st.entries[mid].line) for mid in mids]
            if sid not in self._stale_index:
                sids.append(sid)
        if not sids:
            return None
        reasons = dict.fromkeys(refusal.reason for refusal in self._refusals.values())
        return Unwritten(
            "; ".join(reasons) or "not written before the store closed",
            [self._sessions[sid].session.to_dict() for sid in sids],
            messages,
        )

    def _fold_unwritten(self) -> None:
        """At open, under the process lock: fold in what stores on this path could not
        write before they closed, and say so once, in one line.

        Per session, in the order the closing store kept them: a message record that
        already landed (the disk holds exactly it: the refused write had gone through after
        all, or a fold was cut short) is skipped, any other is written as the message's
        latest state. The fallback journals are removed once everything they held is in the
        store; until then the records wait in memory like any refused write, and a close
        saves them again (see _save_unwritten).
        """
        alive = lambda writer: WriterLease.is_alive(self._writers_dir, writer)  # noqa: E731
        try:
            saved = store_fallback.load(self.path, alive)
        except store_fallback.FallbackError as exc:
            store_fallback.tell(str(exc))
            return
        if saved is None:
            return
        folded = 0
        unreadable = []
        for sid, record in saved.sessions.items():
            try:
                folded += self._fold_session(record, saved.messages.get(sid, {}))
            except StoreError as exc:  # a damaged journal: its records stay in the fallback
                unreadable.append(str(exc))
        if unreadable:
            pass  # the fallback journals stay, for an opening that can read every session
        elif self._pending or self._stale_index:
            self._folded = saved.files  # removed once what they hold is written
        else:
            store_fallback.drop(saved.files)
        where = ", ".join(str(path) for path in saved.files)
        if folded:
            if self._pending or self._stale_index:
                outcome = f"they wait in memory until {self.path} takes writes again"
            else:
                outcome = "they are folded back into it"
            noun = "record" if folded == 1 else "records"
            store_fallback.tell(
                f"{folded} {noun} the transcript store {self.path} could not write before it "
                f"closed ({saved.reason}) were kept in {where}; {outcome}"
            )
        for problem in unreadable:
            store_fallback.tell(
                f"records kept in {where} stay there until this can be read: {problem}"
            )

    def _fold_session(self, record: dict[str, Any], messages: dict[str, dict[str, Any]]) -> int:
        """Fold one session's saved records in; return how many it took."""
        saved = Session.from_dict(record)
        sid = saved.id
        st = self._sessions.get(sid)
        newer = st is None or saved.updated_at > st.session.updated_at
        if st is None:  # the closing store's index refused it: only the fallback knows it
            # Its totals are counted as its messages are folded in.
            saved.usage, saved.cost, saved.message_count = Usage(), 0.0, 0
            st = _SessionState(saved, Journal(self._messages_dir / f"{sid}.jsonl"))
            self._sessions[sid] = st
        if messages:
            self._loaded(sid, settle=False)
        if newer:
            st.session.title = saved.title
            st.session.updated_at = max(st.session.updated_at, saved.updated_at)
        mids = []
        for mid, message in messages.items():
            assert st.entries is not None
            old = st.entries.get(mid)
            if old is not None and json.loads(old.line) == message:
                continue  # it had landed
            entry = _Entry(
                _dumps(message),
                _usage_tuple(message.get("usage") or {}),
                float(message.get("cost") or 0.0),
                str(message.get(_WRITER_KEY, "")),
                old.disk_len if old is not None else 0,
            )
            _set_entry(st, mid, entry)
            mids.append(mid)
        if mids:
            self._write(st, mids)  # the session's record goes along
        elif newer:
            self._write_session_record(st)
        if messages:
            self._settle(st)  # what its dead writer left open, now that all of it is here
        return len(mids) + newer
