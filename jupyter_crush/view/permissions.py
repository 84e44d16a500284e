"""Permission prompts in the run view: which choices a prompt offers, what it shows, and the
broker that asks in the view of the session's running prompt."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from ..core.tools import Decision, PermissionRequest

if TYPE_CHECKING:
    from .base import RunView


PERMISSION_CHOICES = (
    ("Allow", Decision.ALLOW),
    ("Allow for session", Decision.ALLOW_SESSION),
    ("Deny", Decision.DENY),
)


def permission_summary(request: PermissionRequest) -> str:
    """What a permission prompt shows the tool will do."""
    return request.summary or json.dumps(request.arguments, indent=2, ensure_ascii=False)


class WidgetPermissionBroker:
    """The UI end of permission prompts: asks in the run widget of the session's prompt.

    It sits behind :class:`~jupyter_crush.tools.permissions.PermissionPolicy`, which has
    already answered whatever needs no human (yolo, allowed tools, "Allow for session",
    headless runs). ``views`` maps a session id to the view of its active run; the magics
    keep it current.
    """

    def __init__(self, views: dict[str, RunView]) -> None:
        self._views = views

    async def ask(self, request: PermissionRequest) -> Decision:
        view = self._views.get(request.session_id)
        if view is None:
            # No view to click in (a run started from code): nobody can answer.
            return Decision.DENY
        loop = asyncio.get_running_loop()
        decided: asyncio.Future[Decision] = loop.create_future()

        def settle(decision: Decision) -> None:
            if not decided.done():
                decided.set_result(decision)

        def decide(decision: Decision) -> None:
            # Clicks can arrive on a subshell thread; the future belongs to the loop.
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, decision)

        remove = view.ask_permission(request, decide)
        try:
            return await decided
        finally:
            # Also on cancel (Stop while the prompt is open): the buttons go away.
            remove()
