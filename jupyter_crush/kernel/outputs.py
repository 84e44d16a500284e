"""Where each run's view is shown, and where its answer lands when the run ends."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..view.base import RunView


class CellOutputs:
    """Displays each run's view in its cell and puts the static answer there at its end."""

    def __init__(self) -> None:
        # The executing cell's context and a count of cells run; written by the shell's
        # pre/post_run_cell hooks and read in _finished, all on the loop thread.
        self._running_cell: contextvars.Context | None = None
        self._cell_serial = 0
        # Final displays of headless runs that ended between cells (see _finished).
        self._headless_updates: list[tuple[Any, dict[str, Any], RunView]] = []

    def show(self, view: RunView, on_finished: Callable[[RunView], None]) -> None:
        """Display ``view`` in the executing cell; at its end, ``on_finished`` then the answer."""
        from IPython.display import display

        handle = display(view, display_id=True)
        # The cell's context carries its parent header (ipykernel 7): updates sent in it
        # reach this cell's output, whichever task finishes the run.
        cell = (contextvars.copy_context(), self._cell_serial)

        def finished(view: RunView) -> None:
            on_finished(view)
            self._finished(view, handle, cell)

        view.on_finished(finished)

    def _finished(self, view: RunView, handle: Any, cell: tuple[contextvars.Context, int]) -> None:
        if handle is None:
            view.close()
            return
        # Replace the live widget by the static answer: a notebook reopened without a
        # kernel (or without saved widget state) still shows what the agent said.
        context, serial = cell
        if view.offers_undo:
            # The Undo button stays under the answer, so the view does too; the bundle
            # carries the static answer for a page without the kernel.
            shown = view._repr_mimebundle_()
            context.run(handle.update, shown[0] if isinstance(shown, tuple) else shown, raw=True)
            return
        bundle = view.static_bundle()
        context.run(handle.update, bundle, raw=True)
        if view.interactive or serial == self._cell_serial:
            view.close()  # after the update: the page drops the view before the models
            return
        # nbclient only reads messages of the cell it is executing, so a run that ends
        # after its own cell (a --no-wait prompt) is also updated through the cell running
        # now, or else the next one; nbclient applies a display update to every output
        # with that display id.
        running = self._running_cell
        if running is not None:
            running.run(handle.update, bundle, raw=True)
            view.close()
        else:
            self._headless_updates.append((handle, bundle, view))

    def pre_run_cell(self) -> None:
        """Called inside the executing cell's context: remember it (see _finished)."""
        self._cell_serial += 1
        self._running_cell = contextvars.copy_context()
        updates, self._headless_updates = self._headless_updates, []
        for handle, bundle, view in updates:
            handle.update(bundle, raw=True)
            view.close()

    def post_run_cell(self) -> None:
        self._running_cell = None
