"""File primitives under the transcript store: append-only journals, locks, atomic files.

Nothing here knows about sessions or messages; :mod:`jupyter_crush.store.transcript` builds on it.

A journal is a JSON-lines file. A record counts only once its terminating newline is on
disk: a writer killed mid-``write`` leaves a tail without one (a *torn tail*), which readers
skip and the next writer truncates away (under the store's process lock) before appending.
A newline-terminated line that is not a JSON object is corruption, never skipped silently.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import queue
import threading
from pathlib import Path
from typing import Any

# What a file system says when it refuses writes to a file it lets us read.
_REFUSED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class StoreError(Exception):
    """The store's files cannot be used: a bad path, no write access, or corrupted data."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, fsync: bool, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so a crash leaves either the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        _write_all(fd, data)
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporaries left by a writer killed during :func:`write_atomic`.

    Call only while holding the process lock: every atomic write happens under it, so any
    temporary seen then belongs to a dead writer.
    """
    for tmp in directory.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Journal:
    """One append-only JSON-lines file, read incrementally.

    The journal keeps a descriptor on the file version it has consumed (``offset`` bytes,
    always just past a newline). Holding it pins the inode, so comparing it with the path's
    inode reliably tells that another process compacted the file (moved a new one into
    place): an inode still open cannot be reused by a new file. Then the file is re-read
    from the start. Not thread-safe: the store calls it under its own lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._fd: int | None = None  # O_RDWR|O_APPEND descriptor on the consumed version
        self._inode = 0  # inode of _fd
        self._version = 0  # bumped on every open: same number, same pinned file
        self._read_only = False  # _fd opened read-only: the file refused write access
        self.tail = 0  # bytes after the last newline at the last read: torn or in flight

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def read_new(self) -> tuple[bool, list[tuple[dict[str, Any], bytes]]]:
        """Records appended since the last call, as ``(record, line)`` pairs.

        Returns ``(reset, records)``: ``reset`` means ``records`` is the whole current
        content, to be applied from scratch (first read, after :meth:`close`, or after the
        file was replaced or removed).
        """
        if self._fd is not None:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self.close(defer=True)
                self.offset = 0
                return True, []
            if st.st_ino != self._inode:
                self.close(defer=True)  # replaced by a compaction elsewhere: read the new one
            elif st.st_size == self.offset:
                return False, []
        reset = self._fd is None
        if reset:
            try:
                self._open(create=False)
            except FileNotFoundError:
                had_content, self.offset = self.offset > 0, 0
                return had_content, []
            self.offset = 0
        assert self._fd is not None
        start = self.offset
        size = os.fstat(self._fd).st_size
        if size < start:
            raise self._shrunk(size)
        data = os.pread(self._fd, size - start, start)
        end = data.rfind(b"\n") + 1  # bytes after the last newline: a torn or in-flight tail
        records = []
        pos = start
        for line in data[:end].split(b"\n")[:-1]:
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise self._corrupt(pos, f"not valid JSON ({exc})") from None
            if not isinstance(record, dict):
                raise self._corrupt(pos, "not a JSON object")
            records.append((record, line))
            pos += len(line) + 1
        self.offset = start + end
        self.tail = size - self.offset
        return reset, records

    def _open(self, *, create: bool) -> None:
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            self._fd = os.open(self.path, flags, 0o644)
            self._read_only = False
        except OSError as exc:
            if create or exc.errno not in _REFUSED:
                raise
            # A file that refuses writes (read-only mount, immutable) can still be read;
            # append reopens it for writing and then reports the refusal.
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            self._read_only = True
        self._inode = os.fstat(self._fd).st_ino
        self._version += 1

    def _writable(self) -> None:
        """Swap a read-only descriptor for a writable one on the same file, or raise why not."""
        if self._read_only and self._fd is not None:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            if os.fstat(fd).st_ino != self._inode:
                os.close(fd)  # replaced meanwhile: the caller read_new()s first, so rare
                raise OSError(errno.ESTALE, "the file was replaced while being written")
            os.close(self._fd)
            self._fd, self._read_only = fd, False

    def corrupt(self, line: bytes, problem: str) -> StoreError:
        """A :class:`StoreError` for a well-formed JSON line the caller cannot use."""
        with open(self.path, "rb") as f:
            return self._corrupt(max(f.read().find(line + b"\n"), 0), problem)

    def _corrupt(self, pos: int, problem: str) -> StoreError:
        with open(self.path, "rb") as f:
            lineno = f.read(pos).count(b"\n") + 1
        return StoreError(
            f"corrupted transcript file {self.path}: the record at byte {pos} (line {lineno}) "
            f"is {problem}. The records before it are intact: move the file aside and keep its "
            f"first {pos} bytes (head -c {pos} FILE.bad > FILE), or restore it from a backup."
        )

    def _shrunk(self, size: int) -> StoreError:
        return StoreError(
            f"transcript file {self.path} shrank from {self.offset} to {size} bytes while "
            "open: something other than jupyter-crush truncated it; reopen the store"
        )

    def append(self, payload: bytes, *, fsync: bool) -> None:
        """Append complete lines. Call under the process lock, right after :meth:`read_new`."""
        if self._fd is None:
            self._open(create=True)
            self.offset = 0
            if fsync:
                _fsync_dir(self.path.parent)  # a new file must survive, not only its bytes
        assert self._fd is not None
        self._writable()
        size = os.fstat(self._fd).st_size
        if size > self.offset:
            # A torn tail from a writer killed mid-append: we hold the lock and have read
            # every complete record, so these bytes belong to no one.
            os.ftruncate(self._fd, self.offset)
        elif size < self.offset:
            raise self._shrunk(size)
        try:
            _write_all(self._fd, payload)
            if fsync:
                os.fsync(self._fd)
        except OSError:
            # Refused part way (disk full): take back the lines that did land, so no reader
            # takes them for records and the space is free for the retry of the whole batch.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.offset)
            raise
        self.offset += len(payload)

    def rewrite(self, payload: bytes, *, fsync: bool) -> None:
        """Atomically replace the whole file (compaction). Call under the process lock."""
        write_atomic(self.path, payload, fsync=fsync)
        self.close(defer=True)
        self._open(create=False)
        self.offset = len(payload)

    # Compaction in the background, in two steps: the bulk copy without any lock, then a
    # short install under the locks that adds what was appended meanwhile.

    def snapshot(self) -> tuple[int, int]:
        """The consumed version and offset, for :meth:`install_compacted`."""
        return self._version, self.offset

    def write_compacted(self, payload: bytes, tag: str) -> Path:
        """Write a compacted copy next to the journal. Needs no lock: it touches only a
        file named after ``tag`` (the writer's token, so a sweep can tell it is alive)."""
        tmp = self.path.with_name(f".{self.path.name}.{tag}.compact")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, payload)
        finally:
            os.close(fd)
        return tmp

    def install_compacted(self, tmp: Path, snapshot: tuple[int, int], *, fsync: bool) -> bool:
        """Move a compacted copy of the journal up to ``snapshot`` into place.

        Call under the process lock right after :meth:`read_new`. The records appended since
        the snapshot are copied over verbatim (last record still wins). Returns False, and
        drops the copy, if the journal is no longer the version the snapshot was taken of.
        """
        version, start = snapshot
        if self._fd is None or self._version != version or self.offset < start:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            return False
        tail = os.pread(self._fd, self.offset - start, start)
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            _write_all(fd, tail)
            if fsync:
                os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if fsync:
            _fsync_dir(self.path.parent)
        self.close(defer=True)
        self._open(create=False)
        self.offset = size
        return True

    def close(self, *, defer: bool = False) -> None:
        """Drop the descriptor; the next :meth:`read_new` re-reads the file from the start.

        ``defer`` hands it to a background thread: closing the last descriptor of a replaced
        version frees its blocks, which can take milliseconds the caller should not wait.
        """
        if self._fd is not None:
            if defer:
                _close_soon(self._fd)
            else:
                os.close(self._fd)
            self._fd = None
            self._inode = 0


