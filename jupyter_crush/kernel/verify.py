"""``%crush verify`` in the kernel: a verify run in the background of the kernel's loop, like a
``%%crush`` run, with its own run view (progress, elapsed time, Stop); or, with ``--wait``
and in headless runs, a cell that waits and returns the report.

The run itself is :class:`~jupyter_crush.notebook.verify.VerifyRun`; the notebook is found as
the ``verify`` tool finds it (:mod:`jupyter_crush.tools.verify`). The report of the latest
run that ended is ``Crush.last_verify``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from IPython.core.error import UsageError

from ..notebook.verify import Limits, NotebookToVerify, Progress, VerifyRun
from ..tools.notebook import NotebookError
from ..tools.verify import find_notebook, ipython_names, notebook_at, ran_inputs
from .display import interactive, kernel_loop, should_wait, wait_for
from .errors import one_line

if TYPE_CHECKING:
    from ..notebook.verify_report import VerifyReport
    from ..view.verify import VerifyRunView
    from .crush import Crush

log = logging.getLogger(__name__)

#: The running verify tasks: the loop keeps only weak references to tasks.
_RUNNING: set[asyncio.Task[None]] = set()


@dataclass
class _Verify:
    """One ``%crush verify``: its run once the notebook is found, and how it ended."""

    stop_requested: bool = False
    run: VerifyRun | None = None
    report: VerifyReport | None = None
    error: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self) -> None:
        """The view's Stop or the kernel's interrupt (any thread)."""
        with self._lock:
            self.stop_requested = True
            run = self.run
        if run is not None:
            run.stop()

    def attach(self, run: VerifyRun) -> None:
        with self._lock:
            self.run = run
            stopped = self.stop_requested
        if stopped:
            run.stop()


def verify(
    crush: Crush,
    path: str | None = None,
    *,
    wait: bool = False,
    limits: Limits | None = None,
    live: bool = False,
) -> VerifyReport | None:
    """Verify ``path`` (default: the kernel's own notebook) in a fresh kernel; the report
    when the cell waits (``wait``, or headless), else None at once (the view follows it).
    Bad input raises UsageError in one line."""
    known = _notebook_at(Path(path).expanduser()) if path else None
    from ..view.verify import VerifyRunView

    loop = kernel_loop()
    state = _Verify()
    blocking = wait or should_wait(crush.config, crush.shell)
    view = VerifyRunView(
        known[0].path if known else "",
        on_stop=state.stop,
        loop=loop,
        redraw_rate=crush.config.redraw_rate,
    )
    view.interactive = interactive(crush.shell)
    crush.outputs.show(view, lambda _view: None)
    task = loop.create_task(
        _run(crush, view, state, known, limits or Limits(), live, blocking), name="crush-verify"
    )
    _RUNNING.add(task)
    # The kernel's interrupt (■) and %crush cancel --all stop it as they stop the agent.
    crush.other_runs.add(state.stop)
    crush.ensure_interrupt_handler()

    def ended(task: asyncio.Task[None]) -> None:
        _RUNNING.discard(task)
        crush.other_runs.discard(state.stop)

    task.add_done_callback(ended)
    if not blocking:
        return None
    if view.interactive:
        view.stop_with_interrupt()
    wait_for(loop, view, state.stop)
    if state.error:
        raise UsageError(state.error)
    return state.report


def _notebook_at(path: Path) -> tuple[NotebookToVerify, dict[str, str]]:
    try:
        return notebook_at(path)
    except NotebookError as error:
        raise UsageError(f"%crush verify: {error}") from None


async def _run(
    crush: Crush,
    view: VerifyRunView,
    state: _Verify,
    known: tuple[NotebookToVerify, dict[str, str]] | None,
    limits: Limits,
    live: bool,
    returned: bool,
) -> None:
    try:
        if known is None:
            try:
                known = await find_notebook(crush.shell, store_dir=crush.config.data_dir)
            except NotebookError as error:
                state.error = f"%crush verify: {error}"
                view.fail(state.error)
                return
        notebook, env = known
        view.begin(notebook.path or "the notebook", notebook.kernel)

        def progress(at: Progress) -> None:
            view.progress(at.number, at.total)

        run = VerifyRun(
            notebook,
            env=env,
            limits=limits,
            live=live,
            namespace=crush.shell.user_ns,
            ignore=ipython_names(crush.shell),
            ran=ran_inputs(crush.shell),
            on_progress=progress,
        )
        state.attach(run)
        report = await run.run()
    except Exception as error:  # the view must end, whatever broke
        log.exception("%crush verify failed")
        state.error = f"%crush verify failed: {one_line(error)}"
        view.fail(state.error)
        return
    state.report = crush.last_verify = report
    verdict = report.outcome
    if report.outcome == "failed" and report.failure is not None:
        verdict += f" at cell {report.failure.index}"
    text = "" if returned else report.to_text()
    markdown = "" if returned else report.to_markdown()
    view.show_report(verdict, text, markdown, report.ok)
