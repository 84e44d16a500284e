"""``%crush replay [on|off|strict]``: whether unchanged cells replay their recorded turns."""

from __future__ import annotations

from typing import TYPE_CHECKING

from IPython.core.error import UsageError

from .registry import command

if TYPE_CHECKING:
    from ..kernel.crush import Crush


@command("replay", "%crush replay [on|off|strict]", "replay unchanged cells' recorded turns")
def replay_command(crush: Crush, args: list[str]) -> None:
    from ..kernel.rerun import MODES

    if len(args) > 1 or (args and args[0] not in MODES):
        raise UsageError("Usage: %crush replay [on|off|strict]")
    if args:
        crush.config.replay = MODES[args[0]]
    print(f"Replay: {crush.config.replay} (recorded turns in {crush.config.data_dir})")
