"""The ``run_cell`` tool: run one of the notebook's cells as the user's Shift+Enter would.

The JupyterLab 4 / Notebook 7 extension runs the cell (``run_cell`` over its comm,
:mod:`jupyter_crush.notebook.labcomm`), so its execution count and outputs land in the
notebook, and answers with those outputs once it has run; the model reads them as text
(errors with their traceback) and its images as images, as the ``python`` tool returns
figures (:mod:`jupyter_crush.core.images`).

Why it cannot deadlock: the cell runs on this very kernel, as an ordinary
``execute_request`` on the main shell, while the agent's task waits on the kernel's loop for
the page's answer. Awaiting is not blocking: the shell takes the request, the cell runs
(holding the loop while it computes, as any cell does), the page answers on the comm and
the task resumes. The one cell that would wait forever is the prompt's own cell when it
waits for this very answer (``%%crush --wait``): the shell takes requests one at a time, so
the tool refuses that case in one line. A cell queued behind another cell the user runs
simply runs after it, as Shift+Enter's would.

Stop: a running cell holds the main thread and with it the loop, so the turn's cancel
cannot reach the tool there; a small thread watches the turn and interrupts the cell as ■
does (:func:`jupyter_crush.notebook.interrupt.interrupt_cell`) — when it starts, if it was
still queued.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..core.images import images_from_bundle
from ..core.message import ImagePart
from ..core.model import ToolSpec
from ..core.output import MAX_OUTPUT_CHARS, clean
from ..core.tools import Tool, ToolContext, ToolResult
from ..notebook import labcomm
from ..notebook import state as notebook_state
from ..notebook.interrupt import interrupt_cell
from .edit_cell import BAD_CELL_ID, live_cell_source
from .notebook import output_text

#: How long the page has to start the cell before the tool says no front end can.
START_TIMEOUT = 3.0
#: How often the Stop watcher looks at the turn while the cell runs (seconds).
STOP_POLL = 0.05
#: How long, after a Stop, a cell still queued behind another is waited for to interrupt it.
QUEUED_STOP_LIMIT = 60.0

NO_FRONT_END = (
    "run_cell: no JupyterLab or Notebook 7 page with the jupyter-crush extension shows this "
    "notebook, so no cell can be run as the user runs it; nothing ran (use the python tool)"
)

DESCRIPTION = """\
Run one of the notebook's code cells, exactly as the user's Shift+Enter would: its \
execution count and outputs appear in the notebook, and you get its outputs (text, the \
traceback of an error, images). Name the cell by its id (`id=...` in the notebook tool's \
output). Use it to re-run a cell after edit_cell changed it, or to refresh a cell's \
output; for code of your own use the python tool."""


@dataclass
class RunCellTool:
    shell: Any
    limit: int = MAX_OUTPUT_CHARS

    def tool(self) -> Tool:
        spec = ToolSpec(
            name="run_cell",
            description=DESCRIPTION,
            parameters={
                "type": "object",
                "properties": {
                    "cell_id": {
                        "type": "string",
                        "description": "The cell's id, as the notebook tool shows.",
                    },
                },
                "required": ["cell_id"],
                "additionalProperties": False,
            },
        )
        return Tool(spec=spec, run=self.run, changes_state=True, summarize=summarize)

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        cell_id = args.get("cell_id")
        if not isinstance(cell_id, str) or not cell_id.strip():
            return ToolResult(f"run_cell: {BAD_CELL_ID}", True)
        prompt = notebook_state.prompt_cell(self.shell)
        if cell_id == prompt:
            return ToolResult(
                f"run_cell: cell {cell_id} is the prompt you are answering; nothing ran", True
            )
        cells = notebook_state.get(self.shell)
        if prompt and cells is not None and cells.executing_cell == prompt:
            return ToolResult(
                "run_cell: the prompt's cell waits for this answer (--wait), and the kernel "
                "runs one cell at a time; nothing ran (ask without --wait to run cells)",
                True,
            )
        source = await live_cell_source(
            self.shell, cell_id, tool="run_cell", no_front_end=NO_FRONT_END, nothing="nothing ran"
        )
        if isinstance(source, ToolResult):
            return source
        ctx.stop_if_covered()  # the cell is the side effect
        ctx.changes.before_code(getattr(self.shell, "user_ns", {}), source)
        watch = StopWatch(self.shell, cell_id, ctx.stop_if_covered)
        request = {"op": "run_cell", "cell": cell_id, "source": source}
        try:
            reply = await labcomm.request(self.shell, request, START_TIMEOUT, wait=True)
        except BaseException:
            watch.finish_unless_stopped()
            raise
        watch.finish()
        if reply is None:
            return ToolResult(NO_FRONT_END, True)
        if isinstance(reply.get("error"), str):
            return ToolResult(f"run_cell: {reply['error']}; nothing ran", True)
        return self._result(cell_id, reply)

    def _result(self, cell_id: str, reply: dict[str, Any]) -> ToolResult:
        outputs = [o for o in reply.get("outputs") or () if isinstance(o, dict)]
        texts, images = outputs_for_model(outputs, f"cell {cell_id}")
        count = reply.get("execution_count")
        raised = any(o.get("output_type") == "error" for o in outputs)
        head = f"Cell {cell_id} ran as [{count if count is not None else ' '}]"
        head += ", and raised an error:" if raised else ":"
        text = "\n".join([head, *texts]) if texts else f"{head} (no output)"
        metadata = {"cell_id": cell_id, "execution_count": count, "error": raised}
        return ToolResult(clean(text, self.limit), raised, metadata, images)


def outputs_for_model(
    outputs: list[dict[str, Any]], label: str
) -> tuple[list[str], list[ImagePart]]:
    """nbformat outputs as the model reads them: a text per output (errors with their
    traceback; each image noted) and the PNG/JPEG images themselves."""
    texts: list[str] = []
    images: list[ImagePart] = []
    for number, output in enumerate(outputs, 1):
        text = output_text(output)
        found, notes = images_from_bundle(output.get("data") or {}, f"{label} output {number}")
        images.extend(found)
        texts.extend(t for t in (text, *notes) if t)
    return texts, images


class StopWatch:
    """Interrupts the cell once a Stop covers the turn, from a thread of its own: the
    running cell holds the loop, where the turn's cancel would otherwise wait."""

    def __init__(self, shell: Any, cell_id: str, stop_if_covered: Any) -> None:
        self._shell = shell
        self._cell_id = cell_id
        self._stop_if_covered = stop_if_covered
        self._finished = threading.Event()
        self.interrupted = False
        threading.Thread(target=self._watch, name="crush-run-cell-stop", daemon=True).start()

    def finish(self) -> None:
        """The cell has run: stop watching."""
        self._finished.set()

    def finish_unless_stopped(self) -> None:
        """The wait for the cell ended early: after a Stop, keep watching, to interrupt the
        cell if it still runs or is still to run; on anything else, stop watching."""
        try:
            self._stop_if_covered()
        except asyncio.CancelledError:
            return
        self.finish()

    def _watch(self) -> None:
        stopped_at: float | None = None
        started = False
        while not self._finished.wait(STOP_POLL):
            cells = notebook_state.get(self._shell)
            running = cells is not None and cells.executing_cell == self._cell_id
            if started and not running:
                return  # it ran to its end before any Stop reached it
            started = started or running
            if stopped_at is None:
                try:
                    self._stop_if_covered()
                    continue
                except asyncio.CancelledError:  # a Stop covers the turn
                    stopped_at = time.monotonic()
            if interrupt_cell(self._shell, self._cell_id):
                self.interrupted = True
                return
            if time.monotonic() - stopped_at > QUEUED_STOP_LIMIT:
                return


def summarize(args: dict[str, Any]) -> str:
    """The permission prompt names the cell."""
    return f"run cell {args.get('cell_id', '?')}"
