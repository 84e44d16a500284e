"""Insert below, on a code block of a run's answer: the block's code as a new cell below
the prompt's cell, not run, marked with the session, message and model it came from.

The click arrives on the page's subshell thread; the cell is inserted on the kernel's loop
through the same path as ``insert_cell`` (:func:`jupyter_crush.notebook.provenance.insert_cell`:
the extension's comm in JupyterLab 4 and Notebook 7, ``set_next_input`` elsewhere), in the
context of the ``%%crush`` cell's request, whose cell id says where "below" is.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..notebook.provenance import cell_metadata, insert_cell, origin_of

if TYPE_CHECKING:
    from ..view.base import RunView
    from .crush import Crush


def code_inserter(
    crush: Crush, view: RunView, loop: asyncio.AbstractEventLoop
) -> Callable[[str], None]:
    """What ``view``'s Insert below calls (from any thread): made in the prompt cell's
    request, so the cell goes below the prompt's cell whenever the click comes."""
    context = contextvars.copy_context()
    tasks: set[asyncio.Task[str]] = set()  # the loop keeps only weak references

    def start(code: str) -> None:
        message_id, model = origin_of(crush.store, view.session_id)
        metadata = cell_metadata(view.session_id, message_id, model)
        task = loop.create_task(insert_cell(crush.shell, code, metadata), context=context)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def insert(code: str) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(start, code)

    return insert
