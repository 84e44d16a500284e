"""The built-in ``%crush`` line commands: sessions, the current session, runs, the model.

They are listed first in ``%crush help`` and ``%crush?``, in the order registered here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ..core.remote import ALLOW_LISTS
from ..kernel.errors import store_problems_in_one_line
from .registry import command

if TYPE_CHECKING:
    from ..core.message import Session
    from ..kernel.crush import Crush


@command("sessions", "%crush sessions", "list sessions (* marks the current one)", builtin=True)
def sessions_command(crush: Crush, rest: list[str]) -> None:
    if rest:
        raise UsageError("%crush sessions takes no arguments")
    sessions = crush.store.list_sessions()
    print(crush.config.store_line())
    if not sessions:
        print("No sessions yet: a %%crush cell starts one.")
        return
    from ..agent.budget import day_spend_line, spend_of_cap
    from ..kernel.models import session_meter

    agent = crush._agent
    measure = session_meter(crush)
    for session in sorted(sessions, key=lambda s: s.created_at):
        mark = "*" if session.id == crush.current_session_id else " "
        state = ""
        if agent is not None and agent.is_session_busy(session.id):
            queued = agent.queued_prompts(session.id)
            state = "running" + (f", {queued} queued" if queued else "")
        meter = measure(crush.store.list_messages(session.id)).described() if measure else ""
        spend = spend_of_cap(session.cost, crush.config.max_cost)
        print(
            f"{mark} {session.id[:8]}  {session.title or '(untitled)'}  "
            f"{session.message_count} messages"
            + (f"  sub-agent of {parent[:8]}" if (parent := session.parent_session_id) else "")
            + (f"  {meter}" if meter else "")
            + (f"  {spend}" if spend else "")
            + (f"  [{state}]" if state else "")
        )
    if crush.config.max_cost_per_day:
        print(day_spend_line(crush.store, crush.config.max_cost_per_day))


@command(
    "history",
    "%crush history [SESSION]",
    "show a session's transcript (default: the current session)",
    builtin=True,
)
def history_command(crush: Crush, rest: list[str]) -> None:
    if len(rest) > 1:
        raise UsageError("Usage: %crush history [SESSION]")
    with store_problems_in_one_line():
        if rest:
            session = crush.find_session(rest[0])
        elif crush.current_session_id is not None:
            session = crush.store.get_session(crush.current_session_id)
        else:
            print("No current session: a %%crush cell starts one.")
            return
        messages = crush.store.list_messages(session.id)
        children = [s for s in crush.store.list_sessions() if s.parent_session_id == session.id]
    print(format_history(session, messages, children))


@command(
    "cancel",
    "%crush cancel [SESSION|--all]",
    "stop the running and queued prompts of a session",
    builtin=True,
)
def cancel_command(crush: Crush, rest: list[str]) -> None:
    if rest == ["--all"]:
        crush.cancel_all()
        return
    if len(rest) > 1:
        raise UsageError("Usage: %crush cancel [SESSION | --all]")
    if rest:
        session_id = crush.find_session(rest[0]).id
    elif crush.current_session_id is not None:
        session_id = crush.current_session_id
    else:
        raise UsageError("No current session to cancel; name one or use --all")
    crush.cancel(session_id)


@command("use", "%crush use SESSION", "make SESSION the current session", builtin=True)
def use_command(crush: Crush, rest: list[str]) -> None:
    if len(rest) != 1:
        raise UsageError("Usage: %crush use SESSION")
    session = crush.find_session(rest[0])
    crush.current_session_id = session.id
    print(f"Current session: {session.title or '(untitled)'} ({session.id[:8]})")


@command("new", "%crush new [TITLE]", "start a new current session", builtin=True)
def new_command(crush: Crush, rest: list[str]) -> None:
    session = crush.store.create_session(title=" ".join(rest))
    crush.current_session_id = session.id
    print(f"New current session {session.id[:8]}")


@command(
    "model",
    "%crush model [NAME | --local]",
    "show or set the default model ('provider:model'); --local: local servers' models",
    builtin=True,
)
def model_command(crush: Crush, rest: list[str]) -> None:
    if not rest:
        if crush.config.nothing_reached_a_remote_kernel():
            print(f"No API key and no CRUSH_MODEL reached this remote kernel: {ALLOW_LISTS}")
        if crush.model_override is not None:
            model = crush.model_override
            print(f"{model.provider}:{model.name} (set from code)")
        else:
            print(crush.config.model)
        print(crush.config.store_line())
        return
    if rest == ["--local"]:
        from .local_models import show_local_models

        return show_local_models(crush)
    if len(rest) != 1:
        raise UsageError("Usage: %crush model [provider:model | --local]")
    crush.use_model(rest[0])
    print(f"Default model: {rest[0]}")


def format_history(session: Session, messages: list[Any], children: Iterable[Session] = ()) -> str:
    """A readable transcript: one block per message; ``children`` are the sessions of the
    sub-agents its tool calls ran, each named under its call."""
    lines = [f"Session {session.title or '(untitled)'} ({session.id[:8]})"]
    if session.parent_session_id:
        lines[0] += (
            f" · sub-agent of session {session.parent_session_id[:8]}, "
            f"tool call {session.parent_tool_call_id}"
        )
    by_call = {child.parent_tool_call_id: child for child in children}
    for message in messages:
        when = time.strftime("%H:%M:%S", time.localtime(message.created_at))
        head = f"[{when}] {message.role}"
        reason = message.finish_reason
        if reason is not None and str(reason) != "end_turn":
            finish = message.finish
            head += f" ({reason}{': ' + finish.message if finish and finish.message else ''})"
        lines.append(head)
        if message.reasoning:
            lines.append("  (reasoning) " + _indent(message.reasoning))
        if message.text:
            lines.append("  " + _indent(message.text))
        for call in message.tool_calls:
            lines.append(f"  tool call {call.name} {call.input}")
            child = by_call.get(call.id)
            if child is not None:
                lines.append(f"    sub-agent session {child.id[:8]}: %crush history {child.id[:8]}")
        for result in message.tool_results:
            kind = "error" if result.is_error else "result"
            lines.append(f"  tool {kind} {result.name}: " + _indent(result.content[:500]))
    return "\n".join(lines)


def _indent(text: str) -> str:
    return text.strip().replace("\n", "\n  ")
