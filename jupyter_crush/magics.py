"""``%%crush`` and ``%crush``: the IPython magics over the kernel's
:class:`~jupyter_crush.kernel.crush.Crush`.

``%%crush`` turns its cell into a prompt (:mod:`jupyter_crush.kernel.prepare`) and submits it;
``%crush`` runs a line command from :mod:`jupyter_crush.commands`, whose import registers
every command (the built-in ones of :mod:`jupyter_crush.commands.session`, ``help`` here,
and the others).
"""

from __future__ import annotations

import shlex
from functools import partial
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .commands.registry import COMMANDS, command, usage_lines  # the package registers all
from .kernel.crush import Crush

NOTES = """\
SESSION is a session id, a unique id prefix, or a title.
Prompts can use {name}, {obj.attr}, {In[3]} and {Out[2]} from the notebook;
other braces are left alone and {{ writes a literal brace."""


@command("help", "%crush help", "this text", builtin=True)
def help_command(crush: Crush, rest: list[str]) -> None:
    print(help_text())


LINE_USAGE = f"{usage_lines(builtin=True)}\n\n{NOTES}"


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
        # Imported by the first cell: %load_ext does not need them.
        from .kernel.fix import submit_fix
        from .kernel.prepare import cell_prompt
        from .kernel.submit import submit

        args = parse_argstring(self.crush_cell, line)
        if args.wait and args.no_wait:
            raise UsageError("--wait and --no-wait contradict each other; pick one")
        prompt = cell_prompt(cell, self.shell.user_ns, fresh=args.fresh)
        run = partial(submit_fix if args.fix else submit, self.crush)
        run(
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
    def crush_line(self, line: str) -> Any:
        try:
            words = shlex.split(line)
        except ValueError as error:
            raise UsageError(f"{error}; see %crush help") from None
        if not words:
            raise UsageError("Say what to do: %crush help lists the commands")
        command, rest = words[0], words[1:]
        if command not in COMMANDS:
            raise UsageError(f"Unknown command {command!r}; %crush help lists the commands")
        return COMMANDS[command].run(self.crush, rest)  # a value some commands give

    # `%crush?` shows both forms: the line commands, then the cell's options.
    crush_line.__doc__ = (
        "Manage sessions and runs.\n\n" + LINE_USAGE + "\n\nThe cell form:\n" + crush_cell.__doc__
    )


def help_text() -> str:
    """``%crush help``: the built-in commands, those other modules registered, the cell."""
    lines = "\n".join(filter(None, [usage_lines(builtin=True), usage_lines(builtin=False)]))
    cell = CrushMagics.crush_cell.__doc__
    return f"Manage sessions and runs.\n\n{lines}\n\n{NOTES}\n\nThe cell form:\n{cell}"


def load(shell: Any) -> Crush:
    """Register the magics on ``shell`` (once) and return its Crush."""
    crush = getattr(shell, "_jupyter_crush", None)
    if crush is None:
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
