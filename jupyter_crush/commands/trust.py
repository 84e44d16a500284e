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

    from ..kernel.trust_report import project_files, show
    from ..providers.config import ProviderConfigError
    from ..providers.trust import forget_trust, remember_trust

    if args not in ([], ["--show"], ["--revoke"]):
        raise UsageError(f"Usage: {USAGE}")
    try:
        if args == ["--show"]:
            print(show(crush))
            return
        files = project_files(crush.config)
    except ProviderConfigError as error:
        raise UsageError(str(error)) from None
    if not files:
        print("No crush.json here to trust: only your own configuration applies")
    elif args == ["--revoke"]:
        gone = forget_trust(files)
        print(
            f"No longer trusted: {', '.join(map(str, gone))}" if gone else "Nothing here is trusted"
        )
    else:
        remember_trust(files)
        for file in files:
            print(f"Trusted {file.path} as it is now (sha256 {file.digest[:12]})")
        print("It applies from the next prompt; a change to it needs %crush trust again")
