"""Per-prompt permission choices in front of the kernel's PermissionPolicy."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

from ..core.tools import Decision

if TYPE_CHECKING:
    from .crush import Crush

# Whether the permission prompt being decided has nobody to answer it. Set by
# CellPermissions around each policy.ask; a ContextVar so concurrent runs in other
# sessions (other tasks) each see their own value.
ASKING_HEADLESS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "crush_asking_headless", default=False
)


class CellPermissions:
    """Per-prompt permission choices in front of the kernel's PermissionPolicy.

    ``%%crush --yolo`` and ``CrushConfig.yolo`` allow at once; otherwise the policy decides,
    told whether the prompt's cell came from a front end that can click (a run started by
    nbclient cannot answer a prompt, so it is denied rather than left hanging).
    """

    def __init__(self, crush: Crush) -> None:
        self._crush = crush

    async def ask(self, request: Any) -> Any:
        crush = self._crush
        if crush.config.yolo or request.session_id in crush.yolo_sessions:
            return Decision.ALLOW
        view = crush.views.get(request.session_id)
        token = ASKING_HEADLESS.set(view is None or not view.interactive)
        try:
            return await crush.permissions.ask(request)
        finally:
            ASKING_HEADLESS.reset(token)

    def denial_reason(self, tool_call_id: str) -> str | None:
        """Why the policy denied a call, for the tool result and the transcript."""
        return self._crush.permissions.denial_reason(tool_call_id)
