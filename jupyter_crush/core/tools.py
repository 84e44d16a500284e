"""The tool protocol: a tool, its context and result, and the permission protocol in front of
state-changing tools (decisions, requests, brokers), and sources of tools that come and go."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from .changes import NO_CHANGES, TurnChanges
from .message import ImagePart
from .model import ToolSpec


@dataclass
class ToolResult:
    content: str
    is_error: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    images: list[ImagePart] = field(default_factory=list)  # shown to the model with the text


def _not_stopped() -> None:
    """A call outside any turn (a test, a replay) has nothing to stop it."""


@dataclass(frozen=True)
class ToolContext:
    session_id: str
    tool_call_id: str
    #: Raises ``CancelledError`` once a cancel covers the call's turn: a tool calls it right
    #: before a side effect that follows an ``await`` of its own (dispatch's
    #: NOTHING-STARTS-WHEN-COVERED).
    stop_if_covered: Callable[[], None] = field(default=_not_stopped, compare=False)
    #: The turn's change log: a tool reports each change before making it, so that
    #: ``%crush undo`` can take the turn back (see :mod:`jupyter_crush.core.changes`).
    changes: TurnChanges = field(default=NO_CHANGES, compare=False)


@dataclass
class Tool:
    """A tool: what the model is told (``spec``) and the coroutine that runs it.

    ``changes_state`` tools (run code, write files, shell) go through the
    permission prompt; read-only tools do not.
    """

    spec: ToolSpec
    run: Callable[[dict[str, Any], ToolContext], Awaitable[ToolResult]]
    changes_state: bool = False
    #: Builds the permission prompt's text from the arguments (the code, command or
    #: diff); ``None`` shows the arguments as JSON. See :meth:`permission_summary`.
    summarize: Callable[[dict[str, Any]], str] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def permission_summary(self, arguments: dict[str, Any]) -> str:
        """What the user approves for this call: never fails, whatever the model sent.

        Values of credential-like environment variables are masked: the prompt is
        output like any other.
        """
        from ..core.output import redact

        if self.summarize is not None:
            try:
                return redact(self.summarize(arguments))
            except Exception as exc:  # a summary must not break the permission prompt
                return redact(f"(could not summarize the call: {exc})\n{_json_args(arguments)}")
        return redact(_json_args(arguments))


def _json_args(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, indent=2, ensure_ascii=False, default=repr)


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


class CancelablePermissionBroker(PermissionBroker, Protocol):
    """A broker with an optional cleanup hook.

    When the run is stopped while a prompt is open, :class:`PermissionPolicy`
    cancels the broker's ``ask`` and then calls ``cancel(request)`` if the broker
    has one, so a prompt shown outside the ``ask`` coroutine's own ``finally``
    (a separate panel, a queued dialog) is taken down too. Brokers without it
    are fine: cancellation of ``ask`` alone must leave nothing dangling.
    """

    def cancel(self, request: PermissionRequest) -> None: ...


class ToolSource(Protocol):
    """Tools that come and go while the kernel runs (an MCP server's).

    The agent awaits ``refresh`` at the start of every turn, on the kernel's loop; it adds,
    replaces or removes the source's own entries in the agent's tool map. ``unknown_tool``
    explains a call to a name the map lacks when the source owns it (a server that failed),
    or returns ``None``.
    """

    async def refresh(self, tools: dict[str, Tool]) -> None: ...

    def unknown_tool(self, name: str) -> str | None: ...


def list_argument(value: Any) -> Any:
    """A list argument as sent, or decoded when a model sent it JSON-encoded in a string (some
    do); anything else unchanged, for the tool's own check to reject."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, list) else value
    return value
