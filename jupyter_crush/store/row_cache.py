"""History rows kept on disk per session, so a new process need not decode every journal.

``crush.history()`` shows a row per message (:mod:`jupyter_crush.store.rows`). Deriving the
rows of 50k messages means decoding every journal record and building every message (2.6 s);
``rows/<session id>.rows`` keeps a session's rows as derived from its journal's first
``offset`` bytes: a line of JSON saying which bytes (format version, the journal's inode,
offset, modification time and the CRC-32 of those bytes), a line of JSON with the rows as
columns, then the long texts of those columns as one run of UTF-8.

It is derived, never the source of truth. A cache file that is missing, damaged, of another
format version or of another session is ignored; one of another file at the journal's path
(a compaction, a replaced or restored journal) is rebuilt from the journal; one whose
journal only grew since (the same file, its first ``offset`` bytes unchanged: appended
records) is extended by decoding only the new bytes, re-reading from the journal the earlier
records of a message an append record continues. A journal of the same inode, size and
modification time is taken as unchanged without being read: the store only appends to a
journal or moves a compacted copy into its place, which would have to reuse the inode number
and land on the same size within the same clock tick. A journal gone takes its cache file with
it, at once or when a store next opens. Files are replaced atomically (temporary file and
rename, under the process lock, so a temporary seen at opening belongs to a dead process),
with the journal's permissions; they hold nothing the journal does not (rows show the
journal's own text, reasoning, tool calls and results).

Only sessions not loaded in this process take this path; a loaded one (written here, or
read by ``list_messages``) answers from its in-memory states, newer than the disk while
writes are pending. So the process that wrote a session would never keep its rows: a store
keeps them as it closes instead (:meth:`RowKeeper.keep_written`), derived from the journal
as the next process would derive them, so that process reads them. Whatever the reader of a
journal would do besides reading (settle a dead writer's reply, warn of a torn tail, rewrite
stale session totals, name a corrupted record) makes the store load the session as it
always did (:class:`Replay`): rows are only taken from the disk when nothing of that applies.
"""

from __future__ import annotations

import array
import contextlib
import functools
import json
import os
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from stat import S_IMODE
from typing import Any

from ..core.message import Message
from . import row_scan
from .queries import Queries
from .replay import Replayer
from .row_scan import FACT_FIELDS, CachedRows, Replay, crc_of, empty, read_all
from .rows import ROW_FIELDS, SessionRows, row_of
from .state import (
    _WRITER_TOKEN,
    Lifecycle,
    StoreConfig,
    _dumps,
    _session_totals,
    log,
)
from .storage import ProcessLock, WriterLease, remove_stale_temporaries, write_atomic

#: The directory of the cache files, in the store.
ROWS_DIR = "rows"
SUFFIX = ".rows"
CACHE_FORMAT = "jupyter-crush-history-rows"
#: Bumped whenever a row or this file changes meaning: a file of another version is rebuilt.
CACHE_VERSION = 1

#: The file's layout. Decoding JSON costs about a microsecond a value, so only what is
#: small goes in JSON; the rest takes C loops to read:
#: - string columns: one run of UTF-8 at the file's end, the values joined by a character
#:   none of them holds (``finish_reason`` None as ""; ``searched`` only where not None);
_STRING_FIELDS = (
    "id",
    "role",
    "model",
    "finish_reason",
    "finish_message",
    "text",
    "reasoning",
    "tool_calls",
    "tool_results",
)
#: - number columns: 8-byte little-endian values, column after column, before the strings
#:   (``cost`` None as NaN; ``writer`` an index into the JSON's list of writers);
_NUMBER_FIELDS = {
    "created": "d",
    "input_tokens": "q",
    "output_tokens": "q",
    "cost": "d",
    "writer": "q",
    "cache_read": "q",
    "cache_write": "q",
    "at": "q",
}
#: Separators tried in turn: control characters, then private-use ones.
_SEPARATORS = [chr(c) for c in (*range(0x20), *range(0xE000, 0xF900))]
#: Seconds a closing store spends at most keeping the rows of the sessions it wrote
#: (RowKeeper.keep_written), which a kernel's shutdown waits for: deriving rows runs at
#: ~48 MB of journal a second here (30k messages of 1 KB), so a day's chat of a few hundred
#: messages takes milliseconds.
CLOSE_BUDGET_S = 1.0
#: Journal bytes a closing store counts on decoding per second: under half the rate above, so
#: that a journal it might not finish within what is left of the budget is not started.
SCAN_BYTES_PER_S = 20_000_000
#: Columns of lists, mostly empty: kept in the file only where not empty (by index), in
#: memory as tuples (the empty tuple is one object, which the garbage collector never walks).
_SPARSE_FIELDS = ("images", "calls", "results")


