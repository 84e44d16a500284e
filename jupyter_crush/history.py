"""Query the transcript store from cells and scripts.

``crush.history()`` returns the stored messages as a pandas DataFrame (a list of dicts when
pandas is not installed), one row per message, optionally narrowed to one session, a role,
a time, and a full-text search over prompts, answers and reasoning. ``crush.sessions()``
lists the sessions; ``crush.export_session()`` writes one as Markdown or JSON.

The store is the kernel's own when ``%load_ext jupyter_crush`` ran, else the configured data
directory (``CrushConfig.data_dir``, ``$CRUSH_DATA_DIR``, else ``.crush/``); ``store=`` takes
a :class:`~jupyter_crush.store.transcript.TranscriptStore` or a path. pandas is imported only
when a frame is built: it takes longer to import than ``%load_ext`` may.

It also holds what these share with the CLI (``python -m jupyter_crush log``): opening a
store read-only (:func:`open_store`), the rows of sessions and messages, matching search
terms, and an export's JSON and Markdown. What each message's row holds is the store's
(:mod:`jupyter_crush.store.rows`), which keeps them per journal
(:mod:`jupyter_crush.store.row_cache`).
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .core.markdown import fenced, markdown_literal, pretty_json
from .core.message import FinishReason, Message, Role, Session, now
from .store.appends import APPEND_KEY
from .store.lookup import SessionNotFoundError, find_session
from .store.rows import (
    SessionRows,
    compact_arguments,
    compact_tool_calls,
    compact_tool_results,
    image_path,
    searched_text,
)
from .store.storage import StoreError

if TYPE_CHECKING:
    from .core.tokens import Meter
    from .store.transcript import TranscriptStore

__all__ = [
    "MESSAGE_COLUMNS",
    "SESSION_COLUMNS",
    "SessionNotFoundError",
    "compact_arguments",
    "compact_tool_calls",
    "compact_tool_results",
    "export_session",
    "find_session",
    "history",
    "image_path",
    "open_store",
    "searched_text",
    "sessions",
]

#: Columns of :func:`history`, in order.
MESSAGE_COLUMNS = (
    "session",
    "session_title",
    "message_id",
    "time",
    "role",
    "model",
    "text",
    "reasoning",
    "tool_calls",
    "tool_results",
    "images",
    "finish_reason",
    "finish_message",
    "input_tokens",
    "output_tokens",
    "cost",
    "parent_session",
    "parent_tool_call",
)
#: Columns of :func:`history` that are a message's own row's (jupyter_crush.store.rows).
_MESSAGE_OWN = (
    "role",
    "model",
    "text",
    "reasoning",
    "tool_calls",
    "tool_results",
    "finish_reason",
    "finish_message",
    "input_tokens",
    "output_tokens",
    "cost",
)
#: Columns of :func:`sessions`, in order.
SESSION_COLUMNS = (
    "session",
    "title",
    "created",
    "updated",
    "messages",
    "input_tokens",
    "output_tokens",
    "cost",
    "context_tokens",
    "context_window",
    "near_limit",
    "parent_session",
    "parent_tool_call",
)
#: Finish reasons not worth a note in a transcript (any other one is shown).
ORDINARY_FINISHES = frozenset({FinishReason.END_TURN, FinishReason.TOOL_USE})
EXPORT_FORMAT = "jupyter-crush-session"
EXPORT_VERSION = 1


# -- public API ------------------------------------------------------------------------------


def history(
    session: str | None = None,
    *,
    store: TranscriptStore | str | os.PathLike[str] | None = None,
    search: str | None = None,
    role: str | Role | Iterable[str | Role] | None = None,
    since: datetime | date | timedelta | str | float | None = None,
    limit: int | None = None,
) -> Any:
    """The stored messages, one row per message (a DataFrame, or dicts without pandas).

    ``session`` is an id, a title (the newest session of that title) or a unique id prefix;
    without it every session is included. ``search`` keeps messages whose text or
    reasoning contains every word of it, case-insensitively (``"exact phrase"`` in double
    quotes keeps words together). ``role`` is one role or several; ``since`` a datetime
    (naive means local time), an ISO 8601 string, a timedelta before now, or a Unix time.
    ``limit`` keeps the newest rows. One session's rows are in its order; rows of several
    sessions are ordered by time. ``time`` is the message's creation in local time.
    """
    with open_store(store) as opened, _collector_paused():
        columns = message_columns(
            opened, session=session, search=search, role=role, since=since, limit=limit
        )
        try:
            import pandas as pd
        except ImportError:
            return _dicts(columns)
        if not columns["session"]:
            return pd.DataFrame.from_records([], columns=list(MESSAGE_COLUMNS))
        return pd.DataFrame(columns, columns=list(MESSAGE_COLUMNS))


def sessions(
    *,
    store: TranscriptStore | str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> Any:
    """The sessions, most recently updated first (a DataFrame, or dicts without pandas).

    In a kernel with a model whose window is known, ``context_tokens`` of ``context_window``
    is how full each session's next request would be (the meter of ``%crush sessions``) and
    ``near_limit`` says whether that request would summarize first; elsewhere they are None.
    """
    with open_store(store) as opened:
        rows = session_rows(opened, limit=limit, meter=_kernel_meter())
    return _table(rows, SESSION_COLUMNS)


def export_session(
    session: str,
    format: str = "markdown",
    path: str | os.PathLike[str] | None = None,
    *,
    store: TranscriptStore | str | os.PathLike[str] | None = None,
) -> str:
    """One session as Markdown (to read or share) or JSON (complete, every part kept).

    ``session`` is an id, a title or a unique id prefix. With ``path`` the text is also
    written to that file. Returns the text.
    """
    if format not in ("markdown", "json"):
        raise ValueError(f"unknown export format {format!r}; use 'markdown' or 'json'")
    with open_store(store) as opened:
        if opened is None:
            raise SessionNotFoundError(f"no session {session!r}: the transcript store is empty")
        found = find_session(opened, session)
        messages = opened.list_messages(found.id)
    text = session_json(found, messages) if format == "json" else session_markdown(found, messages)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


# -- building blocks shared with the command line -----------------------------------------------


@contextlib.contextmanager
def open_store(
    store: TranscriptStore | str | os.PathLike[str] | None,
) -> Iterator[TranscriptStore | None]:
    """The store to query: the given one (left open), one opened at a path (closed after),
    the kernel's, or the default data directory's (``None`` when none was made there yet)."""
    from .store.transcript import TranscriptStore

    if isinstance(store, TranscriptStore):
        yield store
        return
    if store is None:
        crush = _kernel_crush()
        if crush is not None and crush.config.opened_data_dir is not None:
            yield crush.store
            return
        # Not opened by a cell yet: read its directory without opening the kernel's store,
        # which would fix CrushConfig.data_dir before the user's first %%crush.
        data_dir = crush.config.data_dir if crush is not None else _default_data_dir()
        path = Path(os.path.abspath(os.path.expanduser(data_dir)))
        if not TranscriptStore.exists(path):
            yield None  # nothing recorded yet: an empty history, not an error
            return
    else:
        path = Path(store).expanduser()
        if not path.exists():
            raise StoreError(f"no transcript store at {path}: the directory does not exist")
        if not TranscriptStore.exists(path):
            raise StoreError(
                f"{path} is not a transcript store (no format.json or sessions.jsonl in it); "
                "pass the directory a %%crush kernel writes to (its data_dir, default .crush)"
            )
    opened = TranscriptStore(path)
    try:
        yield opened
    finally:
        opened.close()


def session_rows(
    store: TranscriptStore | None,
    *,
    limit: int | None = None,
    meter: Callable[[Sequence[Message]], Meter] | None = None,
) -> list[dict]:
    """One dict per session, most recently updated first; ``meter`` measures the context of
    each session's next request (see :func:`~jupyter_crush.kernel.models.session_meter`)."""
    _check_limit(limit)
    if store is None:
        return []
    listed = store.list_sessions()
    if limit is not None:
        listed = listed[:limit]
    rows = []
    for s in listed:
        measured = meter(store.list_messages(s.id)) if meter is not None else None
        rows.append(
            {
                "session": s.id,
                "title": s.title,
                "created": datetime.fromtimestamp(s.created_at),
                "updated": datetime.fromtimestamp(s.updated_at),
                "messages": s.message_count,
                "input_tokens": s.usage.input_tokens,
                "output_tokens": s.usage.output_tokens,
                "cost": s.cost,
                "context_tokens": measured.used if measured else None,
                "context_window": measured.limits.window if measured else None,
                "near_limit": measured.near_limit if measured else None,
                "parent_session": s.parent_session_id,
                "parent_tool_call": s.parent_tool_call_id,
            }
        )
    return rows


