"""``%%crush --fix`` and ``%crush fix`` (:mod:`jupyter_crush.commands.fix`): ask the agent to
fix the last error.

The prompt carries the last error a cell raised in this kernel (exception type and
message, the traceback as IPython printed it, the failing cell's source) as an
attachment, plus the user's optional instruction. It is an ordinary prompt of the current
session: it queues behind a running one, Stop cancels it, the transcript keeps it. With
``-f code`` the answer's corrected cell goes into a new cell below, not run, carrying the
provenance metadata (:mod:`jupyter_crush.notebook.provenance`). Without a recent error nothing is
sent and the cell says so in one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..agent.calls import Attachment
from ..core.output import clean
from ..notebook import state as notebook_state
from ..notebook.state import CellError
from .submit import submit

if TYPE_CHECKING:
    from ..view.base import RunView
    from .crush import Crush

NO_ERROR = "No recent error to fix: run the failing cell, then %crush fix."
# Errors are seen from the moment the extension is loaded; one raised before needs its
# cell run again.
#: Bounds of what is attached: a huge cell or a deep recursion's traceback keep head + tail.
SOURCE_CHARS = 12_000
TRACEBACK_CHARS = 12_000

_ASK = (
    "Fix the error in my notebook: the failing cell, the exception and its traceback are "
    "attached. Say in a sentence or two what caused it, then give the corrected cell."
)
_ASK_CODE = (
    "Fix the error in my notebook: the failing cell, the exception and its traceback are "
    "attached. Answer with the complete corrected cell as a single ```python block (it "
    "replaces the failing cell, so keep everything the cell must still do), preceded by "
    "one sentence on the cause."
)


def last_error(shell: Any) -> CellError | None:
    """The last error a cell raised in this kernel (not a ``%crush`` line's own)."""
    state = notebook_state.get(shell)
    return state.last_error if state is not None else None


def error_attachment(shell: Any, error: CellError) -> Attachment:
    """The attachment: where the error came from, the cell, the exception, the traceback."""
    where = f"In [{error.execution_count}]" if error.execution_count is not None else "a cell"
    if error.cell_id:
        where += f", cell id {error.cell_id}"
    source = error.source.rstrip() or "(empty cell)"
    parts = [
        f"Failing cell ({where}):",
        clean(source, SOURCE_CHARS, what="source"),
        "",
        f"Exception: {error.summary()}",
        "",
        "Traceback:",
        clean(error.traceback_text(shell), TRACEBACK_CHARS, what="traceback"),
    ]
    return Attachment("error", "\n".join(parts))


def fix_prompt(instruction: str, code: bool) -> str:
    prompt = _ASK_CODE if code else _ASK
    instruction = instruction.strip()
    return f"{prompt}\n\n{instruction}" if instruction else prompt


def submit_fix(crush: Crush, instruction: str = "", **options: Any) -> RunView | None:
    """Send the fix request through :func:`~.submit.submit` (same options); None without an
    error."""
    error = last_error(crush.shell)
    if error is None:
        print(NO_ERROR)
        return None
    prompt = fix_prompt(instruction, options.get("fmt") == "code")
    if crush.current_session_id is None and not options.get("session_ref"):
        # A first prompt titles its session by its first line; this one says what it fixes.
        options.update(new=True, session_ref=f"fix {error.type_name}")
    attachments = [error_attachment(crush.shell, error), *options.pop("attachments", ())]
    return submit(crush, prompt, attachments=attachments, **options)
