"""``%crush compact [SESSION]``: summarize a session now."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import command

if TYPE_CHECKING:
    from ..kernel.crush import Crush


@command("compact", "%crush compact [SESSION]", "summarize a session's older turns now")
def compact_command(crush: Crush, args: list[str]) -> None:
    """Queued like a prompt when the session is busy; its run view shows the summary made."""
    from IPython.core.error import UsageError

    from ..kernel.submit import submit

    ref = " ".join(args).strip() or None
    if ref is None and crush.current_session_id is None:
        raise UsageError("No session to compact yet: name one, %crush compact SESSION")
    session = crush.find_session(ref) if ref else None
    submit(
        crush, "(compact the session)", session_ref=session.id if session else None, compact=True
    )
