"""Line commands of ``%crush`` contributed by other modules.

A capability that adds a command (``%crush fix``, ``%crush mcp``, …) registers it here from
its own module instead of growing ``magics.py``::

    @command("fix", "%crush fix [INSTRUCTION]", "ask the agent to fix the last error")
    def fix(crush: Crush, args: list[str]) -> None: ...

``magics.py`` imports the modules listed in ``COMMAND_MODULES`` when the extension loads,
so their commands exist before the first ``%crush`` line runs. The built-in commands
(:mod:`jupyter_crush.session_commands`, ``help``) are registered with ``builtin=True``:
``%crush?`` lists them, so ``magics.py`` imports them itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .crush import Crush

#: Modules whose import registers commands; each one adds itself here.
COMMAND_MODULES: tuple[str, ...] = (
    ".fix",
    ".context",
    ".mcp_tools",
    ".rerun",
    ".compaction",
    ".titles",
    ".trust_command",
)


@dataclass(frozen=True)
class Command:
    name: str
    usage: str  # e.g. "%crush fix [INSTRUCTION]"
    summary: str  # one line, shown beside the usage in %crush help
    run: Callable[[Crush, list[str]], Any]
    #: Listed first, in the order registered, and in ``%crush?`` too (the magic's own).
    builtin: bool = False


#: Registered commands by name. Written at import time only, so no lock is needed.
COMMANDS: dict[str, Command] = {}


def command(
    name: str, usage: str, summary: str, *, builtin: bool = False
) -> Callable[[Callable[..., Any]], Any]:
    """Register the decorated ``run(crush, args)`` as ``%crush NAME``."""

    def register(run: Callable[[Crush, list[str]], Any]) -> Callable[[Crush, list[str]], Any]:
        if name in COMMANDS:
            raise ValueError(f"%crush {name} is registered twice")
        COMMANDS[name] = Command(name, usage, summary, run, builtin)
        return run

    return register


def load_commands() -> None:
    for module in COMMAND_MODULES:
        importlib.import_module(module, __package__)


def usage_lines(*, builtin: bool, width: int = 29) -> str:
    """Help lines of the built-in commands (in the order registered) or of the others (by
    name), the summaries aligned at ``width`` unless a usage is longer."""
    commands = [c for c in COMMANDS.values() if c.builtin == builtin]
    if not builtin:
        commands.sort(key=lambda c: c.name)
    return "\n".join(f"{c.usage:<{width - 2}}  {c.summary}" for c in commands)
