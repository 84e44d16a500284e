"""The undo under a run's answer: "changed: 2 cells, 3 variables, 1 file — Undo", and what the
undo said (the kernel's side is :mod:`jupyter_crush.kernel.undo`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: What the Undo button does, on the loop: gets the view's way of saying what the undo did.
UndoAction = Callable[[Callable[[str], None]], None]


class UndoOffer:
    """What a turn changed, its Undo button's action and what the undo said.

    Offered on the loop thread at the end of a turn that changed something; the first
    click takes the action, on whichever thread delivered it.
    """

    def __init__(self, redraw: Callable[[], None]) -> None:
        self._redraw = redraw
        #: "changed: 2 cells, 3 variables, 1 file"; "" while nothing is offered. Loop thread.
        self.changes = ""
        #: What the undo did, or why it did nothing ("" until it ran). Loop thread.
        self.note = ""
        self._action: UndoAction | None = None

    def offer(self, summary: str, action: UndoAction) -> None:
        """At the end of a turn that changed something (loop thread, before its Finished):
        what it changed, and what its Undo button does."""
        self.changes = summary
        self._action = action

    def request(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """The Undo click, on whichever thread delivered it: one undo per offer, run on the
        loop (never beside a turn of the session: the undo waits for one that runs)."""
        action, self._action = self._action, None
        if action is None or loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(action, self.say)

    def say(self, note: str) -> None:
        """What the undo did, or why it did nothing (loop thread)."""
        self.note = note
        self._redraw()
