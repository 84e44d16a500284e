"""``%crush trust``: trust this folder's crush.json as it is now, show what it does, revoke.

The rule is :mod:`jupyter_crush.providers.trust`; what it tells the user,
:mod:`jupyter_crush.kernel.trust_report`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import command

if TYPE_CHECKING:
    from ..kernel.crush import Crush

USAGE = "%crush trust [--show | --revoke]"


@command("trust", USAGE, "apply this folder's crush.json (MCP servers, endpoints, keys)")
def trust_command(crush: Crush, args: list[str]) -> None:
    from IPython.core.error import UsageError

    from ..kernel.trust_report import revoke_here, show, trust_here
    from ..providers.config import ProviderConfigError

    actions = {(): trust_here, ("--show",): show, ("--revoke",): revoke_here}
    action = actions.get(tuple(args))
    if action is None:
        raise UsageError(f"Usage: {USAGE}")
    try:
        print(action(crush.config))
    except ProviderConfigError as error:  # an unreadable crush.json, an unwritable store
        raise UsageError(str(error)) from None
