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

    ``offset`` is how far this process has consumed the file (always just past a newline);
    ``inode`` identifies the file version consumed, so a compaction by another process
    (a new file moved into place) is noticed and the file is re-read from the start.
    Not thread-safe: the store calls it under its own lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.inode: int | None = None
        self.offset = 0
        self._fd: int | None = None  # O_APPEND descriptor, reopened when the inode changes

    def read_new(self) -> tuple[bool, list[tuple[dict[str, Any], bytes]]]:
        """Records appended since the last call, as ``(record, line)`` pairs.

        Returns ``(reset, records)``: ``reset`` means the file was replaced (or removed)
        and ``records`` is its whole content, to be applied from scratch.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            reset = self.inode is not None
            self.inode, self.offset = None, 0
            return reset, []
        if st.st_ino == self.inode and st.st_size == self.offset:
            return False, []
        with open(self.path, "rb") as f:
            fst = os.fstat(f.fileno())
            reset = fst.st_ino != self.inode or fst.st_size < self.offset
            start = 0 if reset else self.offset
            f.seek(start)
            data = f.read()
        end = data.rfind(b"\n") + 1  # bytes after the last newline are a torn or in-flight tail
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
        self.inode = fst.st_ino
        self.offset = start + end
        return reset, records

    def corrupt(self, line: bytes, problem: str) -> StoreError:
        """A :class:`StoreError` for a well-formed JSON line the caller cannot use."""
        return self._corrupt(self._locate(line), problem)

    def _locate(self, line: bytes) -> int:
        with open(self.path, "rb") as f:
            return max(f.read().find(line + b"\n"), 0)

    def _corrupt(self, pos: int, problem: str) -> StoreError:
        with open(self.path, "rb") as f:
            lineno = f.read(pos).count(b"\n") + 1
        return StoreError(
            f"corrupted transcript file {self.path}: the record at byte {pos} (line {lineno}) "
            f"is {problem}. The records before it are intact: move the file aside and keep its "
            f"first {pos} bytes (head -c {pos} FILE.bad > FILE), or restore it from a backup."
        )

    def append(self, payload: bytes, *, fsync: bool) -> None:
        """Append complete lines. Call under the process lock, right after :meth:`read_new`."""
        fd = self._writable_fd(fsync=fsync)
        size = os.fstat(fd).st_size
        if size > self.offset:
            # A torn tail from a writer killed mid-append: we hold the lock and have read
            # every complete record, so these bytes belong to no one.
            os.ftruncate(fd, self.offset)
        elif size < self.offset:
            raise StoreError(
                f"transcript file {self.path} shrank from {self.offset} to {size} bytes while "
                "open: something other than jupyter-crush truncated it; reopen the store"
            )
        _write_all(fd, payload)
        self.offset += len(payload)
        if fsync:
            os.fsync(fd)

    def rewrite(self, payload: bytes, *, fsync: bool) -> None:
        """Atomically replace the whole file (compaction). Call under the process lock."""
        write_atomic(self.path, payload, fsync=fsync)
        self.close()
        self.inode = os.stat(self.path).st_ino
        self.offset = len(payload)

    def _writable_fd(self, *, fsync: bool) -> int:
        if self._fd is not None and os.fstat(self._fd).st_ino != self.inode:
            self.close()  # another process compacted the file; ours is the old inode
        if self._fd is None:
            created = self.inode is None
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
            self.inode = os.fstat(self._fd).st_ino
            if created and fsync:
                _fsync_dir(self.path.parent)  # a new file must survive, not only its bytes
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
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
