"""The directory the file tools may touch, its walks, and the globs they match.

Every path the model passes goes through :meth:`Workspace.resolve`, which
resolves symlinks and ``..`` first and then refuses anything that does not land
inside the root. Directory walks never follow symlinked directories and skip
symlinked files that point outside, so a link cannot widen the workspace
either. (A link created between the check and the use — by another process —
is outside what this guards against: the tools confine the model, not the OS.)

Walks skip hidden entries and bulky generated directories (``.git``,
``node_modules``, ``__pycache__``, virtualenvs, checkpoints, the transcript
store) so results stay about the user's own files.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        "__pycache__",
        ".ipynb_checkpoints",
        ".venv",
        "venv",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".crush",
    }
)


class WorkspaceError(ValueError):
    """A path argument the tools refuse; the message says what to do instead."""


@dataclass(frozen=True)
class Workspace:
    """The directory the file tools may touch (default: the notebook's directory)."""

    root: Path

    def __post_init__(self) -> None:
        real = Path(os.path.realpath(self.root))
        if not real.is_dir():
            raise WorkspaceError(f"workspace root {self.root} is not a directory")
        object.__setattr__(self, "root", real)

    def resolve(self, path: Any, *, argument: str = "path") -> Path:
        """The real path of ``path`` (relative to the root, or absolute inside it).

        The one confinement check of every tool that takes a path: anything else a path
        argument could name is refused with a :class:`WorkspaceError` naming the workspace.
        """
        if not isinstance(path, str) or not path.strip():
            raise WorkspaceError(f"'{argument}' must be a non-empty path {self._inside}")
        if "\x00" in path:
            raise WorkspaceError(
                f"'{argument}' contains a NUL character; give a path {self._inside}"
            )
        try:
            candidate = Path(path).expanduser() if path.startswith("~") else Path(path)
            if not candidate.is_absolute():
                candidate = self.root / candidate
            real = Path(os.path.realpath(candidate))
        except (RuntimeError, UnicodeError) as error:  # no home directory; a lone surrogate
            raise WorkspaceError(
                f"{path!r} is not a usable path ({error}); give a path {self._inside}"
            ) from None
        if real != self.root and not real.is_relative_to(self.root):
            how = "resolves (through a symlink or '..') to" if real != candidate else "is"
            raise WorkspaceError(
                f"{path!r} {how} {real}, outside the workspace {self.root}, the one folder "
                "these tools may use; give a path inside it (relative paths start there)"
            )
        return real

    @property
    def _inside(self) -> str:
        return f"inside the workspace {self.root} (relative paths start there)"

    def display(self, path: Path) -> str:
        """A path as the model should write it back: relative to the root."""
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return str(path)
        return rel.as_posix() or "."

    def inside(self, path: Path) -> bool:
        real = Path(os.path.realpath(path))
        return real == self.root or real.is_relative_to(self.root)


def walk(start: Path, workspace: Workspace, stop: threading.Event | None = None) -> Iterator[Path]:
    """Files under ``start`` in sorted order, without leaving the workspace."""
    for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
        if stop is not None and stop.is_set():
            return
        dirnames[:] = sorted(d for d in dirnames if not skipped_name(d))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath, name)
            if path.is_symlink() and not workspace.inside(path):
                continue
            yield path


def skipped_name(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED_DIRS


# -- glob patterns -------------------------------------------------------------------


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob with ``**``, ``*``, ``?``, ``[...]`` and ``{a,b}`` to a regex."""
    return re.compile(_translate(pattern) + r"\Z")


def _translate(pattern: str) -> str:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        elif pattern[i] == "{" and (end := _closing_brace(pattern, i)) != -1:
            options = _split_top_level(pattern[i + 1 : end])
            out.append("(?:" + "|".join(_translate(o) for o in options) + ")")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def _closing_brace(pattern: str, start: int) -> int:
    depth = 0
    for j in range(start, len(pattern)):
        if pattern[j] == "{":
            depth += 1
        elif pattern[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return -1


def _split_top_level(body: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in body:
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += ch == "{"
        depth -= ch == "}"
        current.append(ch)
    parts.append("".join(current))
    return parts


class GlobMatcher:
    """A pattern without ``/`` matches file names at any depth; with ``/``, relative paths."""

    def __init__(self, pattern: str) -> None:
        self.by_name = "/" not in pattern
        self.regex = glob_regex(pattern.removeprefix("./"))

    def matches(self, relative: str) -> bool:
        target = relative.rsplit("/", 1)[-1] if self.by_name else relative
        return self.regex.match(target) is not None


# -- helpers -------------------------------------------------------------------------
