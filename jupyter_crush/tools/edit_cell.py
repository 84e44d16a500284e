"""The ``edit_cell`` tool: change a cell that is already in the notebook, under review.

The model names a cell by the id the ``notebook`` tool shows and gives its whole new
source, or a ``search``/``replace`` pair (``search`` must occur exactly once). The
JupyterLab 4 / Notebook 7 extension shows the change as a diff inside the cell with Accept
and Reject (``propose_edit`` over its comm, :mod:`jupyter_crush.notebook.labcomm`); nothing
in the document changes until the user accepts, and the tool waits for that decision:

- accepted: the cell holds the new source, with provenance metadata naming the session,
  message, model and tool call (:mod:`jupyter_crush.notebook.provenance`), and the turn's
  change log hears of it (``ToolContext.changes.cell_edited``);
- rejected: the cell is unchanged, and the model reads the user's words, if any;
- a Stop while the edit waits withdraws it: the diff goes, the cell keeps its source.

Without a page that can show the diff (headless, nbclient, a console, a page without the
extension or not answering) the tool says so in one line and changes nothing.
"""

from __future__ import annotations

import asyncio
import difflib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.model import ToolSpec
from ..core.tools import Tool, ToolContext, ToolResult
from ..notebook import labcomm
from .cells import MAX_CELL_CHARS
from .notebook import live_document

#: How long the page has to show the diff before the tool says no front end can.
SHOW_TIMEOUT = 3.0

#: What edit_cell and run_cell say of a missing or empty ``cell_id`` argument.
BAD_CELL_ID = "'cell_id' must be a cell's id (the notebook tool shows it as id=...)"

NO_FRONT_END = (
    "edit_cell: no JupyterLab or Notebook 7 page with the jupyter-crush extension shows this "
    "notebook, so the edit cannot be shown for review; nothing changed (propose the code "
    "with insert_cell instead)"
)

DESCRIPTION = """\
Change an existing cell of the user's notebook. Name the cell by its id (`id=...` in the \
notebook tool's output) and give either `source`, the cell's whole new source, or \
`search` and `replace`: the one place where `search` occurs in the cell becomes \
`replace` (`search` must occur exactly once; include surrounding lines to make it \
unique). The user sees the change as a diff in the cell and accepts or rejects it; \
nothing changes until they accept, and the result tells you what they decided (with \
their reason if they rejected it). The cell is not run: use run_cell for that."""

#: Makes the provenance metadata an accepted edit carries (see notebook/provenance.py).
CellOrigin = Callable[[ToolContext], dict[str, Any]]


@dataclass
class EditCellTool:
    shell: Any
    origin: CellOrigin | None = None

    def tool(self) -> Tool:
        text = {"type": "string"}
        spec = ToolSpec(
            name="edit_cell",
            description=DESCRIPTION,
            parameters={
                "type": "object",
                "properties": {
                    "cell_id": {
                        **text,
                        "description": "The cell's id, as the notebook tool shows.",
                    },
                    "source": {**text, "description": "The cell's whole new source."},
                    "search": {**text, "description": "Text that occurs once in the cell."},
                    "replace": {**text, "description": "What replaces `search`."},
                },
                "required": ["cell_id"],
                "additionalProperties": False,
            },
        )
        return Tool(spec=spec, run=self.run, changes_state=True, summarize=summarize)

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        problem = check_arguments(args)
        if problem:
            return ToolResult(f"edit_cell: {problem}", True)
        cell_id = args["cell_id"]
        before = await live_cell_source(
            self.shell,
            cell_id,
            tool="edit_cell",
            no_front_end=NO_FRONT_END,
            nothing="nothing changed",
        )
        if isinstance(before, ToolResult):
            return before
        after, problem = new_source(before, args)
        if problem:
            return ToolResult(f"edit_cell: {problem}; nothing changed", True)
        metadata = self.origin(ctx) if self.origin is not None else {}
        request = {
            "op": "propose_edit",
            "edit": ctx.tool_call_id or uuid.uuid4().hex,
            "cell": cell_id,
            "before": before,
            "after": after,
            "metadata": metadata,
        }
        ctx.stop_if_covered()  # the diff is the first thing the user sees of this call
        try:
            decided = await labcomm.request(self.shell, request, SHOW_TIMEOUT, wait=True)
        except asyncio.CancelledError:
            # A Stop withdraws the edit: the page drops the diff, the cell keeps its source.
            labcomm.notify(self.shell, {"op": "withdraw_edit", "edit": request["edit"]})
            raise
        return self._decided(decided, cell_id, before, after, ctx)

    def _decided(
        self,
        decided: dict[str, Any] | None,
        cell_id: str,
        before: str,
        after: str,
        ctx: ToolContext,
    ) -> ToolResult:
        if decided is None:
            return ToolResult(NO_FRONT_END, True)
        metadata = {"cell_id": cell_id, "decision": decided.get("decision", "")}
        error = decided.get("error")
        if isinstance(error, str):
            return ToolResult(f"edit_cell: {error}; nothing changed", True, metadata)
        decision = decided.get("decision")
        if decision == "accepted":
            ctx.changes.cell_edited(cell_id, before, after)
            return ToolResult(
                f"The user accepted the edit: cell {cell_id} now holds the new source "
                "(not run; run_cell runs it).",
                metadata=metadata,
            )
        if decision == "rejected":
            reason = str(decided.get("reason") or "").strip()
            said = f' They said: "{reason}"' if reason else " They gave no reason."
            return ToolResult(
                f"The user rejected the edit; cell {cell_id} is unchanged.{said}",
                metadata={**metadata, "reason": reason},
            )
        return ToolResult(f"edit_cell: the edit was withdrawn; cell {cell_id} is unchanged", True)


