"""The kernel's interrupt (■, SIGINT) cancels the running agents, also while the kernel is idle."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any


class InterruptCanceler:
    """Makes the kernel's interrupt (■, SIGINT) cancel running agents while the kernel is idle.

    ipykernel ignores SIGINT while idle (``SIG_IGN``) and swaps in Python's default
    handler only around each request it handles, restoring the saved handler after.
    So the handler goes where ipykernel restores from: ``kernel.saved_sigint_handler``
    when installed from inside a cell, else the process handler. The handler itself only
    schedules ``cancel_all`` with ``call_soon_threadsafe``: that wakes the loop out of its
    poll (a plain call would land only when something else woke it) and never takes the
    agent's lock inside a signal handler, where the interrupted code may hold it.
    """

    def __init__(self, cancel_all: Callable[[], None]) -> None:
        self._cancel_all = cancel_all
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None
        self._kernel: Any = None
        self._installed_in: str | None = None
        self.interrupts = 0

    def install(self, kernel: Any) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no kernel loop (terminal IPython): KeyboardInterrupt reaches the wait
        current = signal.getsignal(signal.SIGINT)
        if (
            kernel is not None
            and current is signal.default_int_handler
            and hasattr(kernel, "saved_sigint_handler")
        ):
            self._kernel = kernel
            self._previous = kernel.saved_sigint_handler
            kernel.saved_sigint_handler = self._handle
            self._installed_in = "kernel"
        else:
            try:
                self._previous = signal.signal(signal.SIGINT, self._handle)
            except ValueError:
                return  # not the main thread: leave interrupts to the kernel
            self._installed_in = "process"

    def uninstall(self) -> None:
        if self._installed_in == "kernel":
            if self._kernel.saved_sigint_handler is self._handle:
                self._kernel.saved_sigint_handler = self._previous
            elif signal.getsignal(signal.SIGINT) is self._handle:
                signal.signal(signal.SIGINT, self._previous)
        elif self._installed_in == "process" and signal.getsignal(signal.SIGINT) is self._handle:
            signal.signal(signal.SIGINT, self._previous)
        self._installed_in = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.interrupts += 1
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._cancel_all)
        previous = self._previous
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)


def interrupt_cell(shell: Any, cell_id: str) -> bool:
    """Interrupt the cell ``cell_id`` as ■ does (SIGINT to the kernel), if it is the cell
    executing now; False when it is not (still queued, or already finished).

    Called from any thread: a cell that runs holds the main thread and with it the loop.
    ■ during a cell also stops every agent run (``Crush``'s post-run hook); this interrupt
    stops only the run that asked for it, so the hook asks :func:`take_cell_interrupt`.
    """
    from . import state as notebook_state

    cells = notebook_state.get(shell)
    if cells is None or not cell_id or cells.executing_cell != cell_id:
        return False
    shell._jupyter_crush_interrupted_cell = cell_id
    os.kill(os.getpid(), signal.SIGINT)
    return True


def take_cell_interrupt(shell: Any) -> bool:
    """Whether :func:`interrupt_cell` interrupted the cell that ran last, forgetting it: the
    KeyboardInterrupt it raised there is an agent run's Stop, not the user's ■."""
    return shell.__dict__.pop("_jupyter_crush_interrupted_cell", None) is not None
