"""File primitives under the transcript store: append-only journals, locks, atomic files.

Nothing here knows about sessions or messages; :mod:`jupyter_crush.store` builds on it.

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
from pathlib import Path
from typing import Any


class StoreError(Exception):
    """The store's files cannot be used: a bad path, no write access, or corrupted data."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, fsync: bool) -> None:
    """Replace ``path`` with ``data`` so a crash leaves either the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
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
                self.close()
                self.offset = 0
                return True, []
            if st.st_ino != self._inode:
                self.close()  # replaced by a compaction elsewhere: re-read the new version
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
        return reset, records

    def _open(self, *, create: bool) -> None:
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        self._fd = os.open(self.path, flags, 0o644)
        self._inode = os.fstat(self._fd).st_ino

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
        size = os.fstat(self._fd).st_size
        if size > self.offset:
            # A torn tail from a writer killed mid-append: we hold the lock and have read
            # every complete record, so these bytes belong to no one.
            os.ftruncate(self._fd, self.offset)
        elif size < self.offset:
            raise self._shrunk(size)
        _write_all(self._fd, payload)
        self.offset += len(payload)
        if fsync:
            os.fsync(self._fd)

    def rewrite(self, payload: bytes, *, fsync: bool) -> None:
        """Atomically replace the whole file (compaction). Call under the process lock."""
        write_atomic(self.path, payload, fsync=fsync)
        self.close()
        self._open(create=False)
        self.offset = len(payload)

    def close(self) -> None:
        """Drop the descriptor; the next :meth:`read_new` re-reads the file from the start."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._inode = 0


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
