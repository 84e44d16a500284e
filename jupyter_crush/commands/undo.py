"""``%crush undo [SESSION]``: undo the session's latest turn, kernel state included.

The work is :mod:`jupyter_crush.kernel.undo`'s; this says what it did, in the cell, or —
when the session is busy and the undo waits for its turn to end — in that cell's output
once it has run.
"""

from __future__ import annotations

import contextvars
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from .registry import command

if TYPE_CHECKING:
    from ..kernel.crush import Crush


@command(
    "undo",
    "%crush undo [SESSION]",
    "undo the latest turn: variables, objects, files and cells it changed",
)
def undo_command(crush: Crush, args: list[str]) -> None:
    from IPython.core.error import UsageError
    from IPython.display import display

    if len(args) > 1:
        raise UsageError("Usage: %crush undo [SESSION]")
    if args:
        session = crush.find_session(args[0])
    elif crush.current_session_id is not None:
        session = crush.find_session(crush.current_session_id)
    else:
        raise UsageError("No session to undo in yet; name one: %crush undo SESSION")
    running = True  # while this cell runs, the report is printed in it
    handle: Any = None
    cell = contextvars.copy_context()

    def say(text: str) -> None:
        if running or handle is None:
            print(text)
        else:  # an undo that waited: its report replaces the "queued" line
            cell.run(handle.update, {"text/plain": text}, raw=True)

    name = repr(session.title) if session.title else session.id[:8]
    if crush.undo.request(session.id, say, _run_blocking):
        handle = display(
            {"text/plain": f"Session {name} is busy; undo queued: it runs when its turn ends"},
            raw=True,
            display_id=True,
        )
    running = False


def _run_blocking(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to its end in the executing cell, still serving the kernel's loop (as
    ``-f code`` waits for the page to insert its cell)."""
    from ..kernel.display import kernel_loop

    loop = kernel_loop()
    if loop.is_running():
        import nest_asyncio2

        nest_asyncio2.apply(loop)
    loop.run_until_complete(work)
