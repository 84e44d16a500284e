"""``%crush context``: what the next request would carry, with sizes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.tokens import estimate_chars, message_chars
from .registry import command

if TYPE_CHECKING:
    from ..kernel.crush import Crush


def describe_next_request(crush: Crush) -> str:
    """What the next prompt of the current session would send, with sizes."""
    import json

    from ..agent.compaction import fallback_request
    from ..kernel.context import build_system_prompt
    from ..kernel.fix import last_error
    from ..providers.windows import model_window

    model = crush.resolve_model(None)
    agent = crush.agent
    tool_list = list(agent.tools.values())
    names = [t.name for t in tool_list]
    prompt = build_system_prompt(crush.config.system_prompt, names, crush.shell)
    schema_chars = sum(
        len(json.dumps({"name": t.name, "description": t.spec.description, **t.spec.parameters}))
        for t in tool_list
    )
    lines = [f"Model: {model.provider}:{model.name}"]
    session = None
    if crush.current_session_id is not None:
        session = crush.store.get_session(crush.current_session_id)
    history_chars = sent = 0
    left_out = 0
    if session is not None:
        messages = crush.store.list_messages(session.id)
        view, request = fallback_request(messages, crush.config.history_chars)
        history_chars = sum(message_chars(m) for m in view)
        sent = sum(message_chars(m) for m in request)
        # A cut history has a note saying how much was left out.
        left_out = 0 if request is view else len(view) - len(request) + 1
        lines.append(
            f"Session: {session.title or '(untitled)'} ({session.id[:8]}), {len(messages)} messages"
        )
    else:
        lines.append("Session: none yet (the next %%crush cell starts one)")
    system_chars = len(prompt.text)
    lines.append(
        f"System prompt: {system_chars:,} chars (~{estimate_chars(system_chars):,} tokens)"
    )
    lines += [f"  {source}" for source in prompt.sources]
    lines += [f"  {problem}" for problem in prompt.problems]
    lines.append(
        f"Tools ({len(tool_list)}): {', '.join(t.name for t in tool_list) or 'none'}; "
        f"{schema_chars:,} chars (~{estimate_chars(schema_chars):,} tokens)"
    )
    error = last_error(crush.shell)
    lines.append(
        "Attachments: none"
        + (
            f" (%crush fix would attach {error.summary()!r} from {_where(error.execution_count)})"
            if error is not None
            else ""
        )
    )
    history_line = f"History: {sent:,} chars (~{estimate_chars(sent):,} tokens) sent"
    if left_out:
        history_line += (
            f"; {left_out} older messages ({history_chars - sent:,} chars) left out "
            f"(CrushConfig.history_chars = {crush.config.history_chars:,})"
        )
    lines.append(history_line)
    total = estimate_chars(system_chars) + estimate_chars(schema_chars) + estimate_chars(sent)
    limits = model_window(model, crush.config.context_window or None)
    window = limits.window if limits else None
    if window:
        lines.append(
            f"Total: ~{total:,} tokens before the prompt, {total / window:.1%} of the "
            f"model's {window:,}-token window"
        )
    else:
        lines.append(f"Total: ~{total:,} tokens before the prompt (model's window unknown)")
    return "\n".join(lines)


def _where(execution_count: int | None) -> str:
    return f"In [{execution_count}]" if execution_count is not None else "an earlier cell"


@command("context", "%crush context", "what the next request would carry, with sizes")
def context_command(crush: Crush, args: list[str]) -> None:
    from IPython.core.error import UsageError

    if args:
        raise UsageError("%crush context takes no arguments")
    print(describe_next_request(crush))