# Descriptors waiting to be closed by the closer thread. The thread is started on first
# use and again in a forked child (threads do not survive a fork).
_to_close: queue.SimpleQueue[int] = queue.SimpleQueue()
_closer: threading.Thread | None = None
_closer_lock = threading.Lock()  # guards starting _closer


def _close_soon(fd: int) -> None:
    global _closer
    with _closer_lock:
        if _closer is None or not _closer.is_alive():
            _closer = threading.Thread(
                target=_close_forever, name="crush-store-closer", daemon=True
            )
            _closer.start()
    _to_close.put(fd)


def _close_forever() -> None:
    while True:
        fd = _to_close.get()
        with contextlib.suppress(OSError):
            os.close(fd)


class ProcessLock:
    """An exclusive ``flock`` on one file, reentrant within the owning object.

    Serializes writers across processes. Not thread-safe by itself: the store only enters
    it while holding its own thread lock, which also guards ``_depth``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._depth = 0  # nesting count; the flock is held while > 0

    def __enter__(self) -> ProcessLock:
        if self._fd is None:
            raise StoreError(f"the transcript store lock {self.path} is closed; reopen the store")
        if self._depth == 0:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # also releases a held flock
            self._fd = None


class WriterLease:
    """Proof that a store instance is alive: an exclusive ``flock`` on ``<dir>/<token>.lock``.

    Records carry their writer's token. The kernel releases the flock when the process dies
    (even on ``kill -9``), so another process can tell a dead writer's unfinished message
    (to be settled) from a live writer's message still streaming (to be left alone).
    """

    def __init__(self, directory: Path, token: str) -> None:
        self.path = directory / f"{token}.lock"
        # Lock under a private name, then rename: a lease must never be visible unlocked,
        # or a process checking it would take it for a dead writer's and remove it.
        fresh = directory / f".{token}.new"
        self._fd: int | None = os.open(
            fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
        )
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(fresh, self.path)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            with contextlib.suppress(OSError):
                fresh.unlink()
            raise

    def release(self) -> None:
        """End the lease: remove the file and drop the flock."""
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.close()

    def close(self) -> None:
        """Close this descriptor only (a forked child's copy: the parent keeps the lease)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def is_alive(directory: Path, token: str) -> bool:
        """Whether the writer ``token`` still holds its lease; removes a dead writer's file."""
        path = directory / f"{token}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return True
                raise
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return False
        finally:
            os.close(fd)
