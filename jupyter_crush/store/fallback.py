"""Fallback journals: records a transcript store could not write before it closed.

A store whose writes are refused keeps the records in memory and retries them (see
:mod:`jupyter_crush.store.pending`). If it closes while they still wait — the kernel shut
down or restarted before the user freed the full disk — they would die with the process.
Instead, :func:`save` writes them to a fallback journal outside the store, in the first of
:func:`fallback_directories` that takes the write, and the next store opened on the same
path reads them back (:func:`load`) and folds them in.

A fallback journal is one JSON-lines file, written atomically (a reader sees all of it or
none), named ``<store key>.<writer token>.jsonl`` where the key is a hash of the store's
resolved path. Its first line says which store and writer it belongs to and why the records
were refused; then one ``{"session": {...}}`` line per session concerned and one
``{"message": {...}}`` line per message, each exactly the record the store would have
appended (same fields, its writer's token included, so nothing the store itself would not
hold), in the order the store kept them pending. The files are readable by their owner only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import stat
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.message import Session
from .replay import _record_problem
from .state import _SESSION_ID, _WRITER_TOKEN, _dumps
from .storage import write_atomic

FALLBACK_FORMAT = "jupyter-crush-unwritten-records"
FALLBACK_VERSION = 1


def fallback_directories() -> list[Path]:
    """Where a fallback journal may go, in order of preference.

    First the user's data directory (``$XDG_DATA_HOME``, else ``~/.local/share``): private to
    the user and kept across reboots. Then the temporary directory: usually another volume
    (often a tmpfs), so it still takes writes when the volume holding the store and the home
    directory is full — but it may be cleared at reboot, hence second.
    """
    # Directly in the shared directory, whose sticky bit keeps others from replacing it.
    places = [Path(tempfile.gettempdir()) / f"jupyter-crush-{os.getuid()}-unwritten"]
    data_home = os.environ.get("XDG_DATA_HOME")
    if not data_home:
        try:
            data_home = str(Path.home() / ".local" / "share")
        except (RuntimeError, KeyError):  # a user without a home directory
            return places
    return [Path(data_home) / "jupyter-crush" / "unwritten", *places]


def store_key(store_path: Path) -> str:
    """Names a store's fallback journals: the same store path, the same key."""
    return hashlib.sha256(str(store_path.resolve()).encode()).hexdigest()[:32]


@dataclasses.dataclass
class Unwritten:
    """What a closing store could not write: session records and message records."""

    reason: str
    sessions: list[dict[str, Any]]
    messages: list[dict[str, Any]]


def save(store_path: Path, writer: str, unwritten: Unwritten) -> Path:
    """Write ``unwritten`` to a fallback journal in the first directory that takes it.

    Raises the last ``OSError`` if none does.
    """
    header = {
        "format": FALLBACK_FORMAT,
        "version": FALLBACK_VERSION,
        "store": str(store_path),
        "writer": writer,
        "reason": unwritten.reason,
        "written_at": time.time(),
    }
    lines = [_dumps(header)]
    lines += [_dumps({"session": record}) for record in unwritten.sessions]
    lines += [_dumps({"message": record}) for record in unwritten.messages]
    payload = b"".join(line + b"\n" for line in lines)
    error: OSError | None = None
    for directory in fallback_directories():
        try:
            _private_directory(directory)
            path = directory / f"{store_key(store_path)}.{writer}.jsonl"
            # fsynced: the process is about to end, and this is the records' last copy.
            write_atomic(path, payload, fsync=True, mode=0o600)
            return path
        except OSError as exc:
            error = exc
    assert error is not None
    raise error


