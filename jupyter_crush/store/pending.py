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

:class:`Writer` is the part of :class:`~jupyter_crush.store.transcript.TranscriptStore`
that writes: it holds what waits to be written, what was refused and the store's one timer.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..core.message import ImagePart, Message, Session, Usage, now
from . import fallback as store_fallback
from .appends import appended
from .fallback import Unwritten
from .replay import Replayer
from .state import (
    _WRITER_KEY,
    INDEX_FILE,
    Lifecycle,
    StoreConfig,
    _disk_len,
    _dumps,
    _Entry,
    _SessionState,
    _set_entry,
    _usage_tuple,
    log,
)
from .storage import ProcessLock, StoreError, WriterLease, write_atomic

#: Seconds between retries of writes the file system refused (disk full, read-only).
RETRY_INTERVAL = 1.0
#: Operations a message's append record may gather while writes are refused; beyond them
#: it is written whole.
MAX_UNWRITTEN_OPS = 1024
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


class Writer:
    """Writing messages and session records, coalescing streamed updates, and keeping what
    the file system refuses pending until a retry succeeds.

    The store's lock (``lifecycle.lock``, shared with the store and its other parts) guards
    every field here: the entry points that may run on their own (``store_message``,
    ``flush``, ``pending_writes``, the timer) take it; every other method runs with the
    caller holding it. Appends happen under ``plock``, the store's process lock, also shared.
    """

    def __init__(
        self,
        config: StoreConfig,
        lifecycle: Lifecycle,
        plock: ProcessLock,
        replayer: Replayer,
        maybe_compact: Callable[[_SessionState], None],
        maybe_compact_index: Callable[[], None],
    ) -> None:
        self._config = config
        self._lifecycle = lifecycle
        self._plock = plock
        self._replayer = replayer
        # Compaction belongs to the store; a write starts it once superseded bytes dominate.
        self._maybe_compact = maybe_compact
        self._maybe_compact_index = maybe_compact_index
        # session id -> ids of messages whose latest state is in memory only (coalesced or
        # refused), in the order they became pending, which is the order they are appended.
        # Read, never changed, by the other parts: replay keeps these entries over what it
        # re-reads and keeps their journals open; a journal with any is not compacted.
        self.pending: dict[str, dict[str, None]] = {}
        # session id -> message id -> the caller's live Message of a coalesced update, not yet
        # serialized. Folded into the session's entries (materialize) before anything reads
        # or writes them, so a streamed token costs no JSON encoding.
        self._live: dict[str, dict[str, Message]] = {}
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
        # What the file system refused, by session id (its journal) or INDEX_FILE: the file
        # and the reason. The refused records stay in pending / _stale_index until a retry
        # succeeds; nothing of one session waits for another's.
        self._refusals: dict[str, Refusal] = {}
        self._stale_index: dict[str, None] = {}  # sessions whose latest record is not indexed
        # Fallback journals folded in at open whose records still wait in pending: removed
        # once those are written, or once a close saves them again (store_fallback).
        self._folded: list[Path] = []
        # Whether streamed writes may be append records: the store's format allows them
        # (set by the store once it has opened; see jupyter_crush.store.appends).
        self.appends = False

    def store_message(self, message: Message, *, force: bool) -> None:
        """Record the message's latest state: coalesced unless ``force`` (or new, or with
        images not yet on disk), else written now."""
        if not isinstance(message, Message):
            raise TypeError(f"expected a Message, got {type(message).__name__}")
        sid, mid = message.session_id, message.id
        images_dir = self._config.images_dir
        unsaved = [image for image in message.images if image.directory != images_dir]
        # A message with images not yet on disk is written now, with them, never coalesced:
        # its record must not reach the journal before the files it names.
        force = force or bool(unsaved)
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            last = self._last_write.get((sid, mid))
            refused = sid in self._refusals  # the retry timer writes it, not every token
            if (
                not force
                and last is not None
                and (refused or self._config.clock() - last < self._config.flush_interval)
            ):
                # Coalesced (the streaming hot path): keep a reference to the live message;
                # it is serialized when written or read.
                self._live.setdefault(sid, {})[mid] = message
                self.pending.setdefault(sid, {})[mid] = None
                self._arm_timer(RETRY_INTERVAL if refused else self._config.flush_interval)
                return
        entry = self._entry_for(message)  # the caller keeps mutating its object; snapshot it
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            self._live.get(sid, {}).pop(mid, None)  # superseded by this newer snapshot
            st = self._replayer.loaded(sid)
            assert st.entries is not None
            with self._plock:
                # Read other processes' records first, so a new message takes the same
                # place in memory as on disk: after them.
                self._replayer.catch_up(st)
                self._save_images(unsaved)
                old = st.entries.get(mid)
                entry.disk_len = _disk_len(old)
                if not force:  # a streamed write, due: only what it appended, if that is all
                    self._continue(old, entry)
                _set_entry(st, mid, entry)
                st.session.updated_at = now()
                self.write(st, [mid])

    def _save_images(self, images: list[ImagePart]) -> None:
        """Write the bytes of images new to the store; each file once (named by content).

        Under the process lock, like every atomic write (see remove_stale_temporaries).
        """
        images_dir = self._config.images_dir
        for image in images:
            path = image.path_in(images_dir)
            if not path.exists():
                if image.data is None:
                    raise StoreError(
                        f"image {image.file} has no bytes to store; make it with "
                        "jupyter_crush.core.images (image_part)"
                    )
                try:
                    write_atomic(path, image.data, fsync=self._config.fsync)
                except OSError as exc:
                    raise StoreError(
                        f"could not write the image file {path} ({exc.strerror}); "
                        "free some space or make the store's directory writable"
                    ) from exc
            image.directory = images_dir

    def _entry_for(self, message: Message) -> _Entry:
        """The message's state, to be written whole; serialized when written or read."""
        data = message.to_dict()  # new dicts and lists: the caller's later changes stay out
        if "metadata" in data:
            data["metadata"] = copy.deepcopy(data["metadata"])  # the message's own dict
        data[_WRITER_KEY] = self._config.token
        usage, cost = _usage_tuple(message.usage), float(message.cost or 0.0)
        return _Entry(None, usage, cost, self._config.token, data=data)

    def _continue(self, old: _Entry | None, entry: _Entry) -> None:
        """Have ``entry`` written as an append record continuing ``old`` when it only
        appends to it (see :mod:`jupyter_crush.store.appends`); whole otherwise."""
        entry.streamed = True
        if not self.appends or old is None or old.data is None or old.unwritten is None:
            return
        assert entry.data is not None
        ops = appended(old.data, entry.data)
        if ops is not None and len(old.unwritten) + len(ops) <= MAX_UNWRITTEN_OPS:
            entry.unwritten = old.unwritten + ops

    def materialize(self, st: _SessionState) -> None:
        """Take the session's coalesced live messages into its entries, each to be written
        as an append record where it only appended (serialized when written or read)."""
        live = self._live.pop(st.session.id, None)
        if not live:
            return
        assert st.entries is not None
        for mid, message in live.items():
            entry = self._entry_for(message)
            old = st.entries.get(mid)
            entry.disk_len = _disk_len(old)
            self._continue(old, entry)
            _set_entry(st, mid, entry)
        st.session.updated_at = now()

    def flush(self) -> None:
        """Write every pending update, and retry what the file system refused before."""
        with self._lifecycle.lock:
            if self._lifecycle.closed or self._lifecycle.forked():
                return
            for sid in list(self.pending):
                if self.pending.get(sid):
                    self.write(self._replayer.sessions[sid], ())
            if self._stale_index and not self.pending:
                self.write_session_record(self._replayer.sessions[next(iter(self._stale_index))])

    def pending_writes(self, session_id: str | None = None) -> list[PendingWrites]:
        """What the file system refused and is kept in memory until a retry succeeds.

        Empty when everything is on disk. With ``session_id``, only what concerns that
        session (its journal, and the session index if its record waits there).
        """
        with self._lifecycle.lock:
            found = []
            for key, refusal in self._refusals.items():
                if key == INDEX_FILE:
                    sids = [s for s in self._stale_index if session_id in (None, s)]
                    if sids:
                        found.append(PendingWrites(refusal.path, len(sids), refusal.reason))
                elif session_id in (None, key) and self.pending.get(key):
                    found.append(
                        PendingWrites(refusal.path, len(self.pending[key]), refusal.reason)
                    )
            return found

    def write(self, st: _SessionState, mids: Iterable[str]) -> None:
        """Append the latest state of ``mids`` to the session journal, then the session record.

        A write the file system refuses (disk full, read-only, permission) raises nothing:
        the messages stay pending in memory, in order, and the retry timer, forced writes
        of the session and :meth:`flush` try again (see :meth:`pending_writes`).
        """
        sid = st.session.id
        pending = self.pending.setdefault(sid, {})
        for mid in mids:
            pending[mid] = None  # so a re-read during catch-up keeps our newer state
        with self._plock:
            self._replayer.catch_up(st)
            assert st.entries is not None
            # Everything pending goes in one append, in the order it became pending: a
            # message refused earlier must not land on disk after the ones that followed
            # it (a message enters pending first when it is new, so in message order).
            mids = list(pending)
            entries = [st.entries[mid] for mid in mids]
            records = [e.pending_record() for e in entries]
            try:
                st.journal.append(b"".join(records), fsync=self._config.fsync)
            except OSError as exc:
                self._refused(sid, st.journal.path, exc)
                return
            self._refusals.pop(sid, None)
            written = self._config.clock()
            for mid, entry, record in zip(mids, entries, records, strict=True):
                st.live_bytes += entry.wrote(len(record))
                self._last_write[(sid, mid)] = written
            del self.pending[sid]
            self._maybe_compact(st)
            self.write_session_record(st)

    def _refused(self, key: str, path: Path, exc: OSError) -> None:
        """Note a write the file system refused; the store's timer retries it."""
        if key not in self._refusals:
            # Said on the run's status line (pending_writes); a log line at warning level
            # would land in whichever cell runs next.
            log.info("could not write %s (%s); kept in memory, retrying", path, exc.strerror)
        self._refusals[key] = Refusal(path, exc.strerror or str(exc))
        self._retry_at = self._config.clock() + RETRY_INTERVAL
        self._arm_timer(RETRY_INTERVAL)

    def write_session_record(self, st: _SessionState) -> None:
        self._replayer.catch_up_index()
        # Session records the index refused before go along; the latest record per id wins.
        self._stale_index[st.session.id] = None
        states = [self._replayer.sessions[sid] for sid in self._stale_index]
        lines = [_dumps(s.session.to_dict()) for s in states]
        try:
            self._replayer.index.append(
                b"".join(line + b"\n" for line in lines), fsync=self._config.fsync
            )
        except OSError as exc:
            self._refused(INDEX_FILE, self._replayer.index.path, exc)
            return
        self._refusals.pop(INDEX_FILE, None)
        self._stale_index.clear()
        if self._folded and not self.pending:
            store_fallback.drop(self._folded)  # all they held is in the store now
            self._folded = []
        for s, line in zip(states, lines, strict=True):
            self._replayer.note_index_line(s, line)
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
            log.warning(
                "writing pending transcript updates to %s failed: %s", self._config.path, exc
            )

    def _flush_due_locked(self) -> None:
        """Write what is due: coalesced updates past their ``flush_interval``, and once per
        ``RETRY_INTERVAL`` whatever the file system refused; then arm the timer for what
        remains. A session whose journal refuses waits for the retry, so a disk that stays
        full costs one attempt per ``RETRY_INTERVAL`` whatever is streamed meanwhile."""
        with self._lifecycle.lock:
            self._timer = None  # this run; from here on, _arm_timer may schedule the next one
            if self._lifecycle.closed or self._lifecycle.forked():
                return
            if self._refusals and self._config.clock() + _TIMER_SLACK >= self._retry_at:
                self.flush()  # refused again: _refused arms the next retry
            clock = self._config.clock()
            wait = self._retry_at - clock if self._refusals else None
            for sid in list(self.pending):
                if sid in self._refusals:
                    continue  # waits for the retry
                due = False
                for mid in self.pending.get(sid, ()):
                    left = (
                        self._last_write.get((sid, mid), clock)
                        + self._config.flush_interval
                        - clock
                    )
                    if left <= _TIMER_SLACK:
                        due = True
                    else:
                        wait = left if wait is None else min(wait, left)
                if due:
                    self.write(self._replayer.sessions[sid], ())
            if wait is not None:
                self._arm_timer(max(wait, 0.0))

    # -- records still refused when the store closes ---------------------------------------

    def save_unwritten(self) -> None:
        """At close: write what is still pending to a fallback journal outside the store
        (:mod:`jupyter_crush.store.fallback`), for the next store opened here to fold in.
        Never raises: the store is closing whatever happens here."""
        if self._lifecycle.forked():
            return  # the parent's records, which the parent still holds
        try:
            unwritten = self._unwritten()
            if unwritten is None:
                store_fallback.drop(self._folded)
                return
            saved = store_fallback.save(self._config.path, self._config.token, unwritten)
        except Exception as exc:
            for lost in self.pending_writes():
                log.error("closing the transcript store lost what it could not write: %s", lost)
            log.error("no fallback journal could take them either: %s", exc)
            return
        store_fallback.drop(self._folded)  # superseded: the new journal holds what they held
        log.warning(
            "the transcript store %s could not write %d records before closing (%s); they "
            "are kept in %s and folded back in when the store next opens",
            self._config.path,
            len(unwritten.messages) + len(unwritten.sessions),
            unwritten.reason,
            saved,
        )

    def _unwritten(self) -> Unwritten | None:
        sids = list(self._stale_index)
        messages = []
        for sid, mids in self.pending.items():
            if not mids:
                continue
            st = self._replayer.sessions[sid]
            self.materialize(st)
            assert st.entries is not None
            messages += [json.loads(st.entries[mid].line) for mid in mids]
            if sid not in self._stale_index:
                sids.append(sid)
        if not sids:
            return None
        reasons = dict.fromkeys(refusal.reason for refusal in self._refusals.values())
        return Unwritten(
            "; ".join(reasons) or "not written before the store closed",
            [self._replayer.sessions[sid].session.to_dict() for sid in sids],
            messages,
        )

    def fold_unwritten(self) -> None:
        """At open, under the process lock: fold in what stores on this path could not
        write before they closed, and say so once, in one line.

        Per session, in the order the closing store kept them: a message record that
        already landed (the disk holds exactly it: the refused write had gone through after
        all, or a fold was cut short) is skipped, any other is written as the message's
        latest state. The fallback journals are removed once everything they held is in the
        store; until then the records wait in memory like any refused write, and a close
        saves them again (see save_unwritten).
        """
        alive = lambda writer: WriterLease.is_alive(self._config.writers_dir, writer)  # noqa: E731
        try:
            saved = store_fallback.load(self._config.path, alive)
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
        # With a session unreadable, the fallback journals stay for an opening that can
        # read every session.
        if not unreadable:
            if self.pending or self._stale_index:
                self._folded = saved.files  # removed once what they hold is written
            else:
                store_fallback.drop(saved.files)
        where = ", ".join(str(path) for path in saved.files)
        if folded:
            if self.pending or self._stale_index:
                outcome = f"they wait in memory until {self._config.path} takes writes again"
            else:
                outcome = "they are folded back into it"
            noun = "record" if folded == 1 else "records"
            store_fallback.tell(
                f"{folded} {noun} the transcript store {self._config.path} could not write "
                f"before it closed ({saved.reason}) were kept in {where}; {outcome}"
            )
        for problem in unreadable:
            store_fallback.tell(
                f"records kept in {where} stay there until this can be read: {problem}"
            )

    def _fold_session(self, record: dict[str, Any], messages: dict[str, dict[str, Any]]) -> int:
        """Fold one session's saved records in; return how many it took."""
        saved = Session.from_dict(record)
        sid = saved.id
        st = self._replayer.sessions.get(sid)
        newer = st is None or saved.updated_at > st.session.updated_at
        if st is None:  # the closing store's index refused it: only the fallback knows it
            # Its totals are counted as its messages are folded in.
            saved.usage, saved.cost, saved.message_count = Usage(), 0.0, 0
            st = self._replayer.add_session(saved)
        if messages:
            self._replayer.loaded(sid, settle=False)
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
                _disk_len(old),
            )
            _set_entry(st, mid, entry)
            mids.append(mid)
        if mids:
            self.write(st, mids)  # the session's record goes along
        elif newer:
            self.write_session_record(st)
        if messages:
            self._replayer.settle(st)  # what its dead writer left open, now that all of it is here
        return len(mids) + newer
