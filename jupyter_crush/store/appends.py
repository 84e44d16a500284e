"""Append records: a streamed message written as only what it gained since its last record.

A message being streamed grows by appends: text, reasoning and tool call arguments get
longer, parts are added. Writing its whole record on every coalesced write would cost
O(length) per write, so a token's cost would grow with the answer. Instead, when a message's
new state only appends to the state last written, the journal gets an *append record*::

    {"id": ..., "session_id": ..., "append": [OP, ...], "updated_at": ..., "_writer": ...}

where each OP is ``[part, field, offset, text]`` (``text`` goes at ``offset`` of the part's
``field``, which must be that long) or ``[part, {part record}]`` (a new part, at the end).
A reader applies it to the message's state so far (:func:`fold`); the offsets make a record
that does not continue that state detectable as corruption. Any other change (usage, a
finish, an edit) is written as a whole record, which supersedes what came before; so are
forced writes. Compaction writes each message's folded state as one whole record.

Stores of format version 1 hold whole records only. A store writes append records once it
is version 2 (:mod:`jupyter_crush.store.opening`), which readers that predate append
records refuse to open with a line saying to upgrade.
"""

from __future__ import annotations

import json
from typing import Any

#: Record key of an append record's operations.
APPEND_KEY = "append"
#: Part fields that grow while a message streams, by part type.
GROWING = {
    "text": ("text",),
    "reasoning": ("text", "signature", "redacted", "encrypted"),
    "tool_call": ("input",),
}
#: Keys of a whole record an append record sets besides the parts.
_STAMPS = ("updated_at", "_writer")


class NotAnAppend(ValueError):
    """An append record that does not continue the message's state; says why."""


def appended(old: dict[str, Any], new: dict[str, Any]) -> list[list[Any]] | None:
    """The operations taking record ``old`` to ``new`` when ``new`` only appends to it (an
    empty list when only its stamps differ); None for any other change."""
    if old.keys() != new.keys():
        return None
    for key, value in new.items():
        if key != "parts" and key not in _STAMPS and value != old[key]:
            return None
    before, after = old["parts"], new["parts"]
    if len(after) < len(before):
        return None
    ops: list[list[Any]] = []
    for index, (was, now) in enumerate(zip(before, after, strict=False)):
        if was.keys() - now.keys() or was.get("type") != now.get("type"):
            return None
        growing = GROWING.get(now.get("type"), ())
        for key, value in now.items():
            prior = was.get(key)
            if value is prior or value == prior:
                continue
            if key not in growing or not isinstance(value, str):
                return None
            prior = prior or ""
            if not isinstance(prior, str) or not value.startswith(prior):
                return None
            ops.append([index, key, len(prior), value[len(prior) :]])
    ops += [[index, after[index]] for index in range(len(before), len(after))]
    return ops


def append_record(latest: dict[str, Any], ops: list[list[Any]]) -> dict[str, Any]:
    """The append record applying ``ops``, stamped like ``latest``, the state they reach."""
    record = {"id": latest["id"], "session_id": latest["session_id"], APPEND_KEY: ops}
    for key in _STAMPS:
        if key in latest:
            record[key] = latest[key]
    return record


def growth(ops: list[list[Any]]) -> int:
    """About how many bytes ``ops`` add to the message's whole record: what a compacted
    journal holds of them, without the append record's own keys."""
    return sum(len(op[3]) if len(op) == 4 else len(json.dumps(op[1])) for op in ops)


def lengths(record: dict[str, Any]) -> dict[Any, int]:
    """What an append to ``record`` must continue: its part count (key None) and the length
    of each growing field, by (part, field)."""
    found: dict[Any, int] = {None: len(record["parts"])}
    for index, part in enumerate(record["parts"]):
        for key in GROWING.get(part.get("type"), ()):
            found[index, key] = len(part.get(key) or "")
    return found


def check(append: dict[str, Any], known: dict[Any, int]) -> dict[Any, int]:
    """The lengths after ``append`` applies to a state of lengths ``known``; raises
    :class:`NotAnAppend` if it does not continue that state."""
    ops = append.get(APPEND_KEY)
    if not isinstance(ops, list):
        raise NotAnAppend("an append record without a list of operations")
    after = dict(known)
    for op in ops:
        if isinstance(op, list) and len(op) == 2 and isinstance(op[1], dict):
            index, part = op
            if index != after[None] or not isinstance(part.get("type"), str):
                raise NotAnAppend(f"an append record adding part {index!r} out of order")
            after[None] += 1
            for key in GROWING.get(part["type"], ()):
                after[index, key] = len(part.get(key) or "")
        elif isinstance(op, list) and len(op) == 4 and isinstance(op[3], str):
            index, key, offset, text = op
            if after.get((index, key)) != offset:
                raise NotAnAppend(
                    f"an append record continuing {key!r} of part {index!r} at {offset!r}, "
                    "where the message has another length"
                )
            after[index, key] += len(text)
        else:
            raise NotAnAppend(f"an append record with a malformed operation {op!r}")
    for key in _STAMPS:
        if key in append and not isinstance(append[key], str | float | int):
            raise NotAnAppend(f"an append record with a malformed {key!r}")
    return after


def fold(record: dict[str, Any], appends: list[dict[str, Any]]) -> dict[str, Any]:
    """``record`` with ``appends`` (checked, in order) applied: each field's pieces joined
    once, so folding many appends costs the size of the result."""
    parts = [dict(part) for part in record["parts"]]
    pieces: dict[tuple[int, str], list[str]] = {}
    folded = dict(record, parts=parts)
    for append in appends:
        for op in append[APPEND_KEY]:
            if len(op) == 2:
                parts.append(dict(op[1]))
            else:
                index, key, _, text = op
                pieces.setdefault((index, key), [parts[index].get(key) or ""]).append(text)
        for key in _STAMPS:
            if key in append:
                folded[key] = append[key]
    for (index, key), texts in pieces.items():
        parts[index][key] = "".join(texts)
    return folded
