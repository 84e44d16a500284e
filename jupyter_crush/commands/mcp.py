"""``%crush mcp [restart NAME]``: the MCP servers' state, and restarting one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import command

if TYPE_CHECKING:
    from ..kernel.crush import Crush


@command("mcp", "%crush mcp [restart NAME]", "MCP servers, their state and tools; restart one")
def mcp_command(crush: Crush, args: list[str]) -> None:
    from IPython.core.error import UsageError

    servers = crush.mcp
    if not args:
        print(servers.status())
        from ..kernel.trust_report import untrusted_notice

        waiting = untrusted_notice(crush.config)  # a folder's servers that wait for trust
        if waiting:
            print(waiting)
        return
    if args[0] != "restart" or len(args) != 2:
        raise UsageError("Usage: %crush mcp [restart NAME]")
    servers.reload()
    server = servers.servers.get(args[1])
    if server is None:
        names = ", ".join(sorted(servers.servers)) or "none are configured"
        raise UsageError(f"No MCP server {args[1]!r}; configured: {names}")
    if not server.usable:
        raise UsageError(server.unavailable())
    from ..kernel.display import kernel_loop

    servers.restart(server, kernel_loop())
    print(f"Restarting MCP server {server.name}; %crush mcp shows its state")
