"""Deriving a session's history rows from its journal's bytes, or extending rows derived
before from the bytes appended since.

What :mod:`jupyter_crush.store.row_cache` keeps. :func:`scan` reads a journal as the store's
reader (:mod:`jupyter_crush.store.replay`) does, record by record, and accepts exactly what
that reader accepts without doing anything besides reading: a record it would report as
corruption, a torn or in-flight tail, or a dead writer's reply it would settle raise
:class:`Replay`, and the store hands the session to its reader. Given rows derived from the
first bytes of the same file, it decodes only what follows; an append record continuing a
message from before re-reads that message's earlier records, whose offsets the rows keep.
"""

from __future__ import annotations

import functools
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.message import Message, Role
from . import appends
from .appends import APPEND_KEY
from .replay import _record_problem, _settle_facts
from .rows import ROW_FIELDS, SessionRows, row_of
from .state import _WRITER_KEY, _usage_tuple

#: Columns kept besides the rows': what tells whether the session needs the store's reader
#: (each message's writer, tool call ids, answered call ids, usage) and where each message's
#: latest whole record starts in the journal.
FACT_FIELDS = ("writer", "calls", "results", "cache_read", "cache_write", "at")


class Replay(Exception):
    """The journal needs the store's own reader: settling, a warning, totals or an error."""


@dataclass(eq=False)
class CachedRows:
    """A session's rows as derived from the first ``offset`` bytes of its journal."""

    inode: int
    offset: int
    mtime_ns: int | None  # the journal's, when it was exactly ``offset`` bytes long
    crc: int  # CRC-32 of those bytes
    rows: SessionRows
    facts: dict[str, list[Any]]  # the FACT_FIELDS columns
    appended: dict[int, list[int]]  # message index -> offsets of its append records

    def unchanged(self, stat: os.stat_result) -> bool:
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns) == (
            self.inode,
            self.offset,
            self.mtime_ns,
        )

    @functools.cached_property
    def totals(self) -> tuple[tuple[int, int, int, int], float, int]:
        """The session's usage, cost and message count, as the store's reader sums them."""
        columns, facts = self.rows.columns, self.facts
        usage = (
            sum(columns["input_tokens"]),
            sum(columns["output_tokens"]),
            sum(facts["cache_read"]),
            sum(facts["cache_write"]),
        )
        cost = 0.0
        for value in columns["cost"]:
            cost += float(value or 0.0)
        return usage, round(cost, 9), len(self.rows)

    @functools.cached_property
    def awaiting(self) -> frozenset[str]:
        """Writers whose messages would be settled were the writer dead (:func:`_awaiting`)."""
        columns, facts = self.rows.columns, self.facts
        return _awaiting(
            columns["role"],
            [reason is None for reason in columns["finish_reason"]],
            facts["calls"],
            facts["results"],
            facts["writer"],
        )


def _awaiting(
    roles: list[str],
    unfinished: list[bool],
    calls: list[tuple[str, ...]],
    results: list[tuple[str, ...]],
    writers: list[str],
) -> frozenset[str]:
    """Writers whose messages the store's reader would settle were the writer dead: those of
    an assistant message without a finish, or with a call no later message answers."""
    # Only messages with calls, results or no finish matter: few, found in C loops.
    open_ends = [
        i
        for i, (role, open_, called) in enumerate(zip(roles, unfinished, calls, strict=True))
        if (open_ or called) and role == Role.ASSISTANT
    ]
    if not open_ends:
        return frozenset()
    answering = [i for i, answered in enumerate(results) if answered]
    answered: set[str] = set()
    found: set[str] = set()
    for i in sorted({*open_ends, *answering}, reverse=True):
        answered.update(results[i])
        if roles[i] == Role.ASSISTANT and (unfinished[i] or not answered.issuperset(calls[i])):
            found.add(writers[i])
    return frozenset(found)


def empty() -> CachedRows:
    """The rows of a session without a journal."""
    return CachedRows(0, 0, None, 0, SessionRows.of([]), {name: [] for name in FACT_FIELDS}, {})


