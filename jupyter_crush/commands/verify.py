"""``%crush verify [--wait] [PATH] [--timeout S] [--total S] [--live]``: run the notebook top
to bottom in a fresh kernel and report what only this kernel's state made work."""

from __future__ import annotations

import argparse
import functools
import math
from typing import TYPE_CHECKING, Any

from .registry import command

if TYPE_CHECKING:
    from ..kernel.crush import Crush
    from ..notebook.verify_report import VerifyReport


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        from IPython.core.error import UsageError

        raise UsageError(f"%crush verify: {message}; see %crush help")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


@functools.cache
def _parser() -> _Parser:
    """The command's parser, made when it first runs: its defaults come from the notebook
    runner, which loading the extension does not import."""
    from ..notebook.verify import Limits

    parser = _Parser(prog="%crush verify", add_help=False)
    parser.add_argument("--wait", action="store_true")
    parser.add_argument("--live", action="store_true")
    parser.add_argument("--timeout", type=_seconds, default=Limits.cell_timeout)
    parser.add_argument("--total", type=_seconds, default=Limits.total_timeout)
    parser.add_argument("path", nargs="?")
    return parser


@command(
    "verify",
    "%crush verify [--wait] [PATH] [--timeout S] [--total S] [--live]",
    "run the notebook top to bottom in a fresh kernel: failing cells, changed outputs, "
    "names only this kernel has",
)
def verify_command(crush: Crush, args: list[str]) -> VerifyReport | None:
    """Runs in the background with its own view (Stop stops it); --wait (and headless runs)
    wait and return the report. --timeout bounds each cell (120 s), --total the run (3600 s);
    --live lets %%crush cells that have no recorded answer ask the model."""
    from ..kernel.verify import verify
    from ..notebook.verify import Limits

    parsed = _parser().parse_args(args)
    return verify(
        crush,
        parsed.path,
        wait=parsed.wait,
        limits=Limits(parsed.timeout, parsed.total),
        live=parsed.live,
    )
