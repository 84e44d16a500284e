"""How a ``%%crush`` run is shown in its cell and, when the cell blocks, awaited.

A run's :class:`~jupyter_crush.view.base.RunView` is displayed with a display id; when the run
ends the live view is replaced by its static answer, through the cell it belongs to or,
for a run that outlived its cell, the cell running then (:class:`CellOutputs`). A cell
waits for its answer when asked to, or when no front end can watch (:func:`should_wait`),
still serving the kernel's loop meanwhile (:func:`wait_for`).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..core.changes import NO_CHANGES
from ..core.events import Finished, Folded, Started
from ..core.message import FinishReason
from .code_blocks import offer_code_blocks
from .edit_review import offer_edit_review

if TYPE_CHECKING:
    from ..core.model import Model
    from ..view.base import RunView
    from .config import CrushConfig
    from .crush import Crush

_CODE_BLOCK = re.compile(r"^```[ \t]*([\w+.-]*)[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_PYTHON_FENCES = {"", "python", "py", "python3", "ipython", "ipython3"}


def run_view_class(name: str) -> type[RunView]:
    """The view class of ``CrushConfig.run_view``."""
    if name == "widgets":
        from ..view.widgets import WidgetsRunView

        return WidgetsRunView
    from ..view.delta import DeltaRunView

    return DeltaRunView


def kernel_loop() -> asyncio.AbstractEventLoop:
    """The loop the kernel runs cells on, where every run and its view live."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        # Terminal IPython and plain InteractiveShell run cells without a running loop;
        # IPython's own persistent loop is the one its autoawait uses.
        from IPython.core.async_helpers import get_asyncio_loop

        return get_asyncio_loop()


class RunTracker:
    """Observer wrapper: keeps the broker's session → view map current, then forwards."""

    def __init__(self, crush: Crush, view: RunView, yolo: bool, model: Model, prompt: str) -> None:
        self._crush = crush
        self._view = view
        self._yolo = yolo
        self._model = model
        self._prompt = prompt
        self._prompt_id = ""  # the turn's prompt message, once it starts
        offer_code_blocks(crush, view, kernel_loop())
        offer_edit_review(crush, view)

    def on_event(self, event: Any) -> None:
        session_id = self._view.session_id
        crush = self._crush
        if isinstance(event, Started):
            self._prompt_id = event.user_message_id
            crush.undo.log_for(session_id, self._prompt_id)  # its tools report to it
            crush.views[session_id] = self._view
            crush.turn_models[session_id] = self._model
            if self._yolo:
                crush.yolo_sessions.add(session_id)
        elif isinstance(event, Folded) and session_id in crush.turn_models:
            # The running turn's model answers a folded prompt: the status line names it (and
            # for a replay, the recorded prompt it answers).
            from ..providers.replay import for_prompt

            model, note = for_prompt(crush.turn_models[session_id], self._prompt)
            self._view.labels = replace(
                self._view.labels, model=f"{model.provider}:{model.name}", replay=note
            )
        elif isinstance(event, Finished):
            if crush.views.get(session_id) is self._view:
                del crush.views[session_id]
                del crush.turn_models[session_id]
            # Records the disk refused stay in memory; the status line says so.
            pending = crush.store.pending_writes(session_id)
            self._view.set_store_note("; ".join(str(p) for p in pending))
            offer_undo(crush, self._view, self._prompt_id)
        self._view.on_event(event)
        if isinstance(event, Finished):
            crush.undo.turn_ended(session_id)  # an undo waiting for this turn runs now


def offer_undo(crush: Crush, view: RunView, prompt_id: str) -> None:
    """At the end of a turn that changed something: the view's summary and Undo button."""
    summary = crush.undo.summary(view.session_id, prompt_id)
    if not summary:
        return

    def undo(say: Callable[[str], None]) -> None:
        if crush.undo.request(view.session_id, say):
            say("The session is busy; undo queued: it runs when its turn ends")

    view.undo.offer(summary, undo)


def interactive(shell: Any) -> bool:
    """Whether someone can watch and click: a front end that can answer input.

    nbclient (and so papermill and ``nbconvert --execute``) sends every
    execute_request with ``allow_stdin=False``; JupyterLab, Notebook and VS Code send
    ``True``. Without a kernel (terminal IPython) nothing renders the widget at all.
    """
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return False
    try:
        parent = kernel.get_parent("shell")
    except Exception:
        return True
    return bool((parent or {}).get("content", {}).get("allow_stdin", True))


def should_wait(config: CrushConfig, shell: Any) -> bool:
    """Whether a cell that says neither --wait nor --no-wait blocks until its answer."""
    mode = config.wait
    if mode == "always":
        return True
    if mode == "never":
        return False
    if os.environ.get("CRUSH_WAIT", "").strip().lower() in {"1", "true", "yes"}:
        return True
    return not interactive(shell)


def wait_for(loop: asyncio.AbstractEventLoop, view: RunView, cancel: Callable[[], None]) -> None:
    """Block the cell until the run is terminal, still serving the loop meanwhile.

    The magic runs inside the kernel's own execute handler, a task on the very loop
    that must keep streaming the answer; stdlib asyncio refuses to re-enter a running
    loop. nest-asyncio2 makes ``run_until_complete`` re-entrant on that loop, so the
    agent, its timers and the kernel's other handlers keep running while this cell
    waits. It is the maintained fork that ipykernel 7.4 itself applies (the archived
    nest-asyncio makes ipykernel warn); running the agent on a second thread instead
    would break the rule that the agent and its widget live on the loop thread.
    """
    if loop.is_running():
        import nest_asyncio2

        nest_asyncio2.apply(loop)
    while not view.is_finished:
        try:
            loop.run_until_complete(view.wait())
        except KeyboardInterrupt:
            # The kernel's ■ while this cell waits: stop the run, then wait for its
            # canceled record so the cell shows the final state.
            cancel()


def extract_code(markdown: str) -> str:
    """The Python code blocks of an answer, joined; '' when it has none."""
    blocks = [
        body.rstrip("\n")
        for lang, body in _CODE_BLOCK.findall(markdown)
        if lang.lower() in _PYTHON_FENCES
    ]
    return "\n\n".join(b for b in blocks if b.strip())


def code_to_next_cell(crush: Crush, view: RunView) -> None:
    """``-f code``: the answer's Python code as a new cell below (not run); none from a
    stopped turn, whose code is cut short where the Stop found it."""
    if view.finish_reason is FinishReason.CANCELED:
        return
    code = extract_code(view.answer_markdown)
    if code:
        from ..notebook.provenance import insert_answer_code

        turn = crush.undo.latest(view.session_id)  # the answer's turn: undo removes the cell
        insert_answer_code(crush.store, crush.shell, view.session_id, code, turn or NO_CHANGES)
