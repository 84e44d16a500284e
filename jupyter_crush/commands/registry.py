"""The registry of ``%crush`` line commands: each command module registers its own::

    @command("fix", "%crush fix [INSTRUCTION]", "ask the agent to fix the last error")
    def fix_command(crush: Crush, args: list[str]) -> None: ...

The package :mod:`jupyter_crush.commands` imports every command module, so importing it
registers them all. The built-in commands (:mod:`jupyter_crush.commands.session`, and
``help`` in :mod:`jupyter_crush.magics`) are registered with ``builtin=True``: ``%crush?``
lists them, in the order registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..kernel.crush import Crush


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


def usage_lines(*, builtin: bool, width: int = 29) -> str:
    """Help lines of the built-in commands (in the order registered) or of the others (by
    name), the summaries aligned at ``width`` unless a usage is longer."""
    commands = [c for c in COMMANDS.values() if c.builtin == builtin]
    if not builtin:
        commands.sort(key=lambda c: c.name)
    return "\n".join(f"{c.usage:<{width - 2}}  {c.summary}" for c in commands)
