"""Replaying recorded calls whose effects reach outside the kernel.

A replay never runs such a call again (``bash``, ``write``, ``edit``, an MCP tool, a
recording's own tools): its recorded result answers it, and the replay's status line says
which calls were answered so. Where the effect can be checked it is: ``write`` and
``edit`` keep the SHA-256 of the text they left in the file with their result
(:data:`~jupyter_crush.tools.file_writing.WRITTEN_SHA256`), and the replay goes on only while the
file still holds what the recorded turn left in it. A file changed or removed since stops
the replay before that call, naming the file. ``replay = "strict"`` stops before every
such call, as replays did before they used recorded results.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..core.message import ToolCallPart, ToolResultPart
from ..core.tools import Tool
from ..tools.file_writing import WRITTEN_SHA256
from ..tools.workspace import Workspace, WorkspaceError

#: Tools whose recorded result is checked against the file it names before it is used.
FILE_WRITERS = frozenset({"write", "edit"})

FRESH = "ask afresh with %%crush --fresh"


def workspace_of(tools: Mapping[str, Tool]) -> Workspace:
    """The workspace the agent's file tools write in: the one their methods are bound to
    (``default_tools`` makes it from the kernel's directory), else the kernel's directory."""
    for name in FILE_WRITERS:
        tool = tools.get(name)
        workspace = getattr(getattr(tool and tool.run, "__self__", None), "workspace", None)
        if isinstance(workspace, Workspace):
            return workspace
    return Workspace(Path.cwd())


def file_sha256(path: Path) -> str | None:
    """The SHA-256 of the file's bytes; None when there is no such file to read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return digest.hexdigest()


@dataclass
class RecordedEffects:
    """A recorded turn's calls with effects outside the kernel, as a replay meets them."""

    calls: list[ToolCallPart]  # every recorded call, in the order they were made
    results: Mapping[str, ToolResultPart]  # by call id
    workspace: Workspace
    strict: bool = False

    def stop_before(self, calls: Iterable[ToolCallPart]) -> str | None:
        """Why the replay must stop before ``calls`` (one step's calls with effects outside
        the kernel), or None: their recorded results may answer them."""
        for call in calls:
            if self.strict:
                return (
                    f"Replay stopped before the recorded {call.name} call: strict replay does "
                    "not use recorded results of tools with effects outside the kernel; "
                    f"{FRESH}, or %crush replay on"
                )
            changed = self._changed_file(call)
            if changed is not None:
                return f"Replay stopped before the recorded {call.name} call: {changed}; {FRESH}"
        return None

    def label(self, call_id: str) -> str:
        """How the status line names a call answered from the record: its tool, and the
        file of a write or an edit."""
        call = next(c for c in self.calls if c.id == call_id)
        path = self._written_path(call)
        return f"{call.name} {path}" if path else call.name

    def _written_path(self, call: ToolCallPart) -> str | None:
        """The file a recorded write or edit changed (None: another tool, or a call that
        failed and so changed nothing)."""
        result = self.results.get(call.id)
        if call.name not in FILE_WRITERS or result is None or result.is_error:
            return None
        path = result.metadata.get("path")
        return path if isinstance(path, str) else None

    def _changed_file(self, call: ToolCallPart) -> str | None:
        """What is wrong with the file ``call`` wrote, if anything. It must hold what the
        turn left in it: the hash of the turn's last write or edit of that file."""
        path = self._written_path(call)
        if path is None:
            return None
        expected = None
        for other in self.calls:
            if self._written_path(other) == path:
                expected = self.results[other.id].metadata.get(WRITTEN_SHA256)
        if not isinstance(expected, str):
            return f"its record keeps no hash of {path} to check the file against"
        try:
            found = file_sha256(self.workspace.resolve(path))
        except WorkspaceError:
            return f"{path} is outside the workspace {self.workspace.root}"
        except OSError as error:
            return f"{path} cannot be read ({error.strerror or error})"
        if found is None:
            return f"{path} no longer exists"
        if found != expected:
            return f"{path} changed since the recorded turn wrote it"
        return None


def not_run_note(labels: Iterable[str]) -> str:
    """The status line's words for calls answered from the record: "recorded result used,
    not run again: weather", "recorded results used, not run again: bash (2 calls), write a.md"."""
    counts = Counter(labels)
    if not counts:
        return ""
    named = ", ".join(f"{label} ({n} calls)" if n > 1 else label for label, n in counts.items())
    plural = "results" if sum(counts.values()) > 1 else "result"
    return f"recorded {plural} used, not run again: {named}"
