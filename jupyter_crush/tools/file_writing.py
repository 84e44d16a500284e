"""The file tools that change the workspace: write and edit, each shown to the user as a diff
first, each replacing its file atomically and telling the turn's change log what it held."""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from ..core.changes import NO_CHANGES, TurnChanges
from ..core.model import ToolSpec
from ..core.output import clean
from ..core.tools import Tool, ToolContext, ToolResult
from .file_access import FileAccess, is_binary, tool_error
from .workspace import WorkspaceError

#: Metadata key of a write's or an edit's result: the SHA-256 of the text the call left in
#: the file, so a replay can check the file still holds it (jupyter_crush.kernel.replay_effects).
WRITTEN_SHA256 = "sha256"


def _read_text(path: Path) -> str:
    # newline="" keeps \r\n as written, so edits and diffs round-trip exactly.
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        return fh.read()


def _write_text(path: Path, content: str, changes: TurnChanges = NO_CHANGES) -> None:
    """Replace ``path`` atomically (a crash never leaves half a file), keeping its mode;
    ``changes`` (the turn's change log) gets what it held first, for undo."""
    try:
        previous: bytes | None = path.read_bytes()
    except FileNotFoundError:
        previous = None
    changes.file_changed(str(path), previous)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(content)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def text_sha256(text: str) -> str:
    """The SHA-256 of ``text`` as :func:`_write_text` puts it on disk (UTF-8, newlines kept)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def unified_diff(display: str, old: str | None, new: str) -> str:
    before = [] if old is None else old.splitlines(keepends=True)
    after = new.splitlines(keepends=True)
    lines = difflib.unified_diff(
        before,
        after,
        fromfile="/dev/null" if old is None else f"a/{display}",
        tofile=f"b/{display}",
    )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )


class FileWritingTools(FileAccess):
    """write and edit in the workspace."""

    def write_tool(self) -> Tool:
        return Tool(
            ToolSpec(
                "write",
                "Create or overwrite a file in the workspace with `content` (parent "
                "directories are created). Prefer `edit` for changing part of an existing "
                "file. The user sees the diff before it is written.",
                {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "description": "File to write."},
                        "content": {"type": "string", "description": "The complete new text."},
                    },
                    "required": ["path", "content"],
                    "additionalProperties": False,
                },
            ),
            self.write,
            changes_state=True,
            summarize=self._write_summary,
        )

    def _write_plan(self, args: dict[str, Any]) -> tuple[Path, str, str | None, str]:
        path = self.workspace.resolve(args.get("path"))
        content = args.get("content")
        if not isinstance(content, str):
            raise WorkspaceError("'content' must be a string (the complete file text)")
        if path.is_dir():
            raise WorkspaceError(f"{self.workspace.display(path)} is a directory")
        old = _read_text(path) if path.exists() else None
        return path, content, old, self.workspace.display(path)

    def _write_summary(self, args: dict[str, Any]) -> str:
        try:
            _, content, old, shown = self._write_plan(args)
        except (WorkspaceError, OSError) as exc:
            return f"write (will fail): {exc}"
        diff = unified_diff(shown, old, content)
        return diff or f"{shown}: unchanged"

    async def write(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        try:
            path, content, old, shown = self._write_plan(args)
            await asyncio.to_thread(_write_text, path, content, ctx.changes)
        except (WorkspaceError, OSError) as exc:
            return tool_error(f"write: {exc}")
        verb = "Created" if old is None else "Wrote"
        head = f"{verb} {shown} ({len(content.splitlines())} lines)."
        shown_diff, metadata = self._written(shown, old, content)
        return ToolResult(
            head + ("\n" + shown_diff if shown_diff else " No change."), metadata=metadata
        )

    def _written(self, shown: str, old: str | None, new: str) -> tuple[str, dict[str, Any]]:
        """A write's or an edit's diff as shown, and its result's metadata (path, that diff,
        the hash of what the file now holds)."""
        diff = clean(unified_diff(shown, old, new), self.limit, what="diff")
        return diff, {"path": shown, "diff": diff, WRITTEN_SHA256: text_sha256(new)}

    def edit_tool(self) -> Tool:
        return Tool(
            ToolSpec(
                "edit",
                "Replace exact text in a file: `old_string` must match the file exactly "
                "(whitespace and indentation included; copy it from `view` without the line "
                "numbers) and exactly once, unless `replace_all` is true. Include enough "
                "surrounding lines to make it unique. An empty `old_string` creates a new "
                "file containing `new_string`. The user sees the diff before it is applied.",
                {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "description": "File to edit."},
                        "old_string": {"type": "string", "description": "Exact text to find."},
                        "new_string": {"type": "string", "description": "Replacement text."},
                        "replace_all": {
                            "type": "boolean",
                            "description": "Replace every occurrence (default false).",
                        },
                    },
                    "required": ["path", "old_string", "new_string"],
                    "additionalProperties": False,
                },
            ),
            self.edit,
            changes_state=True,
            summarize=self._edit_summary,
        )

    def _edit_plan(self, args: dict[str, Any]) -> tuple[Path, str | None, str, str]:
        """(path, old text or None for a new file, new text, display path)."""
        path = self.workspace.resolve(args.get("path"))
        shown = self.workspace.display(path)
        old_string, new_string = args.get("old_string"), args.get("new_string")
        replace_all = args.get("replace_all", False)
        if not isinstance(old_string, str) or not isinstance(new_string, str):
            raise WorkspaceError("'old_string' and 'new_string' must both be strings")
        if not isinstance(replace_all, bool):
            raise WorkspaceError("'replace_all' must be true or false")
        if old_string == new_string:
            raise WorkspaceError("'old_string' and 'new_string' are identical; nothing to do")
        if old_string == "":
            if path.exists():
                raise WorkspaceError(
                    f"{shown} already exists; an empty old_string only creates new files "
                    "(use write to replace a whole file)"
                )
            return path, None, new_string, shown
        if not path.exists():
            raise WorkspaceError(f"{shown} does not exist; use glob to find the file")
        if path.is_dir() or is_binary(path):
            raise WorkspaceError(f"{shown} is not a text file")
        text = _read_text(path)
        count = text.count(old_string)
        if count == 0 and "\r\n" in text and "\n" in old_string:
            # The model writes \n; a Windows-style file stores \r\n.
            old_string = old_string.replace("\r\n", "\n").replace("\n", "\r\n")
            new_string = new_string.replace("\r\n", "\n").replace("\n", "\r\n")
            count = text.count(old_string)
        if count == 0:
            raise WorkspaceError(
                f"old_string was not found in {shown}; view the file and copy the text "
                "exactly, including whitespace"
            )
        if count > 1 and not replace_all:
            raise WorkspaceError(
                f"old_string matches {count} times in {shown}; add surrounding lines to make "
                "it unique, or set replace_all to true"
            )
        return path, text, text.replace(old_string, new_string), shown

    def _edit_summary(self, args: dict[str, Any]) -> str:
        try:
            _, old, new, shown = self._edit_plan(args)
        except (WorkspaceError, OSError) as exc:
            return f"edit (will fail): {exc}"
        return unified_diff(shown, old, new)

    async def edit(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        try:
            path, old, new, shown = await asyncio.to_thread(self._edit_plan, args)
            ctx.stop_if_covered()  # a Stop while the file was read: it is not written
            await asyncio.to_thread(_write_text, path, new, ctx.changes)
        except (WorkspaceError, OSError) as exc:
            return tool_error(f"edit: {exc}")
        verb = "Created" if old is None else "Edited"
        shown_diff, metadata = self._written(shown, old, new)
        return ToolResult(f"{verb} {shown}.\n{shown_diff}", metadata=metadata)
