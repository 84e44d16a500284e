"""The ``notebook`` tool: the notebook's cells and outputs, read-only.

Where the cells come from, best first:

1. **The live document** in JupyterLab 4 / Notebook 7, asked over the extension's comm
   (:func:`jupyter_crush.notebook.labcomm.request`): what the user sees, unsaved edits included.
2. **The ``.ipynb`` on disk**: the kernel's notebook (``__session__``, which ipykernel
   sets from ``JPY_SESSION_NAME``), or the ``path`` the model names; cells run in this
   kernel since it was saved follow, from IPython's ``In``/``Out`` history.
3. **IPython's history** alone (a console, a notebook never saved, a gateway kernel that
   cannot see the notebook's file): one cell per execution, ``In[n]`` with ``Out[n]`` and
   the error it raised.

Each cell shows its index, id, type, execution count, source and outputs as text (errors
as type, message and traceback; images as a note of their type and size). The cell
executing now and the cell of the prompt being answered are marked. Long sources and
outputs keep their head and tail with a count of what was cut, and the whole answer is
capped like every tool result.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.model import ToolSpec
from ..core.output import MAX_OUTPUT_CHARS, clean, truncate
from ..core.remote import looks_remote
from ..core.tools import Tool, ToolContext, ToolResult
from ..notebook import labcomm
from ..notebook import state as notebook_state
from .workspace import Workspace, WorkspaceError

#: Per-cell bounds: a source or the outputs of one cell longer than this keep head + tail.
CELL_SOURCE_CHARS = 3_000
CELL_OUTPUT_CHARS = 2_000
#: Executions missing from the saved file that are listed after it (the newest).
MAX_HISTORY_CELLS = 50
#: How long a page has to answer before the tool falls back to the file on disk.
LIVE_TIMEOUT = 2.0

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


async def live_document(shell: Any) -> dict[str, Any] | None:
    """The live document as the extension's page sends it (``cells``, a list of nbformat
    cells; ``path``; ``dirty``), or None when no page answers within :data:`LIVE_TIMEOUT`."""
    reply = await labcomm.request(shell, {"op": "cells"}, timeout=LIVE_TIMEOUT)
    return reply if reply is not None and isinstance(reply.get("cells"), list) else None


DESCRIPTION = """\
Read the user's notebook: its cells in order with index, id, type, execution count, \
source and outputs (errors with their traceback; images are noted, not shown). The cell \
running your prompt is marked. Use it to see what the user did and what failed before \
answering. Optional: `start`/`end` (cell indexes, inclusive) to read a range, `search` to \
keep only cells whose source or output contains that text, `outputs: false` for sources \
only, `path` to read another .ipynb file in the workspace (relative to its root)."""


@dataclass
class Cell:
    """One cell as the model sees it."""

    index: int
    cell_type: str
    source: str
    id: str = ""
    execution_count: int | None = None
    outputs: list[str] = field(default_factory=list)
    note: str = ""  # where the cell came from when it is not the document ("kernel history")


@dataclass
class NotebookSnapshot:
    """The cells of a notebook and where they were read from."""

    origin: str  # "live document", "file on disk", "kernel history"
    path: str
    cells: list[Cell]
    dirty: bool = False  # the live document has unsaved changes


class NotebookError(Exception):
    """A request the tool cannot answer; the message says what to do."""


# -- reading -------------------------------------------------------------------------------


def cells_from_json(cells: Iterable[dict[str, Any]]) -> list[Cell]:
    """nbformat cell dicts (from a file or the live document) as :class:`Cell` s."""
    result = []
    for index, raw in enumerate(cells):
        source = raw.get("source", "")
        if isinstance(source, list):
            source = "".join(source)
        result.append(
            Cell(
                index=index,
                cell_type=str(raw.get("cell_type", "code")),
                source=source,
                id=str(raw.get("id") or ""),
                execution_count=raw.get("execution_count"),
                outputs=[text for out in raw.get("outputs") or () if (text := output_text(out))],
            )
        )
    return result


def output_text(output: dict[str, Any]) -> str:
    """One nbformat output as text: streams, Markdown or plain-text results, errors, image
    notes."""
    kind = output.get("output_type")
    if kind == "stream":
        text = output.get("text", "")
        return "".join(text) if isinstance(text, list) else str(text)
    if kind == "error":
        traceback = "\n".join(_ANSI.sub("", line) for line in output.get("traceback") or ())
        head = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
        return f"[error] {head}\n{traceback}".rstrip()
    data = output.get("data") or {}
    parts = []
    for mime, value in data.items():
        if mime.startswith("image/"):
            parts.append(f"[image {mime}, {_image_bytes(value):,} bytes]")
    # Markdown first: where an output has both, its plain text is the lesser copy (a
    # finished %%crush answer's is only its status line; IPython's Markdown's, its repr).
    text = data.get("text/markdown", data.get("text/plain"))
    if text is not None:
        parts.append("".join(text) if isinstance(text, list) else str(text))
    elif not parts and data:
        parts.append(f"[{', '.join(sorted(data))} output]")
    return "\n".join(parts)