class RowFiles:
    """The cache files of one store: reading, extending and writing them."""

    def __init__(
        self,
        path: Path,
        images_dir: Path,
        writers_dir: Path,
        located: Callable[[Message], Message],
    ) -> None:
        self.directory = path / ROWS_DIR
        self._images_dir = images_dir
        self._writers_dir = writers_dir
        self._located = located

    def sweep(self, messages_dir: Path) -> None:
        """Remove temporaries of dead writers and the cache files of journals gone. Call
        under the process lock (every cache file is replaced under it)."""
        if not self.directory.is_dir():
            return
        remove_stale_temporaries(self.directory)
        journals = set(os.listdir(messages_dir))
        for name in os.listdir(self.directory):
            stem, suffix = os.path.splitext(name)
            if suffix == SUFFIX and f"{stem}.jsonl" not in journals:
                with contextlib.suppress(OSError):
                    os.unlink(self.directory / name)

    def current(
        self,
        session_id: str,
        journal: Path,
        held: CachedRows | None,
        *,
        build: bool,
        leaving: str = "",
    ) -> tuple[CachedRows | None, int | None]:
        """The session's rows as its journal is now, and the permissions to write them to
        the cache file with (None when it holds them already). ``held`` is what this process
        read before. With ``build`` false, only ``held`` if the journal has not changed since
        (else no rows): what is at hand without reading a file, which a search's journal scan
        may spare reading at all. Raises :class:`Replay` when the store's reader must read
        the journal; ``leaving`` names a writer to count as dead already (a closing store's
        own token: what it left open, the next reader settles)."""
        if held is None and not build:
            return None, None
        try:
            fd = os.open(journal, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.forget(session_id)
            return empty(), None
        try:
            stat = os.fstat(fd)
            if held is not None and held.unchanged(stat):
                return held, None
            if not build:
                return None, None
            if held is None or held.inode != stat.st_ino or held.offset > stat.st_size:
                held = self.read(session_id, stat)
                if held is not None and held.unchanged(stat):
                    return held, None
            grown = held is not None and held.inode == stat.st_ino
            data = read_all(fd, stat.st_size)
        finally:
            os.close(fd)
        # The same file grown, its first bytes unchanged (not rewritten in place): extend.
        same = grown and held is not None and crc_of(data, held.offset) == held.crc
        prior = held if same else None
        any_dead = functools.partial(self.any_dead, leaving=leaving)
        kept = row_scan.scan(session_id, data, stat, prior, self._located, any_dead)
        return kept, stat.st_mode & 0o777

    def any_dead(self, writers: frozenset[str], leaving: str = "") -> bool:
        """Whether one of ``writers`` (store tokens, none this store's but ``leaving``) is no
        longer alive or is ``leaving``."""
        return any(
            writer == leaving
            or not (
                _WRITER_TOKEN.fullmatch(writer) and WriterLease.is_alive(self._writers_dir, writer)
            )
            for writer in writers
        )

    def read(self, session_id: str, stat: os.stat_result) -> CachedRows | None:
        """The cache file's rows, if it is intact, of this version and session, and of the
        journal file ``stat`` describes (its rows are decoded only then)."""
        try:
            with open(self.directory / f"{session_id}{SUFFIX}", "rb") as f:
                head = json.loads(f.readline())
                if not (
                    isinstance(head, dict)
                    and head.get("format") == CACHE_FORMAT
                    and head.get("version") == CACHE_VERSION
                    and head.get("session") == session_id
                    and head.get("inode") == stat.st_ino
                    and type(head.get("offset")) is int
                    and head["offset"] <= stat.st_size
                    and type(head.get("mtime_ns")) in (int, type(None))
                    and type(head.get("crc")) is int
                    and type(head.get("count")) is int
                    and type(head.get("body_crc")) is int
                    and type(head.get("text_bytes")) is int
                    and type(head.get("separator")) is str
                    and len(head["separator"]) == 1
                ):
                    return None
                body = f.readline()
                numbers = f.read(8 * len(_NUMBER_FIELDS) * head["count"])
                strings = f.read()
            # What does not match its CRC or length is damaged; what does, this version wrote.
            if (
                zlib.crc32(numbers, zlib.crc32(body)) != head["body_crc"]
                or len(strings) != head["text_bytes"]
            ):
                return None
            return self._kept(head, json.loads(body), numbers, strings)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None  # missing or damaged: rebuilt from the journal

    def _kept(
        self, head: dict[str, Any], body: dict[str, Any], numbers: bytes, strings: bytes
    ) -> CachedRows:
        count, searched = head["count"], body["searched"]
        texts = strings.decode("utf-8", "surrogatepass").split(head["separator"])
        if len(texts) != len(_STRING_FIELDS) * count + len(searched) + 1:
            raise ValueError("strings cut short")
        columns: dict[str, list[Any]] = {}
        for k, name in enumerate(_STRING_FIELDS):
            columns[name] = texts[k * count : (k + 1) * count]
        columns["finish_reason"] = [reason or None for reason in columns["finish_reason"]]
        columns["searched"] = [None] * count
        for i, value in zip(searched, texts[len(_STRING_FIELDS) * count : -1], strict=True):
            columns["searched"][i] = value
        view = memoryview(numbers)
        for k, (name, code) in enumerate(_NUMBER_FIELDS.items()):
            values = array.array(code)
            values.frombytes(view[8 * k * count : 8 * (k + 1) * count])
            if sys.byteorder == "big":
                values.byteswap()
            columns[name] = values.tolist()
        columns["cost"] = [None if cost != cost else cost for cost in columns["cost"]]  # NaN
        columns["writer"] = list(map(body["writers"].__getitem__, columns["writer"]))
        images = self._images_dir
        for name, given in body["sparse"].items():
            values = [()] * count
            for index, items in given.items():
                values[int(index)] = tuple(
                    str(images / item) if name == "images" else item for item in items
                )
            columns[name] = values
        facts = {name: columns[name] for name in FACT_FIELDS}
        rows = SessionRows({name: columns[name] for name in ROW_FIELDS})
        chains = {int(index): offsets for index, offsets in body["appended"].items()}
        return CachedRows(
            head["inode"], head["offset"], head["mtime_ns"], head["crc"], rows, facts, chains
        )

    def write(self, session_id: str, kept: CachedRows, mode: int) -> bool:
        """Replace the cache file with ``kept``. Call under the process lock. False only when
        the file system refused it (a full disk: a caller keeping several stops there)."""
        given = {**kept.rows.columns, **kept.facts}
        count = len(kept.rows)
        writers = list(dict.fromkeys(given["writer"]))
        numbered = {writer: i for i, writer in enumerate(writers)}
        searched = [i for i, value in enumerate(given["searched"]) if value is not None]
        texts = [value for name in _STRING_FIELDS for value in given[name]]
        texts[3 * count : 4 * count] = [reason or "" for reason in given["finish_reason"]]
        texts += [given["searched"][i] for i in searched]
        texts.append("")  # so that no rows still split into a list of one
        joined = "".join(texts)
        separator = next((c for c in _SEPARATORS if c not in joined), None)
        if separator is None:
            return True  # texts holding every separator: derived again by the next process
        strings = separator.join(texts).encode("utf-8", "surrogatepass")
        number_columns = {
            **given,
            "cost": [float("nan") if cost is None else cost for cost in given["cost"]],
            "writer": [numbered[writer] for writer in given["writer"]],
        }
        sparse = {
            name: {str(i): list(values) for i, values in enumerate(given[name]) if values}
            for name in ("images", "calls", "results")
        }
        sparse["images"] = {
            i: [Path(path).name for path in paths] for i, paths in sparse["images"].items()
        }
        try:
            numbers = b"".join(
                _little_endian(array.array(code, number_columns[name]))
                for name, code in _NUMBER_FIELDS.items()
            )
        except (OverflowError, TypeError):
            return True  # numbers no 8 bytes hold: derived again by the next process
        body = (
            _dumps(
                {
                    "searched": searched,
                    "sparse": sparse,
                    "writers": writers,
                    "appended": {str(i): offsets for i, offsets in kept.appended.items()},
                }
            )
            + b"\n"
        )
        head = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "session": session_id,
            "inode": kept.inode,
            "offset": kept.offset,
            "mtime_ns": kept.mtime_ns,
            "crc": kept.crc,
            "count": count,
            "body_crc": zlib.crc32(numbers, zlib.crc32(body)),
            "text_bytes": len(strings),
            "separator": separator,
        }
        try:
            if not self.directory.is_dir():  # as open to others as the journals' directory
                journals = S_IMODE(os.stat(self.directory.parent / "messages").st_mode)
                self.directory.mkdir(mode=journals, exist_ok=True)
            payload = b"".join((_dumps(head), b"\n", body, numbers, strings))
            write_atomic(self.directory / f"{session_id}{SUFFIX}", payload, fsync=False, mode=mode)
        except OSError as exc:  # only speed is lost: the next process derives them again
            log.info("could not keep the history rows of %s (%s)", session_id, exc.strerror)
            return False
        return True

    def forget(self, session_id: str) -> None:
        """Remove the session's cache file, if any."""
        with contextlib.suppress(OSError):
            os.unlink(self.directory / f"{session_id}{SUFFIX}")


