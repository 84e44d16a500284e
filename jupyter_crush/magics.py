"""``%%crush`` and ``%crush``: the IPython magics over the kernel's
:class:`~jupyter_crush.crush.Crush`.

``%%crush`` turns its cell into a prompt (:mod:`jupyter_crush.prepare`) and submits it;
``%crush`` runs a line command: the built-in ones below, or one another module registered
through :mod:`jupyter_crush.commands`.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .commands import COMMANDS, load_commands, usage_lines
from .compaction import session_meter
from .crush import Crush
from .message import Session
from .prepare import cell_prompt
from .usage import store_problems_in_one_line

LINE_USAGE = """\
%crush sessions              list sessions (* marks the current one)
%crush history [SESSION]     show a session's transcript (default: the current session)
%crush cancel [SESSION|--all]  stop the running and queued prompts of a session
%crush use SESSION           make SESSION the current session
%crush new [TITLE]           start a new current session
%crush model [NAME]          show or set the default model ('provider:model')
%crush help                  this text

SESSION is a session id, a unique id prefix, or a title.
Prompts can use {name}, {obj.attr}, {In[3]} and {Out[2]} from the notebook;
other braces are left alone and {{ writes a literal brace."""


@magics_class
class CrushMagics(Magics):
    def __init__(self, shell: Any, crush: Crush) -> None:
        super().__init__(shell)
        self.crush = crush

    @magic_arguments(name="%crush")
    @argument("-s", "--session", help="session id, id prefix, or title (a new title starts one)")
    @argument("--new", action="store_true", help="start a new session (titled -s if given)")
    @argument("-m", "--model", help="model for this prompt, as 'provider:model'")
    @argument("--wait", action="store_true", help="block the cell until the answer is complete")
    @argument(
        "--no-wait",
        action="store_true",
        help="return at once even when run headless (nbclient, papermill), where cells "
        "otherwise wait for the answer",
    )
    @argument("--yolo", action="store_true", help="allow state-changing tools without asking")
    @argument(
        "-f",
        "--format",
        choices=("markdown", "code", "text"),
        default="markdown",
        help="render the answer as markdown or text; 'code' waits, then puts the answer's "
        "code into a new cell below (not run)",
    )
    @argument(
        "--fix", action="store_true", help="fix the last error; the cell may add an instruction"
    )
    @argument("--fresh", action="store_true", help="ask again even if a recorded turn matches")
    @cell_magic("crush")
    def crush_cell(self, line: str, cell: str) -> None:
        """Ask the agent: the cell is the prompt; the answer streams below while the kernel
        stays free. Stop it with the Stop button, the kernel's interrupt, or %crush cancel.
        """
        args = parse_argstring(self.crush_cell, line)
        if args.wait and args.no_wait:
            raise UsageError("--wait and --no-wait contradict each other; pick one")
        prompt = cell_prompt(cell, self.shell.user_ns, fresh=args.fresh)
        from .fix import submit_fix

        submit = partial(submit_fix, self.crush) if args.fix else self.crush.submit
        submit(
            prompt.text,
            session_ref=args.session,
            new=args.new,
            model_name=args.model,
            wait=True if args.wait else (False if args.no_wait else None),
            yolo=args.yolo,
            fmt=args.format,
            attachments=list(prompt.attachments),
            cell=prompt.cell,
        )

    @line_magic("crush")
    def crush_line(self, line: str) -> None:
        try:
            words = shlex.split(line)
        except ValueError as error:
            raise UsageError(f"{error}; see %crush help") from None
        if not words:
            raise UsageError("Say what to do: %crush help lists the commands")
        command, rest = words[0], words[1:]
        handler: Callable[[list[str]], None] | None = getattr(self, f"_cmd_{command}", None)
        if handler is not None:
            handler(rest)
        elif command in COMMANDS:
            COMMANDS[command].run(self.crush, rest)
        else:
            raise UsageError(f"Unknown command {command!r}; %crush help lists the commands")

    # `%crush?` shows both forms: the line commands, then the cell's options.
    crush_line.__doc__ = (
        "Manage sessions and runs.\n\n" + LINE_USAGE + "\n\nThe cell form:\n" + crush_cell.__doc__
    )

    def _cmd_help(self, rest: list[str]) -> None:
        print(help_text())

    def _cmd_sessions(self, rest: list[str]) -> None:
        _no_args("sessions", rest)
        crush = self.crush
        sessions = crush.store.list_sessions()
        if not sessions:
            print("No sessions yet: a %%crush cell starts one.")
            return
        agent = crush._agent
        measure = session_meter(crush)
        for session in sorted(sessions, key=lambda s: s.created_at):
            mark = "*" if session.id == crush.current_session_id else " "
            state = ""
            if agent is not None and agent.is_session_busy(session.id):
                queued = agent.queued_prompts(session.id)
                state = "running" + (f", {queued} queued" if queued else "")
            meter = measure(crush.store.list_messages(session.id)).described() if measure else ""
            print(
                f"{mark} {session.id[:8]}  {session.title or '(untitled)'}  "
                f"{session.message_count} messages"
                + (f"  {meter}" if meter else "")
                + (f"  [{state}]" if state else "")
            )

    def _cmd_history(self, rest: list[str]) -> None:
        if len(rest) > 1:
            raise UsageError("Usage: %crush history [SESSION]")
        crush = self.crush
        with store_problems_in_one_line():
            if rest:
                session = crush.find_session(rest[0])
            elif crush.current_session_id is not None:
                session = crush.store.get_session(crush.current_session_id)
            else:
                print("No current session: a %%crush cell starts one.")
                return
            messages = crush.store.list_messages(session.id)
        print(format_history(session, messages))

    def _cmd_cancel(self, rest: list[str]) -> None:
        crush = self.crush
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

    def _cmd_use(self, rest: list[str]) -> None:
        if len(rest) != 1:
            raise UsageError("Usage: %crush use SESSION")
        session = self.crush.find_session(rest[0])
        self.crush.current_session_id = session.id
        print(f"Current session: {session.title or '(untitled)'} ({session.id[:8]})")

    def _cmd_new(self, rest: list[str]) -> None:
        session = self.crush.store.create_session(title=" ".join(rest))
        self.crush.current_session_id = session.id
        print(f"New current session {session.id[:8]}")

    def _cmd_model(self, rest: list[str]) -> None:
        crush = self.crush
        if not rest:
            if crush.model_override is not None:
                model = crush.model_override
                print(f"{model.provider}:{model.name} (set from code)")
            else:
                print(crush.config.model)
            return
        if len(rest) != 1:
            raise UsageError("Usage: %crush model [provider:model]")
        crush.use_model(rest[0])
        print(f"Default model: {rest[0]}")


def help_text() -> str:
    """``%crush help``: the built-in commands, those other modules registered, the cell."""
    builtin, _, notes = LINE_USAGE.partition("\n\n")
    registered = usage_lines()
    usage = f"{builtin}\n{registered}\n\n{notes}" if registered else LINE_USAGE
    cell = CrushMagics.crush_cell.__doc__
    return f"Manage sessions and runs.\n\n{usage}\n\nThe cell form:\n{cell}"


def _no_args(command: str, rest: list[str]) -> None:
    if rest:
        raise UsageError(f"%crush {command} takes no arguments")


def format_history(session: Session, messages: list[Any]) -> str:
    """A readable transcript: one block per message."""
    lines = [f"Session {session.title or '(untitled)'} ({session.id[:8]})"]
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
        for result in message.tool_results:
            kind = "error" if result.is_error else "result"
            lines.append(f"  tool {kind} {result.name}: " + _indent(result.content[:500]))
    return "\n".join(lines)


def _indent(text: str) -> str:
    return text.strip().replace("\n", "\n  ")


def load(shell: Any) -> Crush:
    """Register the magics on ``shell`` (once) and return its Crush."""
    crush = getattr(shell, "_jupyter_crush", None)
    if crush is None:
        load_commands()
        crush = Crush(shell)
        crush.install()
        shell._jupyter_crush = crush
        shell.register_magics(CrushMagics(shell, crush))
    return crush


def unload(shell: Any) -> None:
    crush = getattr(shell, "_jupyter_crush", None)
    if crush is None:
        return
    crush.close()
    del shell._jupyter_crush


def current() -> Crush:
    """The Crush of the running IPython (loads the extension if needed)."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("jupyter_crush needs a running IPython kernel or shell")
    return load(shell)