def message_rows(
    store: TranscriptStore | None,
    *,
    session: str | None = None,
    search: str | None = None,
    role: str | Role | Iterable[str | Role] | None = None,
    since: datetime | date | timedelta | str | float | None = None,
    limit: int | None = None,
) -> list[dict]:
    """The rows of :func:`history` as dicts (see there for the arguments)."""
    return _dicts(
        message_columns(store, session=session, search=search, role=role, since=since, limit=limit)
    )


def message_columns(
    store: TranscriptStore | None,
    *,
    session: str | None = None,
    search: str | None = None,
    role: str | Role | Iterable[str | Role] | None = None,
    since: datetime | date | timedelta | str | float | None = None,
    limit: int | None = None,
) -> dict[str, list[Any]]:
    """The columns of :func:`history` (see there for the arguments), by name in order."""
    match = Matcher(search) if search is not None else None
    roles = _roles(role)
    cutoff = _since(since)
    _check_limit(limit)
    if store is None:
        if session is not None:
            raise SessionNotFoundError(f"no session {session!r}: the transcript store is empty")
        return {name: [] for name in MESSAGE_COLUMNS}
    if session is not None:
        chosen = [find_session(store, session)]
    else:
        # Newest first, so a limit can stop early: a session holds no message created after
        # its last write (updated_at), so once ``limit`` rows are newer than a session's last
        # write, neither it nor any older one can contribute. The same bound lets ``since``
        # skip a session's file entirely.
        chosen = sorted(store.list_sessions(), key=lambda s: s.updated_at, reverse=True)
    if match is not None:
        store.flush()  # so the journals on disk hold this process's latest states too
    with _collector_paused():
        return _columns(store, chosen, match, roles, cutoff, limit)


