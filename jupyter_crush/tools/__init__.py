"""Tools the agent can call, and the permission protocol in front of them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from ..model import ToolSpec


@dataclass
class ToolResult:
    content: str
    is_error: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolContext:
    session_id: str
    tool_call_id: str


@dataclass
class Tool:
    """A tool: what the model is told (``spec``) and the coroutine that runs it.

    ``changes_state`` tools (run code, write files, shell) go through the
    permission prompt; read-only tools do not.
    """

    spec: ToolSpec
    run: Callable[[dict[str, Any], ToolContext], Awaitable[ToolResult]]
    changes_state: bool = False

    @property
    def name(self) -> str:
        return self.spec.name


class Decision(StrEnum):
    ALLOW = "allow"
    ALLOW_SESSION = "allow_session"  # allow this tool for the rest of the session
    DENY = "deny"


@dataclass(frozen=True)
class PermissionRequest:
    session_id: str
    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any]
    summary: str = ""  # what the user is asked to approve: the code, the command, the diff


class PermissionBroker(Protocol):
    """Asks the user. A cancel of the run cancels the ``ask`` coroutine."""

    async def ask(self, request: PermissionRequest) -> Decision: ...
