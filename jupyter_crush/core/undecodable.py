"""Undecodable text: kept whole in the transcript, marked visibly where it must be UTF-8.

Text read with ``errors="surrogateescape"`` (files of unknown encoding, ``os.environ``,
subprocess output) holds lone surrogates, which UTF-8 cannot encode. The transcript store
keeps them losslessly (as JSON ``\\udcXX`` escapes, read back as the same string); a
provider request, which must be UTF-8 JSON, gets each such character replaced by a visible
mark: ``\\xNN`` for a byte that ``surrogateescape`` kept, U+FFFD for any other lone surrogate.
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def _mark(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else "\ufffd"


def marked(text: str) -> str:
    """``text`` with its lone surrogates replaced by visible marks (unchanged if none)."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub(_mark, text)


def encodable(value: Any) -> Any:
    """``value`` (nested dicts, lists, tuples, strings) with every string :func:`marked`."""
    if isinstance(value, str):
        return marked(value)
    if isinstance(value, dict):
        return {key: encodable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(encodable(item) for item in value)
    return value