def _columns(
    store: TranscriptStore,
    chosen: list[Session],
    match: Matcher | None,
    roles: frozenset[Role] | None,
    cutoff: float | None,
    limit: int | None,
) -> dict[str, list[Any]]:
    found: list[tuple[Session, SessionRows, list[int] | None]] = []
    newest: list[float] = []  # min-heap of the ``limit`` newest row times so far
    for s in chosen:
        if cutoff is not None and s.updated_at < cutoff:
            break
        if limit is not None and len(newest) == limit and (not limit or s.updated_at < newest[0]):
            break
        # Kept by the store per state of the journal: asking again decodes nothing.
        rows = store.history_rows(s.id, build=False)
        if rows is None:
            # Spares decoding a session without a match; kept rows are searched as cheaply.
            if match is not None and not match.may_occur_in(store.journal_path(s.id)):
                continue
            rows = store.history_rows(s.id)
            assert rows is not None
        picked = _picked(rows, match, roles, cutoff)
        if limit:
            created = rows.columns["created"]
            for i in range(len(rows)) if picked is None else picked:
                heapq.heappush(newest, created[i])
                if len(newest) > limit:
                    heapq.heappop(newest)
        found.append((s, rows, picked))
    found.sort(key=lambda item: item[0].created_at)
    out: dict[str, list[Any]] = {name: [] for name in MESSAGE_COLUMNS}
    created: list[float] = []
    for s, rows, picked in found:
        columns = rows.columns

        def take(column: list[Any], picked: list[int] | None = picked) -> list[Any]:
            return column if picked is None else [column[i] for i in picked]

        count = len(rows) if picked is None else len(picked)
        created += take(columns["created"])
        out["session"] += [s.id] * count
        out["session_title"] += [s.title] * count
        out["message_id"] += take(columns["id"])
        out["time"] += take(rows.times())
        for name in _MESSAGE_OWN:
            out[name] += take(columns[name])
        out["images"] += [list(paths) for paths in take(columns["images"])]
        # A sub-agent's message: the session and tool call that ran it.
        out["parent_session"] += [s.parent_session_id] * count
        out["parent_tool_call"] += [s.parent_tool_call_id] * count
    order: list[int] | range = range(len(created))
    if len(found) > 1 and any(a > b for a, b in itertools.pairwise(created)):
        order = sorted(order, key=created.__getitem__)  # stable: one session's order is kept
    if limit is not None:
        order = order[len(order) - limit :] if limit else []
    if isinstance(order, range) and len(order) == len(created):
        return out
    if len(order) < 2:
        return {name: [column[i] for i in order] for name, column in out.items()}
    pick = itemgetter(*order)
    return {name: list(pick(column)) for name, column in out.items()}


