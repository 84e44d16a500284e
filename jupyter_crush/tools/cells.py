"""The ``insert_cell`` tool: propose code as a new notebook cell, never run it.

By default the code goes through IPython's ``set_next_input`` payload. In
Jupyter that payload rides on the reply of the ``execute_request`` the kernel
finishes next, and the front end inserts the new cell below that cell: below a
blocking ``%%crush --wait`` cell (or any cell that was executing meanwhile),
and for a background run below the next cell the user executes. A front end
with a better channel (a comm to the JupyterLab extension, a button in the run
widget) passes its own ``propose`` callable; the notebook's kernel passes
:func:`jupyter_crush.notebook.provenance.cell_proposer`, which inserts the cell through the
JupyterLab extension with metadata naming where it came from.
The result's metadata always carries the code as ``proposed_cell`` so a run
view can offer it directly.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..core.model import ToolSpec
from ..core.tools import Tool, ToolContext, ToolResult

#: Delivers proposed code to the user; returns (or resolves to) a sentence saying where
#: it went.
CellProposer = Callable[[str, ToolContext], str | Awaitable[str]]

MAX_CELL_CHARS = 100_000

DESCRIPTION = """\
Propose Python code to the user as a new cell in their notebook. The code is NOT run: \
the user reviews it and runs it themselves. Use it for the final, reusable result of \
your work (a cleaning function, a plot the user asked for), after you have checked \
the code with the python tool. The code must be complete and syntactically valid."""


@dataclass
class InsertCellTool:
    shell: Any
    propose: CellProposer | None = None

    def tool(self) -> Tool:
        spec = ToolSpec(
            name="insert_cell",
            description=DESCRIPTION,
            parameters={
                "type": "object",
                "properties": {
                    "code": {"type": "string", "description": "Source of the new cell."},
                },
                "required": ["code"],
                "additionalProperties": False,
            },
        )
        return Tool(spec=spec, run=self.run, changes_state=True, summarize=summarize)

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        code = args.get("code")
        if not isinstance(code, str) or not code.strip():
            return ToolResult("insert_cell: 'code' must be a non-empty string of Python", True)
        if len(code) > MAX_CELL_CHARS:
            return ToolResult(
                f"insert_cell: the cell is {len(code)} characters; keep it under "
                f"{MAX_CELL_CHARS} (move long code into a module with write)",
                True,
            )
        problem = self._syntax_problem(code)
        if problem:
            return ToolResult(f"insert_cell: the code does not parse: {problem}; fix it", True)
        if self.propose is not None:
            where = self.propose(code, ctx)
            if inspect.isawaitable(where):
                where = await where
        elif self.shell is not None:
            self.shell.set_next_input(code, replace=False)
            where = (
                "It will appear as a new cell below the cell the kernel finishes executing next."
            )
        else:
            return ToolResult("insert_cell: no notebook is attached to this agent", True)
        lines = len(code.splitlines())
        return ToolResult(
            f"Proposed a {lines}-line cell to the user (not run). {where}",
            metadata={"proposed_cell": code},
        )

    def _syntax_problem(self, code: str) -> str:
        source = code
        transform = getattr(self.shell, "transform_cell", None)
        try:
            if transform is not None:
                source = transform(code)
            ast.parse(source)
        except SyntaxError as exc:
            return f"{exc.msg} (line {exc.lineno})"
        return ""


def summarize(args: dict[str, Any]) -> str:
    """The permission prompt shows the exact cell."""
    return str(args.get("code", ""))
