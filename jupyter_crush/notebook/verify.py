"""Run a notebook top to bottom in a fresh kernel and say what only the user's kernel had.

:class:`VerifyRun` starts a kernel of the notebook's kernelspec in the notebook's folder
with the environment it is given (the user's, unchanged), runs each code cell of the given
cells with nbclient's per-cell ``async_execute_cell`` on the running loop (so the user's
kernel stays free), and writes nothing back: the cells are copies. ``%%crush`` cells replay
from the store; without ``live`` the fresh kernel runs with ``CrushConfig.replay =
"verify"``, which refuses a cell only the model could answer (the cell is skipped with a
note) instead of asking it. The run stops at the first failing cell (a cell tagged
``raises-exception`` may fail), at a cell's timeout, at the overall timeout, when the kernel
dies, or on :meth:`VerifyRun.stop`; each ends in a :class:`VerifyReport` saying so. Stop and
the timeouts kill the kernel's process group at once; no process outlives :meth:`run`.

It needs only nbclient, the cells and the environment, so the ``verify`` tool
(:mod:`jupyter_crush.tools.verify`) and ``%crush verify`` both drive it.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import copy
import logging
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .defined_names import defined_names, hidden_names
from .verify_report import (
    NEEDS_MODEL,
    CellRun,
    Failure,
    OutputDifference,
    VerifyReport,
    differs,
    edited_cells,
    saved_state,
)

log = logging.getLogger(__name__)

#: Seconds a fresh kernel has to answer its first message.
STARTUP_TIMEOUT = 60.0
#: Seconds a finished run's kernel has to shut down cleanly (its store writes flushed).
SHUTDOWN_WAIT = 5.0

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: What the fresh kernel is asked for its names at the end (no output, no history).
_NAMES_EXPRESSION = "sorted(globals())"


@dataclass(frozen=True)
class NotebookToVerify:
    """The notebook as the user has it: its cells (with their saved outputs), where it lives
    and which kernelspec runs it."""

    cells: list[dict[str, Any]]
    folder: Path
    path: str  # as shown in the report ("" for a document never saved)
    source: str  # "live document", "live document, unsaved changes included", "file on disk"
    kernel: str


@dataclass(frozen=True)
class Limits:
    cell_timeout: float = 120.0
    total_timeout: float = 3600.0


@dataclass(frozen=True)
class Progress:
    """Where a run is: the code cell being run (``index`` in the notebook), counted from 1."""

    number: int
    total: int
    index: int


class VerifyRun:
    """One verify run (see the module docstring); :meth:`run` once, :meth:`stop` any time."""

    def __init__(
        self,
        notebook: NotebookToVerify,
        *,
        env: Mapping[str, str],
        limits: Limits | None = None,
        live: bool = False,
        namespace: Mapping[str, Any] | None = None,
        ignore: Iterable[str] = (),
        ran: Sequence[str] = (),
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.notebook = notebook
        self.env = dict(env)
        self.limits = limits or Limits()
        self.live = live
        # The user's names as they were when the run was asked for.
        self.namespace = dict(namespace) if namespace is not None else None
        self.ignore = set(ignore)
        # The user's kernel's raw inputs by execution count (In), to tell edited cells.
        self.ran = list(ran)
        self.on_progress = on_progress
        #: Set by stop(), from any thread.
        self.stopping = False
        self._stop_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self.km: Any = None  # the fresh kernel's manager while it runs
        self._kc: Any = None
        self._stderr: Any = None  # the fresh kernel's stderr, a temporary file

    # -- stop ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the run and kill its kernel (any thread; a no-op once it ended)."""
        with self._stop_lock:
            self.stopping = True
            loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopped.set)

    # -- the run -----------------------------------------------------------------------------

    async def run(self) -> VerifyReport:
        with self._stop_lock:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            if self.stopping:
                self._stopped.set()
        notebook = self.notebook
        code = [
            (index, cell)
            for index, cell in enumerate(notebook.cells)
            if cell.get("cell_type") == "code" and _source(cell).strip()
        ]
        report = VerifyReport(
            notebook.path, notebook.source, notebook.kernel, "passed", code_cells=len(code)
        )
        started = time.monotonic()
        names = defined_names((index, _source(cell)) for index, cell in code)
        report.notes.extend(names.notes)
        report.edited = edited_cells(code, self.ran)
        stop_wait = asyncio.ensure_future(self._stopped.wait())
        starting = asyncio.ensure_future(self._start())
        try:
            await asyncio.wait({starting, stop_wait}, return_when="FIRST_COMPLETED")
            await _cancelled(starting)  # Stop while the kernel starts: it need not finish
            if self.stopping:
                report.outcome, report.reason = "stopped", "stopped before the notebook ran"
                return report
            problem = starting.result()
            if problem:
                report.outcome, report.reason = "could not start", problem
                return report
            fresh_names = await self._run_cells(code, report, stop_wait)
            if self.namespace is not None:
                known = names.names | fresh_names
                report.hidden = hidden_names(self.namespace, known, self.ignore)
                report.notes.extend(_unreached_agent_cells(code, report))
            return report
        except asyncio.CancelledError:
            await self._kill()  # the caller was stopped (a turn's Stop): the kernel goes too
            raise
        finally:
            stop_wait.cancel()
            await _cancelled(starting)  # a kernel still starting must not start after this
            report.seconds = time.monotonic() - started
            await self._cleanup(clean=report.outcome in ("passed", "failed"))

    async def _start(self) -> str:
        """Start the fresh kernel; '' or why it cannot start, in one line."""
        from jupyter_client.kernelspec import NoSuchKernel
        from jupyter_client.manager import AsyncKernelManager

        name = self.notebook.kernel
        try:
            self.km = AsyncKernelManager(kernel_name=name)
            self.km.kernel_spec  # noqa: B018 (reading it finds the spec, or raises)
        except NoSuchKernel:
            self.km = None
            return (
                f"kernelspec {name!r} cannot start: no such kernelspec is installed "
                "(jupyter kernelspec list shows those that are)"
            )
        # Only an IPython kernel knows the flag (another language's might refuse to start).
        python = str(self.km.kernel_spec.language).lower() == "python"
        arguments = ["--CrushConfig.replay=verify"] if python and not self.live else []
        # Its output would land in the user's cell (ipykernel forwards the process's own
        # stderr); kept aside, its last line explains a kernel that cannot start.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by _cleanup)
        try:
            await self.km.start_kernel(
                cwd=str(self.notebook.folder),
                env=self.env,
                extra_arguments=arguments,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
            )
            self._kc = self.km.client()
            self._kc.start_channels()
            self._kc.allow_stdin = False  # headless, as nbclient runs: %%crush cells wait
            await self._kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
        except Exception as error:
            code = self._exit_code()
            exit_note = f" (exit code {code})" if code is not None else ""
            said = self._stderr_tail()
            said = f"; its last words: {said}" if said else ""
            return f"kernelspec {name!r} cannot start{exit_note}: {_one_line(error)}{said}"
        return ""

    def _stderr_tail(self) -> str:
        """The last line the fresh kernel wrote to its stderr ('' if none)."""
        log = self._stderr
        if log is None:
            return ""
        log.seek(0)
        lines = [line.strip() for line in log.read()[-4096:].decode(errors="replace").splitlines()]
        last = next((line for line in reversed(lines) if line), "")
        return _one_line(Exception(last)) if last else ""

    async def _run_cells(
        self,
        code: list[tuple[int, dict[str, Any]]],
        report: VerifyReport,
        stop_wait: asyncio.Future[Any],
    ) -> set[str]:
        """Run the cells in order until ``stop_wait`` is done or the total timeout (counted
        from here: the kernel's start has its own); fill ``report``; the fresh kernel's
        names at the end (empty when the run did not end in the kernel's own time)."""
        import nbformat
        from nbclient import NotebookClient

        runnable = [copy.deepcopy(cell) for _, cell in code]  # nothing goes back to the user's
        for cell in runnable:
            cell["source"] = _source(cell)  # a file's cells may keep it as a list of lines
            cell["outputs"], cell["execution_count"] = [], None
            cell.setdefault("metadata", {})
        document = nbformat.from_dict(
            {"cells": runnable, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        )
        replies: dict[int, dict[str, Any]] = {}
        client = NotebookClient(
            document,
            km=self.km,
            timeout=max(1, round(self.limits.cell_timeout)),
            allow_errors=True,
            kernel_name=self.notebook.kernel,
            log=log,  # not the kernel app's, whose stderr lands in the user's cell
            on_cell_executed=lambda cell_index, execute_reply, **_: replies.__setitem__(
                cell_index, execute_reply
            ),
        )
        client.kc = self._kc
        started = time.monotonic()
        cells = zip(code, document.cells, strict=True)
        for number, ((index, saved), cell) in enumerate(cells, start=1):
            if self.on_progress is not None:
                self.on_progress(Progress(number, len(code), index))
            ident = str(saved.get("id") or "")
            if _runs_verify(_source(saved)):  # a verify inside the verify would never end
                note = "runs %crush verify itself: not run in the fresh kernel"
                report.cells.append(CellRun(index, ident, 0.0, "skipped", note))
                continue
            began = time.monotonic()
            execution = asyncio.ensure_future(
                client.async_execute_cell(cell, number - 1, execution_count=number)
            )
            left = max(self.limits.total_timeout - (began - started), 0)
            try:
                await asyncio.wait(
                    {execution, stop_wait}, timeout=left, return_when="FIRST_COMPLETED"
                )
            except asyncio.CancelledError:
                await self._abandon(execution)
                raise
            run = CellRun(index, ident, time.monotonic() - began, "ok")
            if not execution.done():  # stopped, or out of time overall
                await self._abandon(execution)
                self._ended_early(report, run, None)
                return set()
            error = execution.exception()
            if error is not None:
                self._ended_early(report, run, error)  # reads a dead kernel's exit code
                await self._kill()
                return set()

            reply = (replies.get(number - 1) or {}).get("content", {})
            if not self._record(report, run, saved, cell, reply):
                break
        return await self._fresh_names(client)

    async def _abandon(self, execution: asyncio.Future[Any]) -> None:
        """Kill the kernel under a cell still running, and let nbclient's wait for it end."""
        await self._kill()
        execution.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await execution

    def _ended_early(self, report: VerifyReport, run: CellRun, error: BaseException | None) -> None:
        """The run ended during ``run``'s cell: stopped, out of time, or the kernel died."""
        from nbclient.exceptions import CellTimeoutError, DeadKernelError

        index, limits = run.index, self.limits
        if error is None and self.stopping:
            run.state, report.outcome = "stopped", "stopped"
            report.reason = f"stopped during cell {index}; the fresh kernel was shut down"
        elif error is None:
            run.state, report.outcome = "timeout", "timed out"
            report.reason = (
                f"the notebook ran longer than {limits.total_timeout:g} s (the overall timeout), "
                f"during cell {index}; the fresh kernel was shut down"
            )
        elif isinstance(error, CellTimeoutError):
            run.state, report.outcome = "timeout", "timed out"
            report.reason = (
                f"cell {index} ran longer than {limits.cell_timeout:g} s (the cell timeout); "
                "the fresh kernel was shut down"
            )
        elif isinstance(error, DeadKernelError):
            code = self._exit_code()
            run.state, report.outcome = "died", "kernel died"
            report.reason = f"the kernel died during cell {index}" + (
                f" (exit code {code})" if code is not None else ""
            )
        else:
            raise error  # not the notebook's doing: the caller says so
        report.cells.append(run)

    def _record(
        self,
        report: VerifyReport,
        run: CellRun,
        saved: dict[str, Any],
        cell: dict[str, Any],
        reply: dict[str, Any],
    ) -> bool:
        """Add one finished cell to ``report``; False when the run stops at it."""
        report.cells.append(run)
        if reply.get("status") == "error":
            ename, evalue = str(reply.get("ename", "")), str(reply.get("evalue", ""))
            if ename == "UsageError" and evalue.startswith(NEEDS_MODEL):
                why = evalue[len(NEEDS_MODEL) :].strip()
                run.state, run.note = (
                    "skipped",
                    f"skipped, it needs the model ({why}); --live asks it",
                )
                return True
            if "raises-exception" in (saved.get("metadata") or {}).get("tags", ()):
                run.note = "raised, as its raises-exception tag says"
                return True
            run.state = "error"
            traceback = "\n".join(_ANSI.sub("", line) for line in reply.get("traceback") or ())
            exception = f"{ename}: {evalue}" if evalue else ename
            report.failure = Failure(run.index, run.id, exception, traceback, saved_state(saved))
            report.outcome = "failed"
            return False
        if _source(saved).lstrip().startswith("%%crush"):
            replayed = _replay_note(cell.get("outputs") or [])
            if replayed:
                run.state, run.note = "replayed", replayed
        if saved.get("outputs") or saved.get("execution_count"):
            difference = differs(saved.get("outputs") or [], cell.get("outputs") or [])
            if difference is not None:
                report.differences.append(OutputDifference(run.index, run.id, *difference))
        return True

    async def _fresh_names(self, client: Any) -> set[str]:
        """The names the fresh kernel has now (none if it cannot say in time)."""
        try:
            msg_id = self._kc.execute(
                "", silent=True, store_history=False, user_expressions={"names": _NAMES_EXPRESSION}
            )
            reply = await asyncio.wait_for(client.async_wait_for_reply(msg_id), 10)
            text = reply["content"]["user_expressions"]["names"]["data"]["text/plain"]
            return set(ast.literal_eval(text))
        except Exception:  # another language's kernel, a slow one: the syntax alone decides
            return set()

    # -- the fresh kernel ---------------------------------------------------------------------

    def _exit_code(self) -> int | None:
        process = getattr(getattr(self.km, "provisioner", None), "process", None)
        return process.poll() if process is not None else None

    async def _kill(self) -> None:
        """Kill the fresh kernel's process group now."""
        km = self.km
        if km is not None and km.has_kernel:
            with contextlib.suppress(Exception):
                await km.shutdown_kernel(now=True)

    async def _cleanup(self, clean: bool) -> None:
        km, kc, log = self.km, self._kc, self._stderr
        self.km = self._kc = self._stderr = None
        if kc is not None:
            kc.stop_channels()
        if log is not None:
            log.close()
        if km is None:
            return
        try:
            if km.has_kernel:
                km.shutdown_wait_time = SHUTDOWN_WAIT
                await km.shutdown_kernel(now=not clean)  # also removes its connection file
            else:
                await km.cleanup_resources()
        except Exception:
            with contextlib.suppress(Exception):
                await km.shutdown_kernel(now=True)


async def _cancelled(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` if it still runs, and wait for it to end."""
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _source(cell: Mapping[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _unreached_agent_cells(
    code: list[tuple[int, dict[str, Any]]], report: VerifyReport
) -> list[str]:
    """A note when %%crush cells were not reached: the names their turns make (the python
    tool's) are known to neither the cells' syntax nor the fresh kernel."""
    last = report.cells[-1].index if report.cells else -1
    unreached = [
        str(index)
        for index, cell in code
        if index > last and _source(cell).lstrip().startswith("%%crush")
    ]
    if not unreached:
        return []
    return [
        f"%%crush cells {', '.join(unreached)} were not reached: names their turns make may "
        "be listed as hidden state"
    ]


def _runs_verify(source: str) -> bool:
    return any(line.strip().startswith("%crush verify") for line in source.splitlines())


def _replay_note(outputs: list[dict[str, Any]]) -> str:
    """The "replayed from …" part of a %%crush cell's status line, if it replayed."""
    for output in outputs:
        markdown = (output.get("data") or {}).get("text/markdown", "")
        text = "".join(markdown) if isinstance(markdown, list) else str(markdown)
        found = re.search(r"replayed from [^·\n]*", text)
        if found:
            return found.group(0).strip()
    return ""


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:299] + "…"


def kernel_name_for(metadata: Mapping[str, Any]) -> str:
    """The kernelspec a notebook names, else one running this very Python, else python3."""
    named = (metadata.get("kernelspec") or {}).get("name")
    if isinstance(named, str) and named:
        return named
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager()
    for name in sorted(specs.find_kernel_specs()):
        with contextlib.suppress(Exception):
            argv = specs.get_kernel_spec(name).argv
            if argv and Path(argv[0]).resolve() == Path(sys.executable).resolve():
                return name
    return "python3"