def _picked(
    rows: SessionRows,
    match: Matcher | None,
    roles: frozenset[Role] | None,
    cutoff: float | None,
) -> list[int] | None:
    """The indexes of the session's rows the query keeps (None: all)."""
    if match is None and roles is None and cutoff is None:
        return None
    columns = rows.columns
    role, created = columns["role"], columns["created"]
    folded = rows.folded() if match is not None else None
    return [
        i
        for i in range(len(rows))
        if (roles is None or role[i] in roles)
        and (cutoff is None or created[i] >= cutoff)
        and (folded is None or match is None or match.matches(folded[i]))
    ]


def _dicts(columns: dict[str, list[Any]]) -> list[dict]:
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


class Matcher:
    """Full-text match over a message's text and reasoning.

    Every word of the query must occur, case-insensitively (Unicode case folding);
    ``"a phrase"`` in double quotes is one word. Parts are joined with a newline, so a
    word never matches across two parts.
    """

    def __init__(self, query: str) -> None:
        if not isinstance(query, str):
            raise TypeError(f"search must be a str, got {type(query).__name__}")
        self.query = query
        self.terms = tuple(
            t.casefold() for pair in _TERMS.findall(query) for t in pair if t.strip()
        )
        if not self.terms:
            raise ValueError("search needs at least one word, e.g. search='NaN'")
        # The terms as they appear inside JSON strings written with ensure_ascii=False.
        self._escaped = tuple(json.dumps(t, ensure_ascii=False)[1:-1] for t in self.terms)

    def may_occur_in(self, journal: Path) -> bool:
        """Whether a session's journal (see :mod:`jupyter_crush.store.transcript`) may hold a match.

        A cheap necessary condition that spares decoding sessions without one: every term,
        JSON-escaped as the store writes text, occurs somewhere in the case-folded file.
        Escaping and case folding are per character and commute (escape sequences are
        already folded), so a term inside a part's text is found in the file. The file holds
        every record of the session, superseded ones too: a superset of its messages.
        """
        try:
            raw = journal.read_bytes()
        except FileNotFoundError:
            return False  # a session that never had a message
        if APPEND_RECORD in raw:
            return True  # text streamed in pieces: a term may span two append records
        content = raw.decode("utf-8", "replace").casefold()
        return all(term in content for term in self._escaped)

    def __call__(self, message: Message) -> bool:
        return self.matches(searched_text(message))

    def matches(self, folded: str) -> bool:
        """Whether ``folded``, a message's :func:`searched_text`, holds every term."""
        return all(term in folded for term in self.terms)


