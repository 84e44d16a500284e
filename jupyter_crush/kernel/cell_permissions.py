"""Per-prompt permission choices in front of the kernel's PermissionPolicy."""

from __future__ import annotations

import contextvars
from collections.abc import Container, Mapping
from typing import TYPE_CHECKING, Any

from ..core.tools import Decision

if TYPE_CHECKING:
    from ..tools.permissions import PermissionPolicy
    from ..view.base import RunView
    from .config import CrushConfig

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

    def __init__(
        self,
        config: CrushConfig,
        views: Mapping[str, RunView],
        yolo_sessions: Container[str],
        policy: PermissionPolicy,
    ) -> None:
        # The kernel's own objects, read at each ask: views and yolo_sessions change as
        # prompts start and end, config.yolo and the policy's allowed tools with %config.
        self._config = config
        self._views = views
        self._yolo_sessions = yolo_sessions
        self._policy = policy

    async def ask(self, request: Any) -> Any:
        if self._config.yolo or request.session_id in self._yolo_sessions:
            return Decision.ALLOW
        view = self._views.get(request.session_id)
        token = ASKING_HEADLESS.set(view is None or not view.interactive)
        try:
            return await self._policy.ask(request)
        finally:
            ASKING_HEADLESS.reset(token)

    def runs_without_asking(self, session_id: str, tool_name: str) -> bool:
        """Whether a call of ``tool_name`` in ``session_id`` would run with no prompt shown."""
        policy = self._policy
        return (
            self._config.yolo
            or session_id in self._yolo_sessions
            or policy.yolo
            or tool_name in policy.allowed_tools
            or policy.allowed_for_session(session_id, tool_name)
        )

    def denial_reason(self, tool_call_id: str) -> str | None:
        """Why the policy denied a call, for the tool result and the transcript."""
        return self._policy.denial_reason(tool_call_id)
