"""The permission policy in front of state-changing tools.

:class:`PermissionPolicy` is the :class:`~jupyter_crush.core.tools.PermissionBroker`
the agent calls for every tool with ``changes_state=True``. It answers what it
can without asking, in this order:

1. ``yolo`` → allow;
2. the tool is in ``allowed_tools`` (Crush-style names: ``"bash"``,
   ``"python"``, ``"edit"``) → allow;
3. the user chose *Allow for session* for this tool in this session → allow;
4. nobody can answer (``headless``, or no UI broker) → deny at once, with the
   reason recorded, rather than hang a run no one can unblock;
5. otherwise the UI broker asks, and an *Allow for session* answer is
   remembered.

Every decision is kept in :attr:`PermissionPolicy.records` (bounded), and the
request the UI sees carries a summary — the exact code, command or diff —
built by the tool itself (:meth:`Tool.permission_summary`).

A cancel while the prompt is open cancels ``ask``: the ``CancelledError``
propagates into the UI broker's ``ask`` (whose own cleanup runs), the broker's
optional ``cancel(request)`` hook is called so a prompt it keeps elsewhere goes
away too, and the error is re-raised unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..core.tools import Decision, PermissionBroker, PermissionRequest, Tool

HEADLESS_REASON = "state-changing tools are denied in headless runs; use --yolo or allowed_tools"
NO_BROKER_REASON = (
    "state-changing tools are denied: no front end can show a permission prompt; "
    "use --yolo or allowed_tools"
)
_MAX_RECORDS = 1000


@dataclass(frozen=True)
class PermissionRecord:
    """One answered (or abandoned) permission request."""

    request: PermissionRequest
    decision: Decision | None  # None: the prompt was canceled before an answer
    source: str  # "yolo", "allowed_tools", "session", "headless", "user", "canceled"
    reason: str = ""
    time: float = dataclasses.field(default_factory=time.time)


class PermissionPolicy:
    """Decides whether a state-changing tool call may run (see the module docstring)."""

    def __init__(
        self,
        broker: PermissionBroker | None = None,
        *,
        yolo: bool = False,
        allowed_tools: Iterable[str] = (),
        headless: bool | Callable[[], bool] = False,
        tools: Iterable[Tool] = (),
    ) -> None:
        if isinstance(allowed_tools, str):
            raise TypeError(
                f"allowed_tools must be a list of tool names such as ['view', 'bash'], "
                f"not the string {allowed_tools!r}"
            )
        names = tuple(allowed_tools)
        bad = [n for n in names if not isinstance(n, str) or not n.strip()]
        if bad:
            raise TypeError(f"allowed_tools must contain tool names (strings); got {bad!r}")
        self.broker = broker
        self.yolo = yolo
        self.allowed_tools = frozenset(n.strip() for n in names)
        self._headless = headless
        self._tools = {tool.name: tool for tool in tools}
        # Guards _session_allowed and records: ask() runs on the event loop, but the
        # front end may read records or forget a session from a comm (subshell) thread.
        self._lock = threading.Lock()
        self._session_allowed: set[tuple[str, str]] = set()
        self.records: deque[PermissionRecord] = deque(maxlen=_MAX_RECORDS)

    # -- the PermissionBroker protocol --

    async def ask(self, request: PermissionRequest) -> Decision:
        request = self.with_summary(request)
        if self.yolo:
            return self._decide(request, Decision.ALLOW, "yolo")
        if request.tool_name in self.allowed_tools:
            return self._decide(request, Decision.ALLOW, "allowed_tools")
        if self.allowed_for_session(request.session_id, request.tool_name):
            return self._decide(request, Decision.ALLOW, "session")
        if self.headless:
            return self._decide(request, Decision.DENY, "headless", HEADLESS_REASON)
        if self.broker is None:
            return self._decide(request, Decision.DENY, "headless", NO_BROKER_REASON)
        try:
            answer = await self.broker.ask(request)
        except asyncio.CancelledError:
            self._cancel_prompt(request)
            self._record(PermissionRecord(request, None, "canceled", "the run was stopped"))
            raise
        try:
            decision = Decision(answer)
        except ValueError:
            # Fail closed: an answer we do not understand is not a yes.
            return self._decide(
                request, Decision.DENY, "user", f"unrecognized answer {answer!r} denied"
            )
        if decision == Decision.ALLOW_SESSION:
            with self._lock:
                self._session_allowed.add((request.session_id, request.tool_name))
        return self._decide(request, decision, "user")

    # -- queries and control --

    @property
    def headless(self) -> bool:
        return bool(self._headless()) if callable(self._headless) else bool(self._headless)

    @headless.setter
    def headless(self, value: bool | Callable[[], bool]) -> None:
        self._headless = value

    def allowed_for_session(self, session_id: str, tool_name: str) -> bool:
        with self._lock:
            return (session_id, tool_name) in self._session_allowed

    def forget(self, session_id: str | None = None) -> None:
        """Drop "Allow for session" answers: of one session, or of all (``None``)."""
        with self._lock:
            if session_id is None:
                self._session_allowed.clear()
            else:
                self._session_allowed = {
                    key for key in self._session_allowed if key[0] != session_id
                }

    def denial_reason(self, tool_call_id: str) -> str | None:
        """Why the call was denied, if it was (for the tool result and the transcript)."""
        with self._lock:
            for record in reversed(self.records):
                if record.request.tool_call_id == tool_call_id:
                    if record.decision == Decision.DENY:
                        return record.reason or "denied by the user"
                    return None
        return None

    def with_summary(self, request: PermissionRequest) -> PermissionRequest:
        """The request with its summary filled in by the tool, when the caller left it empty."""
        tool = self._tools.get(request.tool_name)
        if request.summary or tool is None:
            return request
        return dataclasses.replace(request, summary=tool.permission_summary(request.arguments))

    # -- internals --

    def _decide(
        self, request: PermissionRequest, decision: Decision, source: str, reason: str = ""
    ) -> Decision:
        self._record(PermissionRecord(request, decision, source, reason))
        return decision

    def _record(self, record: PermissionRecord) -> None:
        with self._lock:
            self.records.append(record)

    def _cancel_prompt(self, request: PermissionRequest) -> None:
        cancel = getattr(self.broker, "cancel", None)
        if callable(cancel):
            # Cleanup must not replace the CancelledError the caller is waiting for.
            with contextlib.suppress(Exception):
                cancel(request)
