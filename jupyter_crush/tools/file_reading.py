"""The file tools that read the workspace: view, glob, grep and ls."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.model import ToolSpec
from ..core.output import clean, format_size, redact
from ..core.tools import Tool, ToolContext, ToolResult
from .file_access import FileAccess, is_binary, tool_error
from .notebook_file import notebook_lines
from .workspace import GlobMatcher, WorkspaceError, skipped_name, walk

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


def _int_arg(args: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = args.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise WorkspaceError(f"'{name}' must be an integer between {lo} and {hi}")
    if value < lo:
        raise WorkspaceError(f"'{name}' must be at least {lo}")
    return min(value, hi)


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


async def _in_thread(fn: Any, *args: Any) -> Any:
    """Run a blocking walk off the loop; a cancel stops it at its next file."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(fn, *args, stop)
    except asyncio.CancelledError:
        stop.set()
        raise


class FileReadingTools(FileAccess):
    """view, glob, grep and ls over the workspace."""

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
            return tool_error(f"view: {exc}")
        shown = self.workspace.display(path)
        if not path.exists():
            return tool_error(f"view: {shown} does not exist; use ls or glob to find the file")
        if path.is_dir():
            return tool_error(f"view: {shown} is a directory; use ls to list it")
        return await asyncio.to_thread(self._view, path, shown, offset, count)

    def _view(self, path: Path, shown: str, offset: int, count: int) -> ToolResult:
        if is_binary(path):
            return tool_error(
                f"view: {shown} is a binary file ({format_size(path.stat().st_size)})"
            )
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
            return tool_error(f"view: {shown} has fewer than {offset} lines")
        body = header + redact("\n".join(out))
        if more:
            body += f"\n[more lines follow; call view with offset={last + 1} to continue]"
        return ToolResult(body, metadata={"path": shown, "first_line": offset, "last_line": last})

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
            return tool_error(f"glob: {exc}")
        if not start.is_dir():
            return tool_error(f"glob: {self.workspace.display(start)} is not a directory")
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
            return tool_error(f"grep: {exc}")
        if not start.exists():
            return tool_error(f"grep: {self.workspace.display(start)} does not exist")
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
                if path.stat().st_size > GREP_MAX_FILE_BYTES or is_binary(path):
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
            return tool_error(f"ls: {exc}")
        if not start.is_dir():
            return tool_error(f"ls: {self.workspace.display(start)} is not a directory")
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
                        size = format_size(entry.stat().st_size)
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
