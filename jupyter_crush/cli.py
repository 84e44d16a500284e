"""``python -m jupyter_crush``: read the transcript store from a terminal.

::

    python -m jupyter_crush log                 # sessions, newest first
    python -m jupyter_crush log SESSION         # one session's transcript
    python -m jupyter_crush log -q "NaN price"  # messages containing every word
    python -m jupyter_crush log SESSION --json  # the session as JSON

The store is ``--store PATH``, else ``$CRUSH_DATA_DIR``, else ``./.crush``. Reading never
changes a transcript, except that turns left unfinished by a kernel that died are settled
(given an error finish), as any reader of the store does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from .core.message import Message, Role, Session
from .history import (
    ORDINARY_FINISHES,
    Matcher,
    compact_arguments,
    format_cost,
    format_time,
    message_rows,
    open_store,
    session_json,
    session_rows,
)
from .store.lookup import SessionNotFoundError, find_session
from .store.storage import StoreError

PROG = "python -m jupyter_crush"
#: Default -n for lists of sessions and of search hits (a transcript shows every message).
DEFAULT_LIMIT = 20
#: Characters of a tool call, tool result, reasoning or search hit shown on its line.
ABBREVIATE = 160


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="jupyter-crush: read the transcripts %%crush cells recorded.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    log = commands.add_parser(
        "log",
        help="list sessions, show a session's transcript, or search messages",
        description="Without SESSION, list sessions (newest first); with SESSION, show its "
        "transcript; with -q, search prompts, answers and reasoning.",
    )
    log.add_argument(
        "session", nargs="?", metavar="SESSION", help="a session id, unique id prefix, or title"
    )
    log.add_argument(
        "-q",
        "--query",
        metavar="TEXT",
        help='show messages containing every word of TEXT (case-insensitive; "a phrase" '
        "in double quotes stays together); with SESSION, only in that session",
    )
    log.add_argument(
        "-r",
        "--role",
        choices=[str(r) for r in Role],
        action="append",
        help="only messages of this role (repeatable)",
    )
    log.add_argument(
        "-n",
        "--limit",
        type=_count,
        metavar="N",
        help=f"show the newest N (0: all); default all of a transcript, {DEFAULT_LIMIT} "
        "sessions or search hits",
    )
    log.add_argument("--json", action="store_true", help="print JSON instead of text")
    log.add_argument(
        "--store",
        metavar="PATH",
        default=None,
        help="the transcript store directory (default: $CRUSH_DATA_DIR, else ./.crush)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failed, 2 bad usage)."""
    out = sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on bad usage (2)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(out)
        return 0
    try:
        status = _log(args, out)
        out.flush()  # here, so a reader that went away is handled below, not at exit
        return status
    except (StoreError, SessionNotFoundError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's own flush at
        # exit from complaining about the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        return 0
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


def _log(args: argparse.Namespace, out: TextIO) -> int:
    path = args.store or os.environ.get("CRUSH_DATA_DIR") or ".crush"
    if args.query is not None:
        Matcher(args.query)  # a query without words is bad input, before opening anything
    with open_store(path) as store:
        assert store is not None  # an explicit path opens a store or raises
        if args.query is not None or (args.role and args.session is None):
            limit = DEFAULT_LIMIT if args.limit is None else args.limit
            rows = message_rows(
                store,
                session=args.session,
                search=args.query,
                role=args.role,
                limit=limit or None,
            )
            _print_hits(rows, args, out)
        elif args.session is not None:
            session = find_session(store, args.session)
            messages = store.list_messages(session.id)
            if args.role:
                messages = [m for m in messages if str(m.role) in args.role]
            if args.limit:
                messages = messages[-args.limit :]
            if args.json:
                out.write(session_json(session, messages))
            else:
                out.write(format_transcript(session, messages))
        else:
            limit = DEFAULT_LIMIT if args.limit is None else args.limit
            rows = session_rows(store, limit=limit or None)
            if args.json:
                _dump_json(rows, out)
            else:
                out.write(format_sessions(rows, store.path))
    return 0


def format_sessions(rows: list[dict[str, Any]], path: object) -> str:
    """The session list as a table, one line per session."""
    if not rows:
        return f"No sessions in {path} yet: a %%crush cell starts one.\n"
    id_width = max(len("SESSION"), *(len(r["session"]) for r in rows))
    lines = [
        f"{'SESSION':<{id_width}}  {'UPDATED':<16}  {'MSGS':>5}  {'TOKENS IN/OUT':>15}  "
        f"{'COST':>8}  TITLE"
    ]
    for r in rows:
        tokens = f"{r['input_tokens']}/{r['output_tokens']}"
        lines.append(
            f"{r['session']:<{id_width}}  {r['updated']:%Y-%m-%d %H:%M}  {r['messages']:>5}  "
            f"{tokens:>15}  {format_cost(r['cost']):>8}  {_line(r['title']) or '(untitled)'}"
        )
    return "\n".join(lines) + "\n"


def format_transcript(session: Session, messages: list[Message]) -> str:
    """A session's messages for a terminal: text in full, tool traffic abbreviated."""
    usage = session.usage
    lines = [
        f"Session {session.id}: {_line(session.title) or '(untitled)'}",
        f"{session.message_count} messages, updated {format_time(session.updated_at)}, "
        f"tokens {usage.input_tokens} in / {usage.output_tokens} out, "
        f"cost {format_cost(session.cost)}",
    ]
    for message in messages:
        head = f"-- {message.role} · {format_time(message.created_at)}"
        if message.model:
            head += f" · {message.model}"
        finish = message.finish
        if finish is not None and finish.reason not in ORDINARY_FINISHES:
            head += f" [{finish.reason}" + (
                f": {_line(finish.message)}]" if finish.message else "]"
            )
        lines += ["", head]
        if message.reasoning:
            lines.append("  (reasoning) " + _abbreviate(message.reasoning))
        if message.text:
            lines.append(message.text.strip())
        for call in message.tool_calls:
            lines.append(f"  -> {call.name} {_abbreviate(compact_arguments(call.input))}")
        for result in message.tool_results:
            kind = "error" if result.is_error else "result"
            lines.append(f"  <- {result.name} {kind}: {_abbreviate(result.content)}")
    return "\n".join(lines) + "\n"


def _print_hits(rows: list[dict[str, Any]], args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        _dump_json(rows, out)
        return
    if not rows:
        what = f"containing {args.query!r}" if args.query is not None else "of that role"
        out.write(f"No messages {what}.\n")
        return
    terms = Matcher(args.query).terms if args.query is not None else ()
    for r in rows:
        title = _line(r["session_title"]) or "(untitled)"
        out.write(f"-- {r['session']} {title} · {r['time']:%Y-%m-%d %H:%M:%S} · {r['role']}\n")
        out.write(f"  {_snippet(_hit_text(r, terms), terms)}\n")


def _hit_text(row: dict[str, Any], terms: Sequence[str]) -> str:
    """What a hit shows: the text or reasoning with a match, else whatever it has."""
    for field in ("text", "reasoning"):
        if any(t in row[field].casefold() for t in terms):
            return row[field]
    return row["text"] or row["reasoning"] or row["tool_calls"] or row["tool_results"]


def _snippet(text: str, terms: Sequence[str]) -> str:
    """One line of ``text`` around the first occurrence of a term."""
    flat = _line(text)
    if not terms:
        return _abbreviate(flat)
    folded = flat.casefold()
    found = [i for i in (folded.find(t) for t in terms) if i >= 0]
    if not found or len(folded) != len(flat):  # folding changed lengths: no safe offsets
        return _abbreviate(flat)
    start = max(0, min(found) - ABBREVIATE // 3)
    snippet = flat[start : start + ABBREVIATE]
    return ("…" if start else "") + snippet + ("…" if start + ABBREVIATE < len(flat) else "")


def _dump_json(rows: list[dict[str, Any]], out: TextIO) -> None:
    def encode(value: object) -> str:
        if isinstance(value, datetime):
            return value.isoformat()
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")

    json.dump(rows, out, ensure_ascii=False, indent=2, default=encode)
    out.write("\n")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"N must be a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"N must be 0 or more, got {value}")
    return value


def _line(text: str) -> str:
    return " ".join(text.split())


def _abbreviate(text: str) -> str:
    flat = _line(text)
    return flat if len(flat) <= ABBREVIATE else flat[: ABBREVIATE - 1] + "…"
