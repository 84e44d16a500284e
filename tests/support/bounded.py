"""Bounded waits for the tests: a broken rule fails the test instead of hanging it.

A run that never finishes, a queued prompt that is never handed off, a gate never reached:
under a broken rule each of these would keep a test waiting forever (and a mutation run
waiting for its per-mutant limit). The bounds are generous so a loaded machine never trips
them; no test asserts on how long anything took.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

BOUND = 10.0  # seconds: far above any quick test's wait on a loaded 2-core machine


async def within(awaitable: Awaitable[T], seconds: float = BOUND) -> T:
    """Await ``awaitable``, failing (instead of hanging) when a broken rule keeps it waiting."""
    return await asyncio.wait_for(awaitable, seconds)


async def until(condition: Callable[[], object], seconds: float = BOUND) -> None:
    """Poll ``condition`` on the loop until it holds, failing when it never comes to hold."""

    async def holds() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await within(holds(), seconds)
