"""Opening a transcript store: its directory, its format file, what dead writers left.

``format.json`` names the format and its version; a store written by a newer version is
refused with a line saying to upgrade. At open, under the process lock, the leases and
compaction copies of writers no longer alive are removed.

:class:`Opener` is the part of :class:`~jupyter_crush.store.transcript.TranscriptStore` that
runs when it opens.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .state import _WRITER_TOKEN, FORMAT_FILE, StoreConfig, _dumps, log
from .storage import StoreError, WriterLease, write_atomic

FORMAT_NAME = "jupyter-crush-transcripts"
#: 2: journals may hold append records (:mod:`jupyter_crush.store.appends`). A version-1
#: store is read as it is and upgraded once no store of a release without append records
#: has it open (:meth:`Opener.allow_appends`).
FORMAT_VERSION = 2


class Opener:
    """Checks and clean-up when a store opens.

    Holds no state of its own beyond the store's settings. The store calls it once, while
    holding its lock and its process lock, so no writer of this or another process
    (they take the process lock too) changes the files it checks or removes meanwhile.
    """

    def __init__(self, config: StoreConfig) -> None:
        self._config = config

    def check_format(self) -> int:
        """The store's format version; a new store gets this release's."""
        path = self._config.path / FORMAT_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            if any(self._config.path.glob("*.jsonl")):
                raise StoreError(
                    f"{path} is missing but {self._config.path} holds transcript files; restore it "
                    f'as {{"format": "{FORMAT_NAME}", "version": {FORMAT_VERSION}}}'
                ) from None
            self._write_format()
            return FORMAT_VERSION
        try:
            meta = json.loads(raw)
            name, version = meta["format"], meta["version"]
        except (ValueError, TypeError, KeyError):
            raise StoreError(
                f"corrupted transcript store file {path}; restore it "
                f'as {{"format": "{FORMAT_NAME}", "version": {FORMAT_VERSION}}}'
            ) from None
        if name != FORMAT_NAME:
            raise StoreError(
                f"{self._config.path} is not a jupyter-crush transcript store ({path})"
            )
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StoreError(
                f"the transcript store {self._config.path} has format version {version!r}, "
                f"newer than this jupyter-crush supports ({FORMAT_VERSION}); upgrade jupyter-crush"
            )
        return version

    def allow_appends(self, version: int) -> bool:
        """Whether this store may write append records: a version-2 store, or a version-1
        store upgraded now because no other store has it open (one of an older release
        could not read append records; once the store is version 2, such a release refuses
        to open it, saying to upgrade). Call after :meth:`sweep_dead_writers`."""
        if version >= 2:
            return True
        for lease in self._config.writers_dir.glob("*.lock"):
            token = lease.stem
            if (
                token != self._config.token
                and _WRITER_TOKEN.fullmatch(token)
                and WriterLease.is_alive(self._config.writers_dir, token)
            ):
                return False
        try:
            self._write_format()
        except OSError as exc:  # a full disk: whole records, as before; a later opening retries
            log.info("could not upgrade %s (%s)", self._config.path / FORMAT_FILE, exc.strerror)
            return False
        return True

    def _write_format(self) -> None:
        meta = _dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}) + b"\n"
        write_atomic(self._config.path / FORMAT_FILE, meta, fsync=self._config.fsync)

    def sweep_dead_writers(self) -> None:
        """Remove what dead writers left: leases and compaction copies. Runs under the
        process lock at open; leases are made under it too, so a half-made lease here
        belongs to a dead writer."""
        for lease in self._config.writers_dir.iterdir():
            name = lease.name
            if name.startswith(".") and name.endswith(".new"):
                with contextlib.suppress(OSError):
                    lease.unlink()
            elif (
                name.endswith(".lock")
                and _WRITER_TOKEN.fullmatch(lease.stem)
                and lease.stem != self._config.token
            ):
                WriterLease.is_alive(self._config.writers_dir, lease.stem)
        # Background compactions write their copy outside the process lock, named by token.
        for copy in self._config.messages_dir.glob(".*.compact"):
            token = copy.name.rsplit(".", 2)[-2]
            if not _WRITER_TOKEN.fullmatch(token) or not WriterLease.is_alive(
                self._config.writers_dir, token
            ):
                with contextlib.suppress(OSError):
                    copy.unlink()


def _prepare_directory(path: Path) -> Path:
    path = path.expanduser().absolute()
    if path.exists():
        if not path.is_dir():
            raise StoreError(
                f"transcript store path {path} exists and is not a directory; pass a directory"
            )
    else:
        parent = path.parent
        if not parent.is_dir():
            problem = "is not a directory" if parent.exists() else "does not exist"
            raise StoreError(
                f"cannot create the transcript store {path}: its parent {parent} {problem}; "
                "pass a path inside an existing directory"
            )
        try:
            path.mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the transcript store directory {path} ({exc.strerror}); "
                "choose a directory you can write to"
            ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StoreError(
            f"the transcript store {path} is not writable; choose a directory you can write to"
        )
    return path