def _little_endian(values: array.array) -> bytes:
    if sys.byteorder == "big":
        values.byteswap()
    return values.tobytes()


#: Name under which a loaded session's messages keep their rows (Queries.derived).
_ROWS = "history"


class RowKeeper:
    """The part of :class:`~jupyter_crush.store.transcript.TranscriptStore` that hands out
    each session's history rows: from its loaded states, or from the rows kept for its
    journal in memory and in the cache file.

    Reads files without the store's lock (``lifecycle.lock``, shared with the store and its
    other parts), so writers never wait for a journal to be decoded; takes it to look at a
    session's state and for ``_held`` (the rows read in this process, by session id), and
    the process lock ``plock`` too to replace a cache file.
    """

    def __init__(
        self,
        config: StoreConfig,
        lifecycle: Lifecycle,
        plock: ProcessLock,
        replayer: Replayer,
        queries: Queries,
    ) -> None:
        self._config = config
        self._lifecycle = lifecycle
        self._plock = plock
        self._replayer = replayer
        self._queries = queries
        self._files = RowFiles(config.path, config.images_dir, config.writers_dir, config.located)
        self._held: dict[str, CachedRows] = {}

    def sweep(self) -> None:
        """At opening, under the process lock: see :meth:`RowFiles.sweep`."""
        self._files.sweep(self._config.messages_dir)

    def forget(self, session_id: str) -> None:
        """Drop the rows kept for the session's journal, in memory and on disk (its journal
        was compacted: the records they came from are gone). Call under both locks."""
        self._held.pop(session_id, None)
        self._files.forget(session_id)

    def keep_written(self) -> None:
        """Keep on disk the rows of each session this store wrote, so that the next process's
        history() reads them instead of decoding the journal (the process that wrote a
        session never needed them: it answers from its states). Call from close(), under the
        store's lock, after the final flush, only with nothing refused (a full disk gets
        nothing more) and never in a forked child.

        The rows are derived from the journal's bytes exactly as the next process would
        derive them, never from this store's states. A shutdown waits for this: largest
        journals first (what the next process would spend longest decoding), each only if it
        should be read within what is left of ``CLOSE_BUDGET_S``, the rest left to the
        reader as before. So is a session to settle, this store's own open replies included.
        The rows are derived data: failing to keep them is logged and must not fail the
        close, which still has to release the files.
        """
        try:
            self._keep_written()
        except Exception:
            log.warning("could not keep the history rows at close", exc_info=True)

    def _keep_written(self) -> None:
        token = self._config.token
        written = [
            st
            for st in self._replayer.sessions.values()
            if st.entries is not None and any(e.writer == token for e in st.entries.values())
        ]
        written.sort(key=lambda st: st.journal.offset, reverse=True)
        deadline = time.monotonic() + CLOSE_BUDGET_S
        for st in written:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if st.journal.offset > left * SCAN_BYTES_PER_S:
                continue
            sid = st.session.id
            try:
                kept, mode = self._files.current(
                    sid, st.journal.path, None, build=True, leaving=token
                )
            except Replay:
                continue  # the reader's, as for any process
            except OSError as exc:
                log.info("could not read %s (%s)", st.journal.path, exc.strerror)
                continue
            if kept is None or mode is None or kept.totals != _session_totals(st.session):
                continue  # kept already, or another writer appended since: theirs to keep
            with self._plock:
                if not self._files.write(sid, kept, mode):
                    return

    def rows(self, session_id: str, *, build: bool = True) -> SessionRows | None:
        """The session's rows as they are now; with ``build`` false, None unless they are
        at hand without decoding the whole journal."""
        with self._lifecycle.lock:
            self._lifecycle.check_open()
            st = self._replayer.state(session_id)
            loaded = st.entries is not None
            held = self._held.pop(session_id, None) if loaded else self._held.get(session_id)
        if loaded:
            return self._loaded_rows(session_id, build)
        try:
            kept, mode = self._files.current(session_id, st.journal.path, held, build=build)
            if kept is None:
                return None
            with self._lifecycle.lock:
                self._lifecycle.check_open()
                loaded = st.entries is not None  # loaded meanwhile: its states are newer
                if not loaded:
                    if kept.totals != _session_totals(st.session):
                        # The journal may be newer than the index read: read what followed.
                        self._replayer.catch_up_index()
                        if kept.totals != _session_totals(st.session):
                            raise Replay  # the reader rewrites the session's record
                    if self._files.any_dead(kept.awaiting - {self._config.token}):
                        raise Replay  # a writer died since: its reply is to settle
                    if mode is not None:
                        with self._plock:
                            self._files.write(session_id, kept, mode)
                    self._held[session_id] = kept
        except Replay:
            with self._lifecycle.lock:
                self._lifecycle.check_open()
                self._held.pop(session_id, None)
                self._replayer.loaded(session_id)  # settles, warns or names the corruption
            return self._loaded_rows(session_id, build=True)
        return self._loaded_rows(session_id, build) if loaded else kept.rows

    def _loaded_rows(self, session_id: str, build: bool) -> SessionRows | None:
        if not build:
            kept = self._queries.kept(session_id, _ROWS)
            return SessionRows.of(kept) if kept is not None else None
        return SessionRows.of(self._queries.derived(session_id, _ROWS, row_of))
