"""The tools the agent can call in a notebook, and :func:`default_tools`, which makes them.

Their protocol (``Tool``, ``ToolResult``, the permission requests) is in
:mod:`jupyter_crush.core.tools`; the permission policy in :mod:`.permissions`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..core.questions import QuestionAsker
from ..core.tools import Tool, ToolContext

if TYPE_CHECKING:
    from .agent import AgentTool

#: Names :func:`default_tools` knows, in the order the model sees them.
DEFAULT_TOOL_NAMES = (
    "python",
    "variables",
    "notebook",
    "verify",
    "insert_cell",
    "edit_cell",
    "run_cell",
    "view",
    "glob",
    "grep",
    "ls",
    "write",
    "edit",
    "bash",
    "todos",
    "question",
    "fetch",
    "agent",
)


def default_tools(
    shell: Any = None,
    workspace: Any = None,
    *,
    include: Iterable[str] | None = None,
    python_timeout: float | None = None,
    bash_timeout: float | None = None,
    propose_cell: Callable[[str, ToolContext], Any] | None = None,
    cell_origin: Callable[[ToolContext], dict[str, Any]] | None = None,
    ask_questions: QuestionAsker | None = None,
    store_dir: Callable[[], str] | None = None,
    sub_agent: AgentTool | None = None,
) -> list[Tool]:
    """The notebook agent's tools.

    ``shell`` is the IPython shell whose namespace ``python`` and ``variables``
    use and whose notebook ``notebook`` reads (default: the running one; without one
    those tools and ``insert_cell`` are left out). ``workspace`` is the directory the
    file tools and ``bash`` are confined to (default: the kernel's working directory,
    which Jupyter sets to the notebook's folder); so is a notebook the ``notebook`` tool
    reads by path. ``include`` picks a subset by name.
    ``propose_cell`` replaces how ``insert_cell`` delivers code (see :mod:`.cells`).
    ``cell_origin`` makes the provenance metadata of an edit ``edit_cell`` makes.
    ``ask_questions`` shows the ``question`` tool's forms (without it nobody can answer).
    ``store_dir`` returns the transcript store's directory, which ``verify``'s fresh kernel
    replays ``%%crush`` cells from (default: where that kernel finds one by itself).
    ``sub_agent`` is the ``agent`` tool (see :mod:`.agent`); without it there is none.
    """
    from pathlib import Path

    from .cells import InsertCellTool
    from .edit_cell import EditCellTool
    from .fetch import FetchTool
    from .files import FileTools
    from .notebook import NotebookTool
    from .python import PythonTool
    from .question import QuestionTool
    from .run_cell import RunCellTool
    from .shell import BashTool
    from .todos import todos_tool
    from .variables import VariablesTool
    from .verify import VerifyTool
    from .workspace import Workspace

    if isinstance(include, str):
        raise TypeError(f"include must be a list of tool names, not the string {include!r}")
    for label, value in (("python_timeout", python_timeout), ("bash_timeout", bash_timeout)):
        if value is not None and not value > 0:
            raise ValueError(f"{label} must be a positive number of seconds, not {value!r}")
    wanted = DEFAULT_TOOL_NAMES if include is None else tuple(include)
    unknown = sorted(set(wanted) - set(DEFAULT_TOOL_NAMES))
    if unknown:
        raise ValueError(
            f"unknown tool name(s) {', '.join(unknown)}; "
            f"choose from {', '.join(DEFAULT_TOOL_NAMES)}"
        )
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    if isinstance(workspace, Workspace):
        space = workspace
    else:
        space = Workspace(Path(workspace) if workspace is not None else Path.cwd())

    files = FileTools(space)
    python = PythonTool(shell)
    if python_timeout is not None:
        python.timeout = python_timeout
    bash = BashTool(space.root)
    if bash_timeout is not None:
        bash.timeout = bash_timeout
    makers: dict[str, Callable[[], Tool]] = {
        "view": files.view_tool,
        "glob": files.glob_tool,
        "grep": files.grep_tool,
        "ls": files.ls_tool,
        "write": files.write_tool,
        "edit": files.edit_tool,
        "bash": bash.tool,
        "todos": todos_tool,
        "question": QuestionTool(ask_questions).tool,
        "fetch": FetchTool().tool,
    }
    if sub_agent is not None:  # the agent that runs it is made after its tools
        makers["agent"] = sub_agent.tool
    if shell is not None:
        makers["python"] = python.tool
        makers["variables"] = VariablesTool(shell).tool
        makers["notebook"] = NotebookTool(shell, space).tool
        makers["verify"] = VerifyTool(shell, space, store_dir).tool
        makers["insert_cell"] = InsertCellTool(shell, propose_cell).tool
        makers["edit_cell"] = EditCellTool(shell, cell_origin).tool
        makers["run_cell"] = RunCellTool(shell).tool
    return [makers[name]() for name in DEFAULT_TOOL_NAMES if name in wanted and name in makers]
