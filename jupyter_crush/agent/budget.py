"""Spending caps: no model request is sent that could take spend past a cap.

Two caps, in dollars (0: none): one per session (``CrushConfig.max_cost``), and one for all
the sessions of the store since local midnight (``CrushConfig.max_cost_per_day``). What was
spent is what the transcript store recorded: each model step's and summary's cost; a
sub-agent's session counts as the session whose turn started it. Before every model request
(a turn's steps, a summary, a title; a sub-agent's turn is a turn like any other)
:meth:`Budget.check` prices the request's worst case — its input tokens, as estimated, at the
model's input price, plus the model's output limit at its output price — and, if spent plus
that would pass a cap, raises :class:`CapReached`, whose message is the line that ends the
turn. Nothing is sent.

A model whose price is unknown cannot be held to a cap: its requests go on, and the first of
them in the kernel says so once in the run's status line.
"""

from __future__ import annotations

import datetime
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.events import RunEvent, Spending
from ..core.message import Message, Role, Session, Usage
from ..core.tokens import DEFAULT_OUTPUT_TOKENS, format_dollars, request_tokens
from ..providers.prices import step_cost
from ..providers.windows import model_window
from ..store.transcript import TranscriptStore
from .compaction import SUMMARY_INTRO

#: Providers whose requests cost nothing: a replay is answered in-process from a recording.
_UNBILLED = frozenset({"replay"})


@dataclass(frozen=True)
class SpendingCaps:
    """Dollars a session, and all sessions since local midnight, may spend (0: no cap)."""

    session: float = 0.0
    day: float = 0.0

    def __bool__(self) -> bool:
        return self.session > 0 or self.day > 0


class CapReached(Exception):
    """A request's worst case would pass a cap: the message ends the turn."""


def worst_case_cost(
    model: Any, messages: Sequence[Message], system: str | None, tools: Sequence[Any]
) -> float | None:
    """Dollars the request could cost at most; None when the model's price is unknown.

    Input: the request's tokens as the context meter counts them (the provider's count of the
    last answer, estimates for what was added since). Output: the model's limit.
    """
    if getattr(model, "provider", "") in _UNBILLED:
        return 0.0
    usage = Usage(
        input_tokens=request_tokens(messages, system, tools, since=_summary_time(messages)),
        output_tokens=output_limit(model),
    )
    config = getattr(model, "config", None)
    return step_cost(
        getattr(model, "provider", ""),
        getattr(model, "name", ""),
        usage,
        base_url=getattr(config, "base_url", None),
    )


def output_limit(model: Any) -> int:
    """The most tokens one answer of ``model`` writes, as the context window counts it; with
    a thinking budget, what the request asks for beyond it (the API wants more than it)."""
    settings = getattr(model, "settings", None)
    limits = model_window(model)
    if limits is not None:
        limit = limits.output
    else:
        limit = getattr(settings, "max_tokens", None) or DEFAULT_OUTPUT_TOKENS
    thinking = getattr(settings, "thinking_budget", None) or 0
    return thinking + DEFAULT_OUTPUT_TOKENS if thinking >= limit else limit


def day_start(now: float | None = None) -> float:
    """The time of the last local midnight."""
    today = datetime.datetime.fromtimestamp(now) if now is not None else datetime.datetime.now()
    return datetime.datetime.combine(today.date(), datetime.time()).timestamp()


def session_spent(store: TranscriptStore, session_id: str) -> float:
    """Dollars a session spent, its sub-agents' sessions included: a sub-agent's request is
    the spend of the session whose turn started it, so its cap is that session's."""
    sessions = {session.id: session for session in store.list_sessions()}
    root = sessions.get(session_id) or store.get_session(session_id)
    while root.parent_session_id in sessions:
        root = sessions[root.parent_session_id]
    children: dict[str, list[Session]] = {}
    for session in sessions.values():
        children.setdefault(session.parent_session_id, []).append(session)
    total, pending = 0.0, [root]
    while pending:
        session = pending.pop()
        total += session.cost
        pending.extend(children.get(session.id, ()))
    return total


