"""An asyncio event loop on virtual time, which counts the timers it is asked for.

Minutes of timers run in milliseconds: when the loop would wait for its next timer, the
clock jumps to it instead (I/O that is ready still runs first). The store under test takes
the same clock (``TranscriptStore(clock=loop.time)``), so its deadlines and the loop's
agree. ``timers_scheduled(owner)`` counts the ``call_at``/``call_later`` calls whose
callback is a method of ``owner``; ``timers_pending(owner)`` those neither run nor canceled
yet (the loop's own sleeps are timers too, hence the owner).
"""

from __future__ import annotations

import asyncio
import selectors
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """Never sleeps: a wait for ``timeout`` seconds moves the loop's clock on instead."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        super().__init__()
        self._advance = advance

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if not ready and timeout:
            self._advance(timeout)
        return ready


class CountingLoop(asyncio.SelectorEventLoop):
    """A real event loop that counts the timers each owner asks for."""

    def __init__(self, selector: selectors.BaseSelector | None = None) -> None:
        self._scheduled_by: Counter[int] = Counter()  # id(owner) -> timers asked for
        super().__init__(selector)

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        self._scheduled_by[id(getattr(callback, "__self__", None))] += 1
        return super().call_at(when, callback, *args, context=context)

    def timers_scheduled(self, owner: object) -> int:
        return self._scheduled_by[id(owner)]

    def timers_pending(self, owner: object) -> int:
        return sum(
            1
            for handle in self._scheduled
            if not handle.cancelled() and getattr(handle._callback, "__self__", None) is owner
        )


class VirtualTimeLoop(CountingLoop):
    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_JumpingSelector(self._advance))

    def _advance(self, seconds: float) -> None:
        self._now += seconds

    def time(self) -> float:
        return self._now


def run_virtual(main: Callable[[VirtualTimeLoop], Coroutine[Any, Any, T]]) -> T:
    """Run ``main(loop)`` to completion on a fresh virtual-time loop, then close it."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
