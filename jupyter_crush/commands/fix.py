"""``%crush fix [INSTRUCTION]``: ask the agent to fix the last error."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .registry import command

if TYPE_CHECKING:
    from ..kernel.crush import Crush


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        from IPython.core.error import UsageError

        raise UsageError(f"%crush fix: {message}; see %crush help")


_parser = _Parser(prog="%crush fix", add_help=False)
_parser.add_argument("-s", "--session")
_parser.add_argument("-m", "--model")
_parser.add_argument("-f", "--format", choices=("markdown", "code", "text"), default="markdown")
_parser.add_argument("--wait", action="store_true")
_parser.add_argument("--yolo", action="store_true")
_parser.add_argument("instruction", nargs="*")


@command(
    "fix",
    "%crush fix [-f code] [TEXT]",
    "ask the agent to fix the last error (-f code: the fix goes in a new cell)",
)
def fix_command(crush: Crush, args: list[str]) -> None:
    from ..kernel.fix import submit_fix

    parsed = _parser.parse_args(args)
    submit_fix(
        crush,
        " ".join(parsed.instruction),
        session_ref=parsed.session,
        model_name=parsed.model,
        wait=True if parsed.wait else None,
        yolo=parsed.yolo,
        fmt=parsed.format,
    )
