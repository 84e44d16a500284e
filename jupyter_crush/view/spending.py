"""The status line's part that says what was spent against the spending caps."""

from __future__ import annotations

from ..core.events import Spending
from ..core.tokens import format_dollars


class SpendLine:
    """What the run's requests were told of the caps: shown while any cap is set."""

    def __init__(self) -> None:
        self.first: Spending | None = None  # before the turn's first request
        self.latest: Spending | None = None
        self.note = ""  # a model's unknown price, said once

    def update(self, event: Spending) -> None:
        self.first = self.first or event
        self.latest = event
        self.note = self.note or event.note

    def text(self, turn_cost: float | None) -> str:
        """``session $0.12 of $0.50 cap · today $1.20 of $5.00 cap``; ``turn_cost`` (the
        finished turn's) counts on top of what was spent before the turn."""
        latest, first = self.latest, self.first
        if latest is None or first is None:
            return ""
        session, day = latest.session_spent, latest.day_spent
        if turn_cost is not None:
            session, day = first.session_spent + turn_cost, first.day_spent + turn_cost
        parts = []
        if latest.session_cap:
            cap = format_dollars(latest.session_cap)
            parts.append(f"session {format_dollars(session)} of {cap} cap")
        if latest.day_cap:
            parts.append(f"today {format_dollars(day)} of {format_dollars(latest.day_cap)} cap")
        if self.note:
            parts.append(self.note)
        return " · ".join(parts)
