"""Finding a session by id, title (the newest of that title) or unique id prefix."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.message import Session

if TYPE_CHECKING:
    from .transcript import TranscriptStore

#: Shortest id prefix accepted as a session reference (shorter ones match too much).
MIN_PREFIX = 4


class SessionNotFoundError(LookupError):
    """A session reference matched no session, or several (``ambiguous``)."""

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous

    def __str__(self) -> str:
        return str(self.args[0])


def find_session(store: TranscriptStore, ref: str) -> Session:
    """A session by id, title (the newest of that title) or unique id prefix."""
    if not isinstance(ref, str) or not ref.strip():
        raise SessionNotFoundError(f"a session reference must be a non-empty str, got {ref!r}")
    ref = ref.strip()
    listed = store.list_sessions()
    for session in listed:
        if session.id == ref:
            return session
    titled = [s for s in listed if s.title == ref]
    if titled:
        return max(titled, key=lambda s: s.created_at)
    prefixed = [s for s in listed if len(ref) >= MIN_PREFIX and s.id.startswith(ref)]
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        raise SessionNotFoundError(
            f"session prefix {ref!r} matches {len(prefixed)} sessions; give more of the id",
            ambiguous=True,
        )
    raise SessionNotFoundError(
        f"no session {ref!r} (by id, title or id prefix) in the transcript store "
        f"{store.path}; list them with crush.sessions() or `python -m jupyter_crush log`"
    )
