"""What the kernel observes about the notebook's cells as they run.

IPython's ``pre_run_cell``/``post_run_cell`` hooks tell us which cell runs now (its id,
which JupyterLab, Notebook 7 and nbclient send with each execute request), which
executions failed and with what, and the last error worth fixing. The ``notebook`` tool
and ``%crush fix`` read it; nothing here is computed until they ask, so a cell pays one
attribute write and, when it fails, one dict entry.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: Failed executions remembered for the notebook tool (execution count -> one line).
MAX_ERRORS = 500


@dataclass
class CellError:
    """An exception a cell raised, with what is needed to explain it."""

    execution_count: int | None
    cell_id: str
    source: str
    exception: BaseException
    #: The traceback the kernel showed under the cell (ipykernel keeps it), so it is not
    #: formatted twice: formatting one that runs through pandas takes ~0.2 s.
    shown_traceback: list[str] | None = None

    @property
    def type_name(self) -> str:
        return type(self.exception).__name__

    @property
    def message(self) -> str:
        return str(self.exception)

    def summary(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name

    def traceback_text(self, shell: Any) -> str:
        """The traceback as IPython shows it (with the cell's lines), without colours."""
        exc = self.exception
        try:
            lines = self.shown_traceback or shell.InteractiveTB.structured_traceback(
                type(exc), exc, exc.__traceback__
            )
            return _ANSI.sub("", "\n".join(lines)).strip()
        except Exception:  # IPython's formatter failing must not hide the error itself
            import traceback

            return "".join(traceback.format_exception(exc)).strip()


class NotebookState:
    """The cell running now and the errors of cells run so far (written by the hooks,
    read by tools on the same loop thread)."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.executing_cell = ""  # id of the cell running now; '' between cells
        self.errors: dict[int, str] = {}  # execution count -> "Type: message"
        self.last_error: CellError | None = None
        self._info: Any = None

    def pre_run_cell(self, info: Any) -> None:
        self._info = info
        self.executing_cell = getattr(info, "cell_id", None) or ""

    def post_run_cell(self, result: Any) -> None:
        info = getattr(result, "info", None) or self._info
        self.executing_cell = ""
        exc = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
        if exc is None or isinstance(exc, KeyboardInterrupt):
            return
        source = getattr(info, "raw_cell", "") or ""
        if is_crush_cell(source):
            return  # a %crush usage error is not the user's code to fix
        count = getattr(result, "execution_count", None)
        # ipykernel resets _last_traceback when a cell starts, so a list here is this cell's.
        shown = getattr(self.shell, "_last_traceback", None)
        cell_id = getattr(info, "cell_id", None) or ""
        error = CellError(count, cell_id, source, exc, shown if isinstance(shown, list) else None)
        self.last_error = error
        if count is not None:
            if len(self.errors) >= MAX_ERRORS:
                del self.errors[next(iter(self.errors))]
            self.errors[count] = error.summary()


def is_crush_cell(source: str) -> bool:
    return source.lstrip().startswith(("%crush", "%%crush"))


def install(shell: Any) -> NotebookState:
    """Start observing ``shell``'s cells (once per shell)."""
    state = get(shell)
    if state is None:
        state = NotebookState(shell)
        shell._jupyter_crush_cells = state
        shell.events.register("pre_run_cell", state.pre_run_cell)
        shell.events.register("post_run_cell", state.post_run_cell)
    return state


def uninstall(shell: Any) -> None:
    state = get(shell)
    if state is None:
        return
    hooks = (("pre_run_cell", state.pre_run_cell), ("post_run_cell", state.post_run_cell))
    for event, hook in hooks:
        with contextlib.suppress(ValueError):  # already unregistered
            shell.events.unregister(event, hook)
    del shell._jupyter_crush_cells


def get(shell: Any) -> NotebookState | None:
    return getattr(shell, "_jupyter_crush_cells", None)


def prompt_cell(shell: Any) -> str:
    """The id of the cell whose request the current task serves, or ''.

    ipykernel 7 keeps the parent request in a context variable, and a run's task copies
    the context of the ``%%crush`` cell that started it, so inside a run this is the
    prompt's cell even after that cell has finished. ipykernel 6 keeps only the newest
    request: there it is the cell executing last.
    """
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return ""
    try:
        parent = kernel.get_parent("shell") or {}
    except Exception:
        return ""
    return str((parent.get("metadata") or {}).get("cellId") or "")
