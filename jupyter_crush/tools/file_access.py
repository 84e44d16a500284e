"""What the file tools share (:mod:`.file_reading`, :mod:`.file_writing`): the workspace they
act in and how much of a result they show, their error result, and the probe that tells a
binary file from text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.output import MAX_OUTPUT_CHARS
from ..core.tools import ToolResult
from .workspace import Workspace

_BINARY_PROBE = 8192


@dataclass
class FileAccess:
    """The workspace the file tools confine themselves to (:mod:`.workspace`), and the most
    characters of a result they show."""

    workspace: Workspace
    limit: int = MAX_OUTPUT_CHARS


def tool_error(message: str) -> ToolResult:
    return ToolResult(message, is_error=True)


def is_binary(path: Path) -> bool:
    with path.open("rb") as fh:
        return b"\x00" in fh.read(_BINARY_PROBE)