def spent_since(store: TranscriptStore, start: float) -> float:
    """Dollars the store recorded for requests made since ``start``, over all sessions."""
    total = 0.0
    for session in store.list_sessions():
        if session.updated_at < start:
            continue
        if session.created_at >= start:
            total += session.cost  # all of it today: its running total
            continue
        messages = store.list_messages(session.id)
        total += sum(m.cost or 0.0 for m in messages if m.created_at >= start)
    return total


def spend_of_cap(spent: float, cap: float) -> str:
    """``$0.48 of $0.50 cap`` for a listing; "" without a cap."""
    return f"{format_dollars(spent)} of {format_dollars(cap)} cap" if cap else ""


def day_spend_line(store: TranscriptStore, cap: float) -> str:
    """``today: $1.20 of the $5.00 daily cap`` (all sessions since local midnight)."""
    spent = spent_since(store, day_start())
    return f"today: {format_dollars(spent)} of the {format_dollars(cap)} daily cap"


def _up_to_cent(amount: float) -> float:
    """``amount`` rounded up to the cent: a bound shown rounded must still be a bound."""
    return math.ceil(amount * 100) / 100


class Budget:
    """The caps and what the store says was spent; one per agent, read from any request."""

    def __init__(self, store: TranscriptStore) -> None:
        self.store = store
        #: The caps in force, read before each request (the kernel reads its configuration).
        self.caps: Callable[[], SpendingCaps] = SpendingCaps
        self._lock = threading.Lock()  # guards _unpriced
        self._unpriced: set[str] = set()  # models whose unknown price has been said

    def check(
        self,
        session_id: str,
        model: Any,
        messages: Sequence[Message],
        system: str | None = None,
        tools: Sequence[Any] = (),
        emit: Callable[[RunEvent], None] | None = None,
    ) -> None:
        """Call before every model request: raises :class:`CapReached` when the request
        could take spend past a cap; ``emit`` (a turn's) hears what was spent of each cap."""
        caps = self.caps()
        if not caps:
            return
        worst = worst_case_cost(model, messages, system, tools)
        session = session_spent(self.store, session_id) if caps.session else 0.0
        day = spent_since(self.store, day_start()) if caps.day else 0.0
        if emit is not None:  # a turn's request: the note, if any, reaches its view
            note = self._unpriced_note(model) if worst is None else ""
            emit(Spending(session, caps.session, day, caps.day, note))
        if worst is None:
            return
        if caps.session and session + worst > caps.session:
            raise CapReached(
                f"stopped: this session has spent {format_dollars(session)} of its "
                f"{format_dollars(caps.session)} cap and the next request could cost up to "
                f"{format_dollars(_up_to_cent(worst))}; raise it with %config "
                f"CrushConfig.max_cost = {_up_to_cent(session + worst):.2f}"
            )
        if caps.day and day + worst > caps.day:
            raise CapReached(
                f"stopped: today's sessions have spent {format_dollars(day)} of the "
                f"{format_dollars(caps.day)} daily cap and the next request could cost up to "
                f"{format_dollars(_up_to_cent(worst))}; raise it with %config "
                f"CrushConfig.max_cost_per_day = {_up_to_cent(day + worst):.2f}"
            )

    def _unpriced_note(self, model: Any) -> str:
        """Once per model: the line saying its price is unknown, so no cap holds it."""
        name = f"{getattr(model, 'provider', '')}:{getattr(model, 'name', '')}"
        with self._lock:
            if name in self._unpriced:
                return ""
            self._unpriced.add(name)
        return f"the price of {name} is unknown, so the spending cap cannot hold its requests"


def _summary_time(messages: Sequence[Message]) -> float:
    """When the request's summary was made (0 without one): answers before it were counted
    on a request of another shape (see :func:`~jupyter_crush.core.tokens.request_tokens`)."""
    for message in messages:
        if message.role is Role.USER and message.text.startswith(SUMMARY_INTRO):
            return message.created_at
    return 0.0
