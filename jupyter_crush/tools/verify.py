"""The ``verify`` tool, and finding the notebook a verify run checks.

The tool runs the user's notebook top to bottom in a fresh kernel
(:class:`~jupyter_crush.notebook.verify.VerifyRun`) and answers with the report: the first
failing cell, outputs that came out differently, names only the user's kernel has. It changes
nothing the user has (the cells are copies, the fresh kernel is the run's own), so it asks no
permission; a Stop of the turn stops the run and kills its kernel.

:func:`find_notebook` is shared with ``%crush verify``: the live document when the
JupyterLab / Notebook 7 extension answers (unsaved edits count), else the kernel's notebook
file, else the ``path`` given.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.model import ToolSpec
from ..core.output import MAX_OUTPUT_CHARS, clean
from ..core.remote import store_place
from ..core.tools import Tool, ToolContext, ToolResult
from ..notebook.verify import Limits, NotebookToVerify, VerifyRun, kernel_name_for
from .notebook import NotebookError, kernel_notebook_path, live_document, load_ipynb
from .workspace import Workspace, WorkspaceError

DESCRIPTION = """\
Run the user's notebook top to bottom in a fresh kernel of the same kernelspec, in the \
notebook's folder, without touching the user's kernel or the notebook, and report: each \
cell's time, the first failing cell (exception, traceback, and whether it ran in the user's \
kernel), cells whose saved outputs differ from the fresh run, and names the user's kernel \
has that no cell defines (hidden state: a deleted or renamed cell). %%crush cells replay \
from the transcript; one that would need the model is skipped with a note. Use it after \
editing cells to check the notebook still runs from scratch. Optional: `path` (another \
.ipynb in the workspace), `cell_timeout` (seconds, default 120)."""

NO_NOTEBOOK = (
    "no notebook to verify: no JupyterLab page answered and this kernel was not started for "
    "a saved notebook (JPY_SESSION_NAME); name one: %crush verify PATH.ipynb"
)


def notebook_at(path: Path) -> tuple[NotebookToVerify, dict[str, str]]:
    """The notebook file at ``path`` and its fresh kernel's environment: the user's, with
    ``JPY_SESSION_NAME`` naming that notebook as Jupyter would. Raises
    :class:`NotebookError` in one line."""
    document = load_ipynb(path)
    env = {**os.environ, "JPY_SESSION_NAME": str(path)}
    notebook = NotebookToVerify(
        [c for c in document["cells"] if isinstance(c, dict)],
        path.parent,
        str(path),
        "file on disk",
        kernel_name_for(document.get("metadata") or {}),
    )
    return notebook, env


async def find_notebook(
    shell: Any, *, store_dir: str | None = None
) -> tuple[NotebookToVerify, dict[str, str]]:
    """The kernel's own notebook, its live document's cells when a page answers (else its
    file's), and the fresh kernel's environment: the user's, unchanged but for
    ``CRUSH_DATA_DIR`` when the user's store (``store_dir``) is not where the fresh kernel
    would look. Raises :class:`NotebookError` in one line."""
    env = dict(os.environ)
    file = kernel_notebook_path(shell)
    saved = load_ipynb(file) if file is not None and file.exists() else None
    metadata = (saved or {}).get("metadata") or {}
    folder = file.parent if saved is not None and file is not None else Path.cwd()
    reply = await live_document(shell)
    if reply is not None:
        source = "live document"
        if reply.get("dirty"):
            source += ", unsaved changes included"
        cells = reply["cells"]
        shown = str(reply.get("path") or file or "")
    elif saved is not None:
        source, cells, shown = "file on disk", saved["cells"], str(file)
    else:
        raise NotebookError(NO_NOTEBOOK)
    if store_dir is not None:
        own = Path(store_dir).expanduser().absolute()
        found = Path(store_place(env, cwd=folder).path).expanduser()
        if (folder / found).absolute() != own:
            env["CRUSH_DATA_DIR"] = str(own)  # %config data_dir: the fresh kernel needs it said
    cells = [c for c in cells if isinstance(c, dict)]
    return NotebookToVerify(cells, folder, shown, source, kernel_name_for(metadata)), env


def ipython_names(shell: Any) -> set[str]:
    """Names IPython itself puts in the user's namespace (In, Out, exit, get_ipython, …)."""
    return set(getattr(shell, "user_ns_hidden", None) or ())


def ran_inputs(shell: Any) -> list[str]:
    """What the user's kernel ran, as typed, by execution count (``In``)."""
    history = getattr(shell, "history_manager", None)
    return list(getattr(history, "input_hist_raw", None) or ())


@dataclass
class VerifyTool:
    """Verifies the notebook of ``shell``; a ``path`` is confined to ``workspace``."""

    shell: Any
    workspace: Workspace
    #: The user's transcript store (the fresh kernel replays %%crush cells from it).
    store_dir: Callable[[], str] | None = None
    limit: int = MAX_OUTPUT_CHARS
    limits: Limits = field(default_factory=Limits)

    def tool(self) -> Tool:
        spec = ToolSpec(
            name="verify",
            description=DESCRIPTION,
            parameters={
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Another .ipynb in the workspace."},
                    "cell_timeout": {
                        "type": "number",
                        "description": "Seconds a cell may run (default 120).",
                    },
                },
                "additionalProperties": False,
            },
        )
        return Tool(spec=spec, run=self.run)

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        path, timeout = args.get("path"), args.get("cell_timeout", self.limits.cell_timeout)
        if path is not None and not isinstance(path, str):
            return ToolResult(f"verify: 'path' must be a string, not {path!r}", True)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            return ToolResult("verify: 'cell_timeout' must be a positive number of seconds", True)
        try:
            if path:
                notebook, env = notebook_at(self.workspace.resolve(path))
            else:
                store = self.store_dir() if self.store_dir is not None else None
                notebook, env = await find_notebook(self.shell, store_dir=store)
        except (NotebookError, WorkspaceError) as error:
            return ToolResult(f"verify: {error}", True)
        run = VerifyRun(
            notebook,
            env=env,
            limits=Limits(float(timeout), self.limits.total_timeout),
            namespace=getattr(self.shell, "user_ns", None),
            ignore=ipython_names(self.shell),
            ran=ran_inputs(self.shell),
        )
        ctx.stop_if_covered()
        report = await run.run()  # a Stop of the turn cancels it here, and kills the kernel
        return ToolResult(
            clean(report.to_text(), self.limit, what="verify report"),
            metadata={"verify": report.to_dict()},
        )