def _image_bytes(value: Any) -> int:
    # The page sends the base64 length instead of the data; a file holds the data itself.
    if isinstance(value, int):
        return value * 3 // 4
    text = "".join(value) if isinstance(value, list) else str(value)
    return len(text) * 3 // 4 if not text.lstrip().startswith("<") else len(text)


def read_ipynb(path: Path) -> list[Cell]:
    """The cells of the notebook file at ``path``; :class:`NotebookError` says what is wrong."""
    return cells_from_json(c for c in load_ipynb(path)["cells"] if isinstance(c, dict))


def load_ipynb(path: Path) -> dict[str, Any]:
    """The notebook file at ``path`` as its JSON document (a dict with a ``cells`` list);
    :class:`NotebookError` says what is wrong."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NotebookError(
            f"notebook {path} not found; give a path to an existing .ipynb"
        ) from None
    except OSError as error:
        raise NotebookError(f"cannot read notebook {path}: {error.strerror or error}") from None
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NotebookError(f"{path} is not a notebook (not valid JSON: {error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("cells"), list):
        raise NotebookError(f"{path} is not a notebook (no 'cells' list)")
    return document


def kernel_notebook_path(shell: Any) -> Path | None:
    """The kernel's own notebook file, if Jupyter told the kernel where it is."""
    name = (getattr(shell, "user_ns", None) or {}).get("__session__") or os.environ.get(
        "JPY_SESSION_NAME"
    )
    if not name or not str(name).endswith(".ipynb"):
        return None
    path = Path(str(name)).expanduser()
    if path.is_absolute() and path.exists():
        return path
    # Older servers give the path relative to the server's root; the kernel runs in the
    # notebook's folder.
    for candidate in (Path.cwd() / path, Path.cwd() / path.name):
        if candidate.exists():
            return candidate.resolve()
    return path if path.is_absolute() else Path.cwd() / path


def history_cells(shell: Any, errors: dict[int, str], after: int = 0) -> list[Cell]:
    """Cells from IPython's ``In``/``Out`` history (executions numbered ``after`` + 1 on)."""
    user_ns = getattr(shell, "user_ns", None) or {}
    # The sources as typed (In holds them after IPython's transforms: %%crush would read
    # get_ipython().run_cell_magic(...)).
    inputs = getattr(getattr(shell, "history_manager", None), "input_hist_raw", None) or []
    results = user_ns.get("Out") or {}
    cells = []
    for count in range(max(after + 1, 1), len(inputs)):
        outputs = []
        if count in results:
            outputs.append(_short_repr(results[count]))
        if count in errors:
            outputs.append(f"[error] {errors[count]}")
        cells.append(
            Cell(
                index=0,
                cell_type="code",
                source=inputs[count],
                execution_count=count,
                outputs=outputs,
                note="kernel history",
            )
        )
    return cells


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as error:  # a broken __repr__ must not break the tool
        return f"<{type(value).__name__}: repr failed: {error}>"
    return truncate(text, CELL_OUTPUT_CHARS, what="output")


def merge_history(cells: list[Cell], history: list[Cell]) -> list[Cell]:
    """``cells`` followed by the newest executions whose source is in none of them.

    A cell run since the file was saved (or a cell deleted since) shows up this way; its
    index continues the document's.
    """
    saved = {c.source.strip() for c in cells}
    extra = [c for c in history if c.source.strip() not in saved][-MAX_HISTORY_CELLS:]
    for offset, cell in enumerate(extra):
        cell.index = len(cells) + offset
    return cells + extra


# -- formatting ----------------------------------------------------------------------------


def select(
    cells: list[Cell], start: int | None = None, end: int | None = None, search: str = ""
) -> list[Cell]:
    """The cells from ``start`` to ``end`` (inclusive) whose text contains ``search``."""
    count = len(cells)
    if count and (start is not None or end is not None):
        first = 0 if start is None else start
        last = count - 1 if end is None else end
        if first < 0 or last < first or first >= count:
            raise NotebookError(
                f"cell range {first}-{last} is out of bounds: the notebook has {count} cells "
                f"(indexes 0-{count - 1})"
            )
        cells = cells[first : min(last, count - 1) + 1]
    if search:
        needle = search.lower()
        cells = [
            c
            for c in cells
            if needle in c.source.lower() or any(needle in out.lower() for out in c.outputs)
        ]
    return cells


