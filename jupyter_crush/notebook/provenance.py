"""Cells the agent inserts say so: cell metadata naming the session, message and model.

A cell proposed by the ``insert_cell`` tool, by ``-f code`` or by ``%crush fix -f code``
is inserted by the JupyterLab 4 / Notebook 7 extension (over its comm) with this in its
metadata, saved with the notebook::

    "jupyter_crush": {"session": "<id>", "message": "<id>", "model": "provider:model",
                      "tool_call": "<id>"}          # tool_call only from insert_cell

A front end without the extension (classic Notebook, VS Code, nbclient) gets the cell
through IPython's ``set_next_input`` payload, which carries no metadata: the cell appears,
unmarked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.changes import NO_CHANGES, TurnChanges
from . import labcomm
from . import state as notebook_state

if TYPE_CHECKING:
    from ..core.tools import ToolContext
    from ..store.transcript import TranscriptStore

METADATA_KEY = "jupyter_crush"
#: How long the page has to confirm an insert before the payload route is used instead.
INSERT_TIMEOUT = 3.0
SET_NEXT_INPUT = "It will appear as a new cell below the cell the kernel finishes executing next."


def cell_metadata(
    session_id: str, message_id: str, model: str, tool_call_id: str = ""
) -> dict[str, Any]:
    origin = {"session": session_id, "message": message_id, "model": model}
    if tool_call_id:
        origin["tool_call"] = tool_call_id
    return {METADATA_KEY: origin}


def origin_of(store: TranscriptStore, session_id: str, tool_call_id: str = "") -> tuple[str, str]:
    """(message id, 'provider:model') of the session's assistant message holding
    ``tool_call_id`` (else its newest assistant message)."""
    for message in reversed(store.list_messages(session_id)):
        if str(message.role) != "assistant":
            continue
        if tool_call_id and not any(c.id == tool_call_id for c in message.tool_calls):
            continue
        model = f"{message.provider}:{message.model}" if message.provider else message.model
        return message.id, model
    return "", ""


async def insert_cell(
    shell: Any,
    code: str,
    metadata: dict[str, Any],
    stop_if_covered: Callable[[], None] = lambda: None,
    changes: TurnChanges = NO_CHANGES,
) -> str:
    """Insert ``code`` below the prompt's cell; a sentence saying where it went.
    ``stop_if_covered`` (the turn's stop check) runs before the payload route is taken,
    after the wait for the page; ``changes`` (the turn's change log) gets the new cell's id,
    for undo (a cell inserted through the payload has none)."""
    reply = await labcomm.request(
        shell,
        {
            "op": "insert_cell",
            "source": code,
            "metadata": metadata,
            "after": notebook_state.prompt_cell(shell),
        },
        timeout=INSERT_TIMEOUT,
    )
    if reply is not None and isinstance(reply.get("index"), int):
        if isinstance(reply.get("cell_id"), str):
            changes.cell_inserted(reply["cell_id"])
        return f"It was inserted as cell {reply['index']}, below the prompt's cell."
    stop_if_covered()
    shell.set_next_input(code, replace=False)
    return SET_NEXT_INPUT


def insert_cell_now(
    shell: Any, code: str, metadata: dict[str, Any], changes: TurnChanges = NO_CHANGES
) -> str:
    """:func:`insert_cell` from a cell that is still executing (``-f code``).

    The cell waits on the kernel's loop through nest-asyncio2 (see
    :func:`~jupyter_crush.kernel.display.wait_for`), so the page's answer can be awaited here
    too; without the loop (terminal IPython) the payload route is the only one.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        shell.set_next_input(code, replace=False)
        return SET_NEXT_INPUT
    import nest_asyncio2

    nest_asyncio2.apply(loop)
    return loop.run_until_complete(insert_cell(shell, code, metadata, changes=changes))


def insert_answer_code(
    store: TranscriptStore,
    shell: Any,
    session_id: str,
    code: str,
    changes: TurnChanges = NO_CHANGES,
) -> str:
    """``-f code``: the answer's code as a new cell below, marked with the answer's origin;
    ``changes`` is the answer's turn's change log."""
    message_id, model = origin_of(store, session_id)
    metadata = cell_metadata(session_id, message_id, model)
    return insert_cell_now(shell, code, metadata, changes)


def cell_proposer(store: TranscriptStore, shell: Any) -> Any:
    """The ``insert_cell`` tool's proposer: inserts with this kernel's provenance."""

    async def propose(code: str, ctx: ToolContext) -> str:
        message_id, model = origin_of(store, ctx.session_id, ctx.tool_call_id)
        metadata = cell_metadata(ctx.session_id, message_id, model, ctx.tool_call_id)
        return await insert_cell(shell, code, metadata, ctx.stop_if_covered, ctx.changes)

    return propose


def call_origin(store: TranscriptStore) -> Callable[[ToolContext], dict[str, Any]]:
    """The provenance metadata of what a tool call puts into a cell (an accepted edit)."""

    def metadata(ctx: ToolContext) -> dict[str, Any]:
        message_id, model = origin_of(store, ctx.session_id, ctx.tool_call_id)
        return cell_metadata(ctx.session_id, message_id, model, ctx.tool_call_id)

    return metadata
