"""What a request carries besides the prompt: context files, and ``%crush context``.

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

from ..commands.registry import command
from ..core.output import truncate
from ..core.tokens import estimate_chars, message_chars
from ..providers.windows import model_window

if TYPE_CHECKING:
    from .crush import Crush

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


def describe_next_request(crush: Crush) -> str:
    """What the next prompt of the current session would send, with sizes."""
    import json

    from ..agent.compaction import fallback_request
    from .fix import last_error

    model = crush.resolve_model(None)
    agent = crush.agent
    tool_list = list(agent.tools.values())
    names = [t.name for t in tool_list]
    prompt = build_system_prompt(crush.config.system_prompt, names, crush.shell)
    schema_chars = sum(
        len(json.dumps({"name": t.name, "description": t.spec.description, **t.spec.parameters}))
        for t in tool_list
    )
    lines = [f"Model: {model.provider}:{model.name}"]
    session = None
    if crush.current_session_id is not None:
        session = crush.store.get_session(crush.current_session_id)
    history_chars = sent = 0
    left_out = 0
    if session is not None:
        messages = crush.store.list_messages(session.id)
        view, request = fallback_request(messages, crush.config.history_chars)
        history_chars = sum(message_chars(m) for m in view)
        sent = sum(message_chars(m) for m in request)
        # A cut history has a note saying how much was left out.
        left_out = 0 if request is view else len(view) - len(request) + 1
        lines.append(
            f"Session: {session.title or '(untitled)'} ({session.id[:8]}), {len(messages)} messages"
        )
    else:
        lines.append("Session: none yet (the next %%crush cell starts one)")
    system_chars = len(prompt.text)
    lines.append(
        f"System prompt: {system_chars:,} chars (~{estimate_chars(system_chars):,} tokens)"
    )
    lines += [f"  {source}" for source in prompt.sources]
    lines += [f"  {problem}" for problem in prompt.problems]
    lines.append(
        f"Tools ({len(tool_list)}): {', '.join(t.name for t in tool_list) or 'none'}; "
        f"{schema_chars:,} chars (~{estimate_chars(schema_chars):,} tokens)"
    )
    error = last_error(crush.shell)
    lines.append(
        "Attachments: none"
        + (
            f" (%crush fix would attach {error.summary()!r} from {_where(error.execution_count)})"
            if error is not None
            else ""
        )
    )
    history_line = f"History: {sent:,} chars (~{estimate_chars(sent):,} tokens) sent"
    if left_out:
        history_line += (
            f"; {left_out} older messages ({history_chars - sent:,} chars) left out "
            f"(CrushConfig.history_chars = {crush.config.history_chars:,})"
        )
    lines.append(history_line)
    total = estimate_chars(system_chars) + estimate_chars(schema_chars) + estimate_chars(sent)
    limits = model_window(model, crush.config.context_window or None)
    window = limits.window if limits else None
    if window:
        lines.append(
            f"Total: ~{total:,} tokens before the prompt, {total / window:.1%} of the "
            f"model's {window:,}-token window"
        )
    else:
        lines.append(f"Total: ~{total:,} tokens before the prompt (model's window unknown)")
    return "\n".join(lines)


def _where(execution_count: int | None) -> str:
    return f"In [{execution_count}]" if execution_count is not None else "an earlier cell"


@command("context", "%crush context", "what the next request would carry, with sizes")
def context_command(crush: Crush, args: list[str]) -> None:
    from IPython.core.error import UsageError

    if args:
        raise UsageError("%crush context takes no arguments")
    print(describe_next_request(crush))
