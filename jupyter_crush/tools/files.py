"""File tools confined to a workspace root (:mod:`.workspace`): view, write, edit, glob,
grep, ls."""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.changes import NO_CHANGES, TurnChanges
from ..core.model import ToolSpec
from ..core.output import MAX_OUTPUT_CHARS, clean, redact
from ..core.tools import Tool, ToolContext, ToolResult
from .notebook_file import notebook_lines
from .workspace import GlobMatcher, Workspace, WorkspaceError, skipped_name, walk

VIEW_DEFAULT_LINES = 2000
VIEW_MAX_LINE_CHARS = 2000
GREP_DEFAULT_MATCHES = 100
GREP_MAX_MATCHES = 1000
GREP_MAX_LINE_CHARS = 300
GREP_MAX_FILE_BYTES = 10 * 1024 * 1024
GLOB_DEFAULT_RESULTS = 100
GLOB_MAX_RESULTS = 1000
LS_DEFAULT_ENTRIES = 300
LS_MAX_ENTRIES = 2000
LS_DEFAULT_DEPTH = 3
_BINARY_PROBE = 8192
#: Metadata key of a write's or an edit's result: the SHA-256 of the text the call left in
#: the file, so a replay can check the file still holds it (jupyter_crush.kernel.replay_effects).
WRITTEN_SHA256 = "sha256"


def _error(message: str) -> ToolResult:
    return ToolResult(message, is_error=True)