def _private_directory(directory: Path) -> None:
    """Create ``directory`` readable by its owner only, or check that it is."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not _is_private(directory):
        raise PermissionError(f"{directory} is not a private directory of this user")


def _is_private(directory: Path) -> bool:
    """Whether ``directory`` is this user's and closed to others: a shared temporary
    directory must neither hand our records to someone else nor take records from them."""
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


@dataclasses.dataclass
class Saved:
    """Every fallback journal of one store, merged: per session, the newest session record
    and the newest record of each message, messages in the order they first appear."""

    files: list[Path]
    reason: str
    sessions: dict[str, dict[str, Any]]
    messages: dict[str, dict[str, dict[str, Any]]]  # session id -> message id -> record


_LEFT = "it is left in place: move it aside, or fix it, and reopen the store"


class UnwrittenRecordsWarning(UserWarning):
    """A store opened with records that an earlier store on its path could not write
    before it closed: said once, when they are folded in (or cannot be read)."""


def tell(message: str) -> None:
    """Say ``message`` to the user as an :class:`UnwrittenRecordsWarning` shown on one line:
    it names no source line, which would quote the store's own code and tell them nothing."""
    warnings.warn_explicit(message, UnwrittenRecordsWarning, "jupyter-crush", 0)


class FallbackError(Exception):
    """A fallback journal that cannot be read; its file is left where it is."""


def load(store_path: Path, writer_alive: Callable[[str], bool]) -> Saved | None:
    """The fallback journals of the store at ``store_path``, oldest first, merged.

    Journals of a writer still alive (closing as we open) are left for a later opening.
    Raises :class:`FallbackError` naming the first journal that cannot be read.
    """
    key = store_key(store_path)
    found: list[tuple[float, Path, dict[str, Any], list[dict[str, Any]]]] = []
    for directory in filter(_is_private, fallback_directories()):
        for path in directory.glob(f"{key}.*.jsonl"):
            header, records = _read(path)
            if header["store"] != str(store_path) or writer_alive(header["writer"]):
                continue
            found.append((header["written_at"], path, header, records))
    if not found:
        return None
    found.sort(key=lambda item: item[0])
    saved = Saved([path for _, path, _, _ in found], found[-1][2]["reason"], {}, {})
    for _, path, _, records in found:
        for record in records:
            if "session" in record:
                saved.sessions[record["session"]["id"]] = record["session"]
                continue
            message = record["message"]
            sid = message["session_id"]
            problem = _record_problem(message, sid)
            if not problem and sid not in saved.sessions:
                problem = "a message of a session it has no record of"
            if problem:
                raise FallbackError(f"cannot read the fallback journal {path} ({problem}); {_LEFT}")
            saved.messages.setdefault(sid, {})[message["id"]] = message
    return saved


def _read(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    try:
        lines = path.read_bytes().splitlines()
        header = json.loads(lines[0])
        if header.get("format") != FALLBACK_FORMAT:
            raise ValueError("not a fallback journal of jupyter-crush")
        if not _WRITER_TOKEN.fullmatch(str(header.get("writer"))):
            raise ValueError(f"an invalid writer {header.get('writer')!r}")
        if not isinstance(header.get("written_at"), float | int):
            raise ValueError("no time it was written at")
        header["store"], header["reason"] = str(header.get("store")), str(header.get("reason"))
        if not isinstance(header.get("version"), int) or header["version"] > FALLBACK_VERSION:
            raise ValueError(f"format version {header.get('version')!r} is newer than this one")
        records = [json.loads(line) for line in lines[1:]]
        for record in records:
            if "session" in record:
                session = Session.from_dict(record["session"])  # ids name files: checked
                if not isinstance(session.id, str) or not _SESSION_ID.fullmatch(session.id):
                    raise ValueError(f"a session with an invalid id {session.id!r}")
            elif not isinstance(record.get("message"), dict):
                raise ValueError("a line that is neither a session nor a message record")
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise FallbackError(f"cannot read the fallback journal {path} ({exc}); {_LEFT}") from None
    return header, records


def drop(files: list[Path]) -> None:
    """Remove fallback journals whose records are all in the store (or in a newer one)."""
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