def session_json(session: Session, messages: list[Message]) -> str:
    """A session and all its messages as one JSON document (the store's own records)."""
    document = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "session": session.to_dict(),
        "messages": [m.to_dict() for m in messages],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def session_markdown(session: Session, messages: list[Message]) -> str:
    """A session as a readable Markdown document."""
    out = [
        f"# {markdown_literal(session.title or '(untitled)')}",
        "",
        f"- Session: `{session.id}`",
        f"- Created: {format_time(session.created_at)}; updated: {format_time(session.updated_at)}",
        f"- Messages: {session.message_count}; tokens: {session.usage.input_tokens} in, "
        f"{session.usage.output_tokens} out; cost: {format_cost(session.cost)}",
    ]
    for message in messages:
        head = f"## {str(message.role).capitalize()} · {format_time(message.created_at)}"
        if message.model:
            head += f" · {markdown_literal(message.model)}"
        out += ["", head]
        if message.reasoning:
            out += [
                "",
                "<details><summary>Reasoning</summary>",
                "",
                message.reasoning.strip(),
                "",
                "</details>",
            ]
        if message.text:
            out += ["", message.text.strip()]
        for call in message.tool_calls:
            out += ["", f"**Tool call** `{call.name}`:", fenced(pretty_json(call.input), "json")]
        for result in message.tool_results:
            label = "Tool error" if result.is_error else "Tool result"
            out += ["", f"**{label}** `{result.name}`:", fenced(result.content, "")]
        for image in message.images:
            out += ["", f"![{markdown_literal(image.describe())}](<{image_path(image)}>)"]
        finish = message.finish
        if finish is not None and finish.reason not in ORDINARY_FINISHES:
            note = f"*Finished: {finish.reason}*"
            if finish.message:
                note = f"*Finished: {finish.reason} ({markdown_literal(finish.message)})*"
            out += ["", note]
    return "\n".join(out) + "\n"


# -- internals -----------------------------------------------------------------------------------

_TERMS = re.compile(r'"([^"]*)"|(\S+)')
# How an append record's operations start in a journal (jupyter_crush.store.appends).
APPEND_RECORD = f'"{APPEND_KEY}":['.encode()


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector while rows are built: each row is a fresh
    container, and tens of thousands of them would make it walk every message the store
    keeps many times over (measured: half of a 50k-message history())."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _table(rows: list[dict], columns: tuple[str, ...]) -> Any:
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame.from_records(rows, columns=list(columns))


def _kernel_crush() -> Any:
    """The kernel's :class:`~jupyter_crush.kernel.crush.Crush` if the extension is loaded (never
    loads it: that would register magics as a side effect of a query)."""
    shell = _ipython()
    return getattr(shell, "_jupyter_crush", None) if shell is not None else None


def _kernel_meter() -> Callable[[Sequence[Message]], Meter] | None:
    crush = _kernel_crush()
    if crush is None:
        return None
    from .kernel.models import session_meter

    return session_meter(crush)


def _default_data_dir() -> str:
    from .kernel.config import CrushConfig

    shell = _ipython()
    # With a shell, settings from ipython_config.py apply as they would to %%crush.
    config = CrushConfig(parent=shell) if shell is not None else CrushConfig()
    return os.path.abspath(os.path.expanduser(config.data_dir))


def _ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _roles(role: str | Role | Iterable[str | Role] | None) -> frozenset[Role] | None:
    if role is None:
        return None
    wanted = [role] if isinstance(role, str) else list(role)
    roles = set()
    for r in wanted:
        try:
            roles.add(Role(r))
        except ValueError:
            names = ", ".join(repr(str(x)) for x in Role)
            raise ValueError(f"unknown role {r!r}; use one of {names}") from None
    return frozenset(roles)


def _since(since: datetime | date | timedelta | str | float | None) -> float | None:
    """The cutoff as a Unix time."""
    if since is None:
        return None
    if isinstance(since, bool):
        raise TypeError("since must be a datetime, date, timedelta, ISO 8601 str or Unix time")
    if isinstance(since, int | float):
        return float(since)
    if isinstance(since, timedelta):
        return now() - since.total_seconds()
    if isinstance(since, str):
        try:
            since = datetime.fromisoformat(since.strip())
        except ValueError:
            raise ValueError(
                f"since={since!r} is not an ISO 8601 time; write e.g. '2026-11-25' or "
                "'2026-11-25T14:30', or pass a datetime or timedelta"
            ) from None
    if isinstance(since, datetime):
        return since.timestamp()  # a naive datetime is local time, as in the time column
    if isinstance(since, date):
        return datetime(since.year, since.month, since.day).timestamp()
    raise TypeError(
        f"since must be a datetime, date, timedelta, ISO 8601 str or Unix time, "
        f"got {type(since).__name__}"
    )


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int, got {limit!r}")


def format_time(timestamp: float) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS``."""
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def format_cost(cost: float | None) -> str:
    """A cost in dollars, ``-`` when unknown or zero."""
    return "-" if not cost else f"${cost:.4f}"