def _int_arg(args: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = args.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise WorkspaceError(f"'{name}' must be an integer between {lo} and {hi}")
    if value < lo:
        raise WorkspaceError(f"'{name}' must be at least {lo}")
    return min(value, hi)


def _is_binary(path: Path) -> bool:
    with path.open("rb") as fh:
        return b"\x00" in fh.read(_BINARY_PROBE)


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


def _file_lines(path: Path) -> Iterator[str]:
    """The file's lines, each cut at a bounded length: a huge one-line file (minified JSON,
    a data dump) must not be read into memory whole just to show its first characters."""
    cap = VIEW_MAX_LINE_CHARS + 1
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        while line := fh.readline(cap):
            if len(line) == cap and not line.endswith(("\n", "\r")):
                while (rest := fh.readline(cap * 64)) and not rest.endswith(("\n", "\r")):
                    pass  # skip the rest of the overlong line
            yield line


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


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


async def _in_thread(fn: Any, *args: Any) -> Any:
    """Run a blocking walk off the loop; a cancel stops it at its next file."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(fn, *args, stop)
    except asyncio.CancelledError:
        stop.set()
        raise


# -- the tools -----------------------------------------------------------------------


@dataclass
class FileTools:
    workspace: Workspace
    limit: int = MAX_OUTPUT_CHARS

    def tools(self) -> list[Tool]:
        return [
            self.view_tool(),
            self.write_tool(),
            self.edit_tool(),
            self.glob_tool(),
            self.grep_tool(),
            self.ls_tool(),
        ]

    # -- view --

    def view_tool(self) -> Tool:
        return Tool(
            ToolSpec(
                "view",
                "Read a text file in the workspace. Lines are numbered (`  12|text`). "
                f"Shows up to {VIEW_DEFAULT_LINES} lines from `offset` (1-based line number, "
                "default 1); pass offset/limit to page through long files. Long lines are cut. "
                "Notebooks (.ipynb) are shown as cells with their text outputs. "
                "Paths are relative to the workspace root.",
                {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "description": "File to read."},
                        "offset": {"type": "integer", "description": "First line (1-based)."},
                        "limit": {"type": "integer", "description": "How many lines."},
                    },
                    "required": ["path"],
                    "additionalProperties": False,
                },
            ),
            self.view,
        )

    async def view(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        try:
            path = self.workspace.resolve(args.get("path"))
            offset = _int_arg(args, "offset", 1, 1, 10**9)
            count = _int_arg(args, "limit", VIEW_DEFAULT_LINES, 1, VIEW_DEFAULT_LINES)
        except WorkspaceError as exc:
            return _error(f"view: {exc}")
        shown = self.workspace.display(path)
        if not path.exists():
            return _error(f"view: {shown} does not exist; use ls or glob to find the file")
        if path.is_dir():
            return _error(f"view: {shown} is a directory; use ls to list it")
        return await asyncio.to_thread(self._view, path, shown, offset, count)

    def _view(self, path: Path, shown: str, offset: int, count: int) -> ToolResult:
        if _is_binary(path):
            return _error(f"view: {shown} is a binary file ({_size(path.stat().st_size)})")
        header = ""
        lines: Iterator[str]
        rendered = notebook_lines(path) if path.suffix == ".ipynb" else None
        if rendered is not None:
            header = (
                f"[{shown} shown as cells, not raw JSON: line numbers refer to this view; "
                "change notebooks with the python tool (nbformat) or insert_cell]\n"
            )
            lines = iter(rendered)
        else:
            lines = _file_lines(path)
        out: list[str] = []
        used = 0
        last = offset - 1
        more = False
        for number, line in enumerate(lines, start=1):
            if number < offset:
                continue
            if number >= offset + count or used > self.limit:
                more = True
                break
            text = line.rstrip("\r\n")
            if len(text) > VIEW_MAX_LINE_CHARS:
                text = text[:VIEW_MAX_LINE_CHARS] + " ... [line truncated]"
            entry = f"{number:6d}|{text}"
            out.append(entry)
            used += len(entry) + 1
            last = number
        if not out:
            if offset == 1:
                return ToolResult(f"{shown} is empty.")
            return _error(f"view: {shown} has fewer than {offset} lines")
        body = header + redact("\n".join(out))
        if more:
            body += f"\n[more lines follow; call view with offset={last + 1} to continue]"
        return ToolResult(body, metadata={"path": shown, "first_line": offset, "last_line": last})

    # -- write --

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
            return _error(f"write: {exc}")
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

    # -- edit --

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
        if path.is_dir() or _is_binary(path):
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
            return _error(f"edit: {exc}")
        verb = "Created" if old is None else "Edited"
        shown_diff, metadata = self._written(shown, old, new)
        return ToolResult(f"{verb} {shown}.\n{shown_diff}", metadata=metadata)

    # -- glob --

    def glob_tool(self) -> Tool:
        return Tool(
            ToolSpec(
                "glob",
                "Find files by name pattern in the workspace, newest first. `*` matches within "
                "a name, `**` across directories, `{a,b}` alternatives: `*.csv` (any depth), "
                "`data/**/*.parquet`, `*.{py,ipynb}`. Hidden and generated directories "
                "(.git, node_modules, __pycache__, virtualenvs) are skipped.",
                {
                    "type": "object",
                    "properties": {
                        "pattern": {"type": "string", "description": "Glob pattern."},
                        "path": {"type": "string", "description": "Directory to search in."},
                        "limit": {"type": "integer", "description": "Most results to return."},
                    },
                    "required": ["pattern"],
                    "additionalProperties": False,
                },
            ),
            self.glob,
        )

    async def glob(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        pattern = args.get("pattern")
        try:
            if not isinstance(pattern, str) or not pattern.strip():
                raise WorkspaceError("'pattern' must be a non-empty glob like '**/*.py'")
            if pattern.startswith("/") or ".." in pattern.split("/"):
                raise WorkspaceError(
                    "'pattern' must be relative to the search directory, without '..'"
                )
            start = self.workspace.resolve(args.get("path") or ".")
            limit = _int_arg(args, "limit", GLOB_DEFAULT_RESULTS, 1, GLOB_MAX_RESULTS)
        except WorkspaceError as exc:
            return _error(f"glob: {exc}")
        if not start.is_dir():
            return _error(f"glob: {self.workspace.display(start)} is not a directory")
        matcher = GlobMatcher(pattern)
        found: list[Path] = await _in_thread(self._glob, start, matcher)
        if not found:
            return ToolResult(f"No files match {pattern!r}.")
        found.sort(key=_mtime, reverse=True)
        lines = [self.workspace.display(p) for p in found[:limit]]
        if len(found) > limit:
            lines.append(f"[{len(found) - limit} more not shown; narrow the pattern]")
        return ToolResult(clean("\n".join(lines), self.limit), metadata={"count": len(found)})

    def _glob(self, start: Path, matcher: GlobMatcher, stop: threading.Event) -> list[Path]:
        return [
            p
            for p in walk(start, self.workspace, stop)
            if matcher.matches(p.relative_to(start).as_posix())
        ]

    # -- grep --

    def grep_tool(self) -> Tool:
        return Tool(
            ToolSpec(
                "grep",
                "Search file contents in the workspace with a Python regular expression. "
                "Returns matching lines as `path:line: text`, grouped by file. Narrow with "
                "`include` (a file-name glob such as '*.py') and `path` (a directory). "
                "Binary files and generated directories are skipped.",
                {
                    "type": "object",
                    "properties": {
                        "pattern": {"type": "string", "description": "Regular expression."},
                        "path": {"type": "string", "description": "Directory or file."},
                        "include": {"type": "string", "description": "File-name glob filter."},
                        "ignore_case": {"type": "boolean"},
                        "limit": {"type": "integer", "description": "Most matching lines."},
                    },
                    "required": ["pattern"],
                    "additionalProperties": False,
                },
            ),
            self.grep,
        )

    async def grep(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        pattern, include = args.get("pattern"), args.get("include")
        try:
            if not isinstance(pattern, str) or not pattern:
                raise WorkspaceError("'pattern' must be a non-empty regular expression")
            try:
                regex = re.compile(pattern, re.IGNORECASE if args.get("ignore_case") else 0)
            except re.error as exc:
                raise WorkspaceError(f"invalid regular expression {pattern!r}: {exc}") from None
            if include is not None and (not isinstance(include, str) or not include):
                raise WorkspaceError("'include' must be a file-name glob such as '*.py'")
            start = self.workspace.resolve(args.get("path") or ".")
            limit = _int_arg(args, "limit", GREP_DEFAULT_MATCHES, 1, GREP_MAX_MATCHES)
        except WorkspaceError as exc:
            return _error(f"grep: {exc}")
        if not start.exists():
            return _error(f"grep: {self.workspace.display(start)} does not exist")
        matcher = GlobMatcher(include) if include else None
        hits, total = await _in_thread(self._grep, start, regex, matcher, limit)
        if not hits:
            return ToolResult(f"No matches for {pattern!r}.")
        lines: list[str] = []
        current = None
        for shown, number, text in hits:
            if shown != current:
                lines.append(f"{shown}:")
                current = shown
            lines.append(f"  {number}: {text}")
        header = f"{total} matches" if total <= limit else f"{limit} of {total}+ matches shown"
        body = header + "\n" + "\n".join(lines)
        if total > limit:
            body += "\n[more matches not shown; narrow the pattern, include or path]"
        return ToolResult(clean(body, self.limit), metadata={"matches": total})

    def _grep(
        self,
        start: Path,
        regex: re.Pattern[str],
        matcher: GlobMatcher | None,
        limit: int,
        stop: threading.Event,
    ) -> tuple[list[tuple[str, int, str]], int]:
        files = [start] if start.is_file() else walk(start, self.workspace, stop)
        hits: list[tuple[str, int, str]] = []
        total = 0
        for path in files:
            if stop.is_set() or total > limit:
                break
            if matcher is not None and not matcher.matches(path.name):
                continue
            try:
                if path.stat().st_size > GREP_MAX_FILE_BYTES or _is_binary(path):
                    continue
                with path.open(encoding="utf-8", errors="replace") as fh:
                    for number, line in enumerate(fh, start=1):
                        if regex.search(line):
                            total += 1
                            if total > limit:
                                break
                            text = line.rstrip("\r\n")
                            if len(text) > GREP_MAX_LINE_CHARS:
                                text = text[:GREP_MAX_LINE_CHARS] + " ..."
                            hits.append((self.workspace.display(path), number, text))
            except OSError:
                continue  # unreadable or vanished mid-walk: not a match
        return hits, total

    # -- ls --

    def ls_tool(self) -> Tool:
        return Tool(
            ToolSpec(
                "ls",
                "List a directory of the workspace as a tree (directories end with `/`, files "
                f"show their size), {LS_DEFAULT_DEPTH} levels deep by default. Hidden and "
                "generated directories are skipped. `ignore` takes extra name globs to skip.",
                {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "description": "Directory (default: root)."},
                        "depth": {"type": "integer", "description": "Levels to descend."},
                        "ignore": {"type": "array", "items": {"type": "string"}},
                        "limit": {"type": "integer", "description": "Most entries to list."},
                    },
                    "additionalProperties": False,
                },
            ),
            self.ls,
        )

    async def ls(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        ignore = args.get("ignore") or []
        try:
            start = self.workspace.resolve(args.get("path") or ".")
            depth = _int_arg(args, "depth", LS_DEFAULT_DEPTH, 1, 20)
            limit = _int_arg(args, "limit", LS_DEFAULT_ENTRIES, 1, LS_MAX_ENTRIES)
            if not isinstance(ignore, list) or not all(isinstance(g, str) for g in ignore):
                raise WorkspaceError("'ignore' must be a list of name globs such as ['*.log']")
        except WorkspaceError as exc:
            return _error(f"ls: {exc}")
        if not start.is_dir():
            return _error(f"ls: {self.workspace.display(start)} is not a directory")
        matchers = [GlobMatcher(g) for g in ignore]
        lines, truncated = await _in_thread(self._ls, start, depth, limit, matchers)
        body = "\n".join([f"{start}/", *lines])
        if truncated:
            body += f"\n[listing stopped at {limit} entries; list a subdirectory or lower depth]"
        return ToolResult(clean(body, self.limit), metadata={"entries": len(lines)})

    def _ls(
        self,
        start: Path,
        depth: int,
        limit: int,
        matchers: list[GlobMatcher],
        stop: threading.Event,
    ) -> tuple[list[str], bool]:
        lines: list[str] = []

        def visit(directory: Path, level: int) -> bool:
            try:
                entries = sorted(os.scandir(directory), key=lambda e: (not e.is_dir(), e.name))
            except OSError as exc:
                lines.append(f"{'  ' * level}[unreadable: {exc.strerror}]")
                return True
            for entry in entries:
                if stop.is_set():
                    return False
                if skipped_name(entry.name) or any(m.matches(entry.name) for m in matchers):
                    continue
                if len(lines) >= limit:
                    return False
                indent = "  " * level
                path = Path(entry.path)
                if entry.is_symlink() and not self.workspace.inside(path):
                    lines.append(f"{indent}{entry.name} -> (outside the workspace)")
                elif entry.is_dir(follow_symlinks=False):
                    lines.append(f"{indent}{entry.name}/")
                    if level < depth and not visit(path, level + 1):
                        return False
                else:
                    try:
                        size = _size(entry.stat().st_size)
                    except OSError:
                        size = "?"
                    lines.append(f"{indent}{entry.name} ({size})")
            return True

        complete = visit(start, 1)
        return lines, not complete and not stop.is_set()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
