"""``%crush rename SESSION TITLE``: set a session's title."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import command

if TYPE_CHECKING:
    from ..kernel.crush import Crush


@command("rename", "%crush rename SESSION TITLE", "set a session's title")
def rename_command(crush: Crush, args: list[str]) -> None:
    from IPython.core.error import UsageError

    if len(args) < 2:
        raise UsageError("Usage: %crush rename SESSION TITLE")
    session = crush.find_session(args[0])
    title = " ".join(args[1:]).strip()
    crush.titler.cancel(session.id)  # a title arriving later must not replace this one
    crush.store.rename_session(session.id, title)
    print(f"Session {session.id[:8]} is now titled {title!r}")