def read_all(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break  # truncated meanwhile (a torn tail cut off): read up to there
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def crc_of(data: bytes, end: int) -> int:
    return zlib.crc32(memoryview(data)[:end]) if end <= len(data) else -1


class _State:
    """A message's latest state read from the journal: its whole record and the append
    records after it, with where each starts."""

    __slots__ = ("append_at", "appends", "at", "known", "record")

    def __init__(self, record: dict[str, Any], at: int) -> None:
        self.record = record
        self.at = at
        self.appends: list[dict[str, Any]] = []
        self.append_at: list[int] = []
        self.known: dict[Any, int] | None = None

    def folded(self) -> dict[str, Any]:
        return appends.fold(self.record, self.appends) if self.appends else self.record


def _line_at(data: bytes, offset: int) -> dict[str, Any]:
    end = data.find(b"\n", offset)
    if end < 0:
        raise Replay
    try:
        record = json.loads(data[offset:end])
    except ValueError:
        raise Replay from None
    if not isinstance(record, dict):
        raise Replay
    return record


def _earlier(data: bytes, prior: CachedRows, index: int) -> _State:
    """A message's state as ``prior`` derived it, re-read from the journal."""
    state = _State(_line_at(data, prior.facts["at"][index]), prior.facts["at"][index])
    for offset in prior.appended.get(index, ()):
        state.appends.append(_line_at(data, offset))
        state.append_at.append(offset)
    return state


def scan(
    session_id: str,
    data: bytes,
    stat: os.stat_result,
    prior: CachedRows | None,
    located: Callable[[Message], Message],
    any_dead: Callable[[frozenset[str]], bool],
) -> CachedRows:
    """The rows of the journal ``data`` (of the file ``stat`` describes), decoding only what
    follows ``prior``'s offset when it is given. Accepts exactly what the store's reader
    accepts without a warning; anything else raises :class:`Replay`."""
    end = data.rfind(b"\n") + 1
    if end < len(data):
        raise Replay  # a torn or in-flight tail: the reader decides, under the lock
    start = prior.offset if prior is not None else 0
    index = {mid: i for i, mid in enumerate(prior.rows.columns["id"])} if prior else {}
    changed: dict[str, _State] = {}
    pos = start
    for line in data[start:end].split(b"\n")[:-1]:
        try:
            record = json.loads(line)
        except ValueError:
            raise Replay from None
        if not isinstance(record, dict):
            raise Replay
        mid = record.get("id")
        if APPEND_KEY in record:
            state = changed.get(mid) if isinstance(mid, str) else None
            if state is None:
                if not isinstance(mid, str) or mid not in index or prior is None:
                    raise Replay
                state = changed[mid] = _earlier(data, prior, index[mid])
            if record.get("session_id") != session_id:
                raise Replay
            try:
                if state.known is None:
                    state.known = appends.lengths(state.folded())
                state.known = appends.check(record, state.known)
            except (appends.NotAnAppend, KeyError, TypeError, AttributeError):
                raise Replay from None
            state.appends.append(record)
            state.append_at.append(pos)
        else:
            if _record_problem(record, session_id):
                raise Replay
            try:
                _usage_tuple(record.get("usage") or {})
                float(record.get("cost") or 0.0)
            except (TypeError, ValueError, AttributeError):
                raise Replay from None
            assert isinstance(mid, str)
            changed[mid] = _State(record, pos)
        pos += len(line) + 1
    if prior is not None:
        columns = {name: list(values) for name, values in prior.rows.columns.items()}
        facts = {name: list(values) for name, values in prior.facts.items()}
        chains = dict(prior.appended)
    else:
        columns = {name: [] for name in ROW_FIELDS}
        facts = {name: [] for name in FACT_FIELDS}
        chains = {}
    roles = columns["role"].copy()
    unfinished = [reason is None for reason in columns["finish_reason"]]
    # First what settling needs, so a session to settle is handed over before any row is built.
    folded: dict[str, dict[str, Any]] = {}
    for mid, state in changed.items():
        record = folded[mid] = state.folded()
        try:
            usage = _usage_tuple(record.get("usage") or {})
        except (TypeError, ValueError, AttributeError):
            raise Replay from None
        _, finished, calls, results = _settle_facts(record)
        last = state.appends[-1] if state.appends else state.record
        values = dict(
            writer=str(last.get(_WRITER_KEY, "")),
            calls=tuple(call_id for call_id, _ in calls),
            results=tuple(results),
            cache_read=usage[2],
            cache_write=usage[3],
            at=state.at,
        )
        i = index.get(mid)
        if i is None:
            i = index[mid] = len(roles)
            roles.append(record["role"])
            unfinished.append(not finished)
            for name, value in values.items():
                facts[name].append(value)
        else:
            roles[i], unfinished[i] = record["role"], not finished
            for name, value in values.items():
                facts[name][i] = value
        if state.append_at:
            chains[i] = state.append_at
        else:
            chains.pop(i, None)
    awaiting = _awaiting(roles, unfinished, facts["calls"], facts["results"], facts["writer"])
    if any_dead(awaiting):
        raise Replay  # a dead writer's reply to settle
    for mid, record in folded.items():
        try:
            row = row_of(located(Message.from_dict(record)))
        except (TypeError, ValueError, KeyError, AttributeError):
            raise Replay from None  # the reader raises it, as it always did
        i = index[mid]
        if i == len(columns["id"]):
            for name, value in zip(ROW_FIELDS, row, strict=True):
                columns[name].append(value)
        else:
            for name, value in zip(ROW_FIELDS, row, strict=True):
                columns[name][i] = value
    crc = zlib.crc32(memoryview(data)[start:end], prior.crc if prior is not None else 0)
    mtime = stat.st_mtime_ns if end == stat.st_size else None
    kept = CachedRows(stat.st_ino, end, mtime, crc, SessionRows(columns), facts, chains)
    kept.awaiting = awaiting
    return kept
