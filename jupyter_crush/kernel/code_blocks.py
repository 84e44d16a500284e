"""Copy and Insert below, on the code blocks of a run's answer: the block's code as a new
cell below the prompt's cell, not run, marked with the session, message and model it came
from (:func:`jupyter_crush.notebook.provenance.cell_metadata`).

While the run streams, the run view sends the click to the kernel, on the page's subshell
thread; the cell is inserted on the kernel's loop through the same path as ``insert_cell``
(:func:`jupyter_crush.notebook.provenance.insert_cell`: the extension's comm in JupyterLab 4
and Notebook 7, ``set_next_input`` elsewhere), in the context of the ``%%crush`` cell's
request, whose cell id says where "below" is. The finished answer carries the same
metadata (``CodeBlocks.origin``), for the extension to insert a block's code by itself.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING, Any

from ..notebook.provenance import cell_metadata, insert_cell, origin_of

if TYPE_CHECKING:
    from ..view.base import RunView
    from .crush import Crush


def offer_code_blocks(crush: Crush, view: RunView, loop: asyncio.AbstractEventLoop) -> None:
    """Give ``view`` the provenance of its answer's code and the Insert below it calls (from
    any thread). Made in the prompt cell's request, so cells go below the prompt's cell
    whenever the click comes."""
    context = contextvars.copy_context()
    tasks: set[asyncio.Task[str]] = set()  # the loop keeps only weak references

    def origin() -> dict[str, Any]:
        message_id, model = origin_of(crush.store, view.session_id)
        return cell_metadata(view.session_id, message_id, model)

    def start(code: str) -> None:
        task = loop.create_task(insert_cell(crush.shell, code, origin()), context=context)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def insert(code: str) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(start, code)

    view.code_blocks.origin = origin
    view.code_blocks.inserter = insert