def check_arguments(args: dict[str, Any]) -> str:
    """What is wrong with the call's arguments, in one line ('' when nothing)."""
    cell_id = args.get("cell_id")
    if not isinstance(cell_id, str) or not cell_id.strip():
        return BAD_CELL_ID
    for name in ("source", "search", "replace"):
        if name in args and not isinstance(args[name], str):
            return f"'{name}' must be a string"
    whole = "source" in args
    pair = "search" in args or "replace" in args
    if whole == pair:
        return "give either 'source' (the whole new source) or 'search' and 'replace'"
    if pair and not ("search" in args and "replace" in args):
        return "'search' and 'replace' go together: give both"
    if pair and not args["search"]:
        return "'search' must not be empty"
    text = args.get("source", args.get("replace", ""))
    if len(text) > MAX_CELL_CHARS:
        return f"the new text is {len(text)} characters; keep a cell under {MAX_CELL_CHARS}"
    return ""


async def live_cell_source(
    shell: Any, cell_id: str, *, tool: str, no_front_end: str, nothing: str
) -> str | ToolResult:
    """The source of cell ``cell_id`` in the live document, or ``tool``'s error result:
    ``no_front_end`` when no page answers, else that no cell has the id and ``nothing``
    happened."""
    page = await live_document(shell)
    if page is None:
        return ToolResult(no_front_end, True)
    source = cell_source(page["cells"], cell_id)
    if source is None:
        return ToolResult(
            f"{tool}: no cell has id {cell_id!r}; the notebook tool shows each cell's "
            f"id (id=...); {nothing}",
            True,
        )
    return source


def cell_source(cells: list[Any], cell_id: str) -> str | None:
    """The source of the cell whose id is ``cell_id`` among nbformat ``cells``, or None."""
    for cell in cells:
        if isinstance(cell, dict) and cell.get("id") == cell_id:
            source = cell.get("source", "")
            return "".join(source) if isinstance(source, list) else str(source)
    return None


def new_source(before: str, args: dict[str, Any]) -> tuple[str, str]:
    """(the cell's new source, '') or ('', what is wrong)."""
    if "source" in args:
        after = args["source"]
    else:
        count = before.count(args["search"])
        if count != 1:
            where = "does not occur" if count == 0 else f"occurs {count} times"
            return "", f"'search' {where} in the cell; it must occur exactly once"
        after = before.replace(args["search"], args["replace"], 1)
    if after == before:
        return "", "the new source is the cell's source already"
    return after, ""


def summarize(args: dict[str, Any]) -> str:
    """The permission prompt names the cell and shows the change."""
    head = f"cell {args.get('cell_id', '?')}"
    if "source" in args:
        return f"{head}: new source\n{args.get('source', '')}"
    diff = difflib.unified_diff(
        str(args.get("search", "")).splitlines(),
        str(args.get("replace", "")).splitlines(),
        "before",
        "after",
        lineterm="",
    )
    return f"{head}: replace\n" + "\n".join(diff)
