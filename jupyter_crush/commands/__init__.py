"""Every ``%crush`` line command, one module each (the session commands together).

Importing the package registers them all in :mod:`.registry`; the built-in ones first, so
``%crush help`` lists them in this order.
"""

from . import session  # noqa: I001  (the built-in commands, registered first)
from . import compact, context, fix, mcp, rename, replay, trust, undo, verify

__all__ = [
    "compact",
    "context",
    "fix",
    "mcp",
    "rename",
    "replay",
    "session",
    "trust",
    "undo",
    "verify",
]
