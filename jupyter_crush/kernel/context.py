"""What a request carries besides the prompt: the system prompt and the context files
(``%crush context`` shows it all: :mod:`jupyter_crush.commands.context`).

Context files are read as Crush reads them: ``AGENTS.md``, ``CRUSH.md`` and ``CLAUDE.md``
(each followed by its ``.local`` variant) in the notebook's folder and every folder above
it up to the workspace root (the nearest folder holding ``.git``; without one, the
notebook's folder alone). They join the system prompt nearest folder first, each under its
path. A file that is not UTF-8 is left out with a one-line note printed in the cell.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.output import truncate

if TYPE_CHECKING:
    pass

CONTEXT_FILE_NAMES = (
    "AGENTS.md",
    "AGENTS.local.md",
    "CRUSH.md",
    "CRUSH.local.md",
    "CLAUDE.md",
    "CLAUDE.local.md",
)
#: One context file's share of the system prompt, in characters (~10k tokens).
MAX_CONTEXT_FILE_CHARS = 40_000


@dataclass
class SystemPrompt:
    text: str
    sources: list[str]  # "built-in prompt" / "CrushConfig.system_prompt", then file paths
    problems: list[str] = field(default_factory=list)  # one line each: what to do


def notebook_folder(shell: Any) -> Path:
    """The notebook's folder: its file's parent when the kernel knows it, else the cwd."""
    from ..tools.notebook import kernel_notebook_path

    path = kernel_notebook_path(shell)
    return path.parent if path is not None else Path.cwd()


def workspace_root(start: Path) -> Path:
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return start


def context_files(
    start: Path, root: Path | None = None
) -> tuple[list[tuple[Path, str]], list[str]]:
    """(path, text) of the context files from ``start`` up to ``root``, and the problems."""
    root = workspace_root(start) if root is None else root
    folders = [start]
    for parent in start.parents:
        if not parent.is_relative_to(root):
            break
        folders.append(parent)
    found, problems = [], []
    for folder in folders:
        for name in CONTEXT_FILE_NAMES:
            path = folder / name
            try:
                data = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue
            except OSError as error:
                problems.append(f"crush: cannot read context file {path}: {error.strerror}")
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as error:
                problems.append(
                    f"crush: context file {path} is not UTF-8 (byte {error.start}); "
                    "it was left out: save it as UTF-8"
                )
                continue
            found.append((path, truncate(text, MAX_CONTEXT_FILE_CHARS, what="context file")))
    return found, problems


def build_system_prompt(configured: str, tool_names: Iterable[str], shell: Any) -> SystemPrompt:
    """The system prompt: the configured or built-in one, then the context files."""
    from .prompt import notebook_prompt

    folder = notebook_folder(shell)
    base = configured or notebook_prompt(tool_names, cwd=str(Path.cwd()))
    sources = ["CrushConfig.system_prompt" if configured else "built-in prompt"]
    files, problems = context_files(folder)
    if not files:
        return SystemPrompt(base, sources, problems)
    blocks = [base, "\nProject instructions from context files (nearest folder first):"]
    for path, text in files:
        blocks.append(f'<context_file path="{path}">\n{text.strip()}\n</context_file>')
        sources.append(str(path))
    return SystemPrompt("\n".join(blocks), sources, problems)


# -- %crush context --------------------------------------------------------------------------