def format_cells(
    snapshot: NotebookSnapshot,
    cells: list[Cell],
    *,
    executing: str = "",
    prompt_cell: str = "",
    outputs: bool = True,
) -> str:
    """The cells as the model reads them, each under a header line."""
    where = f"{snapshot.origin}: {snapshot.path}" if snapshot.path else snapshot.origin
    if snapshot.dirty:
        where += " (unsaved changes included)"
    lines = [f"Notebook ({where}), {len(snapshot.cells)} cells; showing {len(cells)}."]
    for cell in cells:
        head = f"## cell {cell.index}"
        if cell.id:
            head += f" id={cell.id}"
        head += f" {cell.cell_type}"
        if cell.cell_type == "code":
            count = cell.execution_count
            head += f" [{count if count is not None else ' '}]"
        marks = []
        if cell.id and cell.id == executing:
            marks.append("executing now")
        if cell.id and cell.id == prompt_cell:
            marks.append("the prompt you are answering")
        if cell.note:
            marks.append(cell.note)
        if marks:
            head += f" ({'; '.join(marks)})"
        lines.append(head)
        lines.append(truncate(cell.source, CELL_SOURCE_CHARS, what="source"))
        if outputs and cell.outputs:
            lines.append("-- output --")
            lines.append(truncate("\n".join(cell.outputs), CELL_OUTPUT_CHARS, what="output"))
    return "\n".join(lines)


# -- the tool ------------------------------------------------------------------------------


def _working_directory() -> Workspace:
    return Workspace(Path.cwd())


@dataclass
class NotebookTool:
    """Reads the notebook of ``shell`` (see the module docstring for the sources).

    A ``path`` the model names is confined to ``workspace`` as the file tools' are (the
    tool is read-only, so no permission prompt stands in front of it).
    """

    shell: Any
    workspace: Workspace = field(default_factory=_working_directory)
    limit: int = MAX_OUTPUT_CHARS

    def tool(self) -> Tool:
        spec = ToolSpec(
            name="notebook",
            description=DESCRIPTION,
            parameters={
                "type": "object",
                "properties": {
                    "start": {"type": "integer", "description": "First cell index to show."},
                    "end": {"type": "integer", "description": "Last cell index to show."},
                    "search": {
                        "type": "string",
                        "description": "Only cells whose source or output contains this.",
                    },
                    "outputs": {"type": "boolean", "description": "Show outputs (default)."},
                    "path": {"type": "string", "description": "Another .ipynb in the workspace."},
                },
                "additionalProperties": False,
            },
        )
        return Tool(spec=spec, run=self.run)

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        problem = _check_args(args)
        if problem:
            return ToolResult(f"notebook: {problem}", True)
        try:
            snapshot = await self.snapshot(args.get("path"))
            cells = select(snapshot.cells, args.get("start"), args.get("end"), args.get("search"))
        except (NotebookError, WorkspaceError) as error:
            return ToolResult(f"notebook: {error}", True)
        state = notebook_state.get(self.shell)
        text = format_cells(
            snapshot,
            cells,
            executing=state.executing_cell if state else "",
            prompt_cell=notebook_state.prompt_cell(self.shell),
            outputs=args.get("outputs", True),
        )
        if not cells and args.get("search"):
            text += f"\nNo cell contains {args['search']!r}."
        return ToolResult(clean(text, self.limit, what="notebook"))

    async def snapshot(self, path: str | None = None) -> NotebookSnapshot:
        """The notebook's cells from the best source available (see the module docstring);
        ``path`` outside the workspace raises :class:`WorkspaceError`."""
        if path:
            target = self.workspace.resolve(path)
            return NotebookSnapshot("file on disk", str(target), read_ipynb(target))
        reply = await live_document(self.shell)
        if reply is not None:
            return NotebookSnapshot(
                "live document",
                str(reply.get("path") or ""),
                cells_from_json(c for c in reply["cells"] if isinstance(c, dict)),
                dirty=bool(reply.get("dirty")),
            )
        state = notebook_state.get(self.shell)
        errors = state.errors if state else {}
        history = history_cells(self.shell, errors)
        file = kernel_notebook_path(self.shell)
        if file is not None and file.exists():
            return NotebookSnapshot(
                "file on disk", str(file), merge_history(read_ipynb(file), history)
            )
        for index, cell in enumerate(history):
            cell.index, cell.note = index, ""
        origin = "kernel history"
        if looks_remote():
            origin += (
                "; the notebook's file is not visible from this remote kernel, and no "
                "JupyterLab page with the jupyter-crush extension answered"
            )
        return NotebookSnapshot(origin, "", history)


def _check_args(args: dict[str, Any]) -> str:
    for name in ("start", "end"):
        value = args.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return f"'{name}' must be a cell index (an integer), not {value!r}"
    for name in ("search", "path"):
        value = args.get(name)
        if value is not None and not isinstance(value, str):
            return f"'{name}' must be a string, not {value!r}"
    if not isinstance(args.get("outputs", True), bool):
        return "'outputs' must be true or false"
    return ""
