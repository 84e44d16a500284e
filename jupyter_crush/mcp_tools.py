"""Tools from MCP servers, offered to the agent and run on the kernel's event loop.

:class:`MCPServers` is the agent's :class:`~jupyter_crush.tools.ToolSource`: at the start
of each turn it reads the configuration (:mod:`.mcp_config`), starts the servers that are
not running yet (all at once, each bounded by its timeout: the first prompt after the
kernel starts waits for them, no cell ever does), and offers each server's tools as
``mcp_<server>_<tool>``. How one server is started, called, failed and stopped is
:mod:`.mcp_server`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .commands import command
from .mcp_config import MCPServerConfig, describe_sources, load_mcp_servers
from .mcp_server import MCPServer, MCPServerError, ServerState, describe_error
from .model import ToolSpec
from .tools import Tool, ToolContext, ToolResult

if TYPE_CHECKING:
    from mcp import types as mcp_types

    from .config import CrushConfig
    from .crush import Crush

#: Tool names reach every provider; OpenAI allows at most 64 of these characters.
_NAME_LIMIT = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def tool_name(server: str, tool: str) -> str:
    """The name the model sees: ``mcp_<server>_<tool>``, in the characters every provider
    accepts, shortened with a hash when too long."""
    name = _UNSAFE.sub("_", f"mcp_{server}_{tool}")
    if len(name) > _NAME_LIMIT:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: _NAME_LIMIT - 9]}_{digest}"
    return name


def _prefix(server: str) -> str:
    return _UNSAFE.sub("_", f"mcp_{server}_")


class MCPServers:
    """The kernel's MCP servers: the agent's source of ``mcp_*`` tools (loop thread only)."""

    def __init__(self, load: Callable[[], dict[str, MCPServerConfig]]) -> None:
        self._load = load
        # Name -> server, in line with the configuration after each reload(). Read and
        # written on the kernel's loop thread only (turns, %crush mcp), so no lock.
        self.servers: dict[str, MCPServer] = {}
        self.config_error = ""  # a crush.json that could not be read at all
        # The names this source put into the agent's tool map, so a refresh can replace them.
        self._offered: set[str] = set()
        # Strong references to restarts in flight: the loop keeps only weak ones.
        self._restarts: set[asyncio.Task[None]] = set()

    @classmethod
    def for_config(cls, config: CrushConfig) -> MCPServers:
        return cls(
            lambda: load_mcp_servers(
                config.crush_config or None,
                config.mcp_servers,
                trust_all=config.trust_project_config,
            )
        )

    def reload(self) -> None:
        """Bring the servers in line with the configuration: new entries added, removed or
        changed ones stopped."""
        try:
            configs = self._load()
            self.config_error = ""
        except Exception as error:  # a broken crush.json: keep what runs, say why
            self.config_error = describe_error(error)
            return
        for name, server in list(self.servers.items()):
            if configs.get(name) != server.config:
                server.stop()
                del self.servers[name]
        for name, config in configs.items():
            if name not in self.servers:
                self.servers[name] = MCPServer(config)

    # -- the ToolSource protocol ----------------------------------------------------------

    async def refresh(self, tools: dict[str, Tool]) -> None:
        """Start the servers that are due, then offer every listed tool in ``tools``."""
        self.reload()
        due = [server.ensure_started() for server in self.servers.values() if server.due()]
        if due:
            await asyncio.gather(*due, return_exceptions=True)
        for name in self._offered:
            tools.pop(name, None)
        self._offered = set()
        for server in sorted(self.servers.values(), key=lambda s: s.name):
            if not server.usable:
                continue
            for listed in server.tools:
                if not server.config.offers(listed.name):
                    continue
                name = tool_name(server.name, listed.name)
                serial = 2
                while name in tools:  # two servers whose names run together
                    name = tool_name(server.name, f"{listed.name}_{serial}")
                    serial += 1
                tools[name] = mcp_tool(server, listed, name)
                self._offered.add(name)

    def unknown_tool(self, name: str) -> str | None:
        """Why a call to ``name`` cannot be served, when it names one of these servers."""
        for server in self.servers.values():
            if name.startswith(_prefix(server.name)):
                if server.state is ServerState.RUNNING:
                    prefix = _prefix(server.name)
                    offered = ", ".join(n for n in self._offered if n.startswith(prefix))
                    return (
                        f"MCP server '{server.name}' has no tool {name!r}; "
                        f"it offers: {offered or 'none'}"
                    )
                return server.unavailable()
        return None

    # -- control --------------------------------------------------------------------------

    def restart(self, server: MCPServer, loop: asyncio.AbstractEventLoop) -> asyncio.Task[None]:
        """Restart ``server`` now, in the background on ``loop``."""
        task = loop.create_task(server.restart(), name=f"mcp-restart:{server.name}")
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)
        return task

    def shutdown(self) -> None:
        """Kernel shutdown or restart: stop every server now, leaving no process behind."""
        for server in self.servers.values():
            server.kill()

    def status(self) -> str:
        """``%crush mcp``: each server, its state, and its tools."""
        self.reload()
        lines = []
        if self.config_error:
            lines.append(f"MCP configuration error: {self.config_error}")
        if not self.servers:
            lines.append(
                'No MCP servers: add them to crush.json\'s "mcp" section or to '
                "CrushConfig.mcp_servers"
            )
            return "\n".join(lines)
        configs = [s.config for s in self.servers.values()]
        lines.append(f"MCP servers (from {describe_sources(configs)}):")
        for server in sorted(self.servers.values(), key=lambda s: s.name):
            state = str(server.state)
            if server.state is ServerState.FAILED:
                state = server.unavailable().split(": ", 1)[-1]
                state = f"failed: {state}"
            elif server.state is ServerState.RUNNING and server.pid is not None:
                state += f" (pid {server.pid})"
            lines.append(f"  {server.name}  [{server.config.type}]  {state}")
            for listed in server.tools:
                if not server.config.offers(listed.name):
                    continue
                hint = " (read-only)" if _read_only(listed) else ""
                about = (listed.description or "").strip().splitlines()
                summary = f"  {about[0][:80]}" if about else ""
                lines.append(f"      {tool_name(server.name, listed.name)}{hint}{summary}")
        return "\n".join(lines)


def mcp_tool(server: MCPServer, listed: mcp_types.Tool, name: str) -> Tool:
    """``listed`` as an agent tool named ``name``; read-only tools skip the permission prompt."""

    async def run(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        try:
            result = await server.call(listed.name, arguments, context.stop_if_covered)
        except MCPServerError as error:
            return ToolResult(str(error), is_error=True, metadata={"mcp_server": server.name})
        return tool_result(server.name, result)

    description = listed.description or (listed.annotations and listed.annotations.title) or ""
    return Tool(
        spec=ToolSpec(
            name,
            f"{description}\n(MCP server {server.name}, tool {listed.name})".strip(),
            listed.input_schema or {"type": "object", "properties": {}},
        ),
        run=run,
        changes_state=not _read_only(listed),
    )


def tool_result(server: str, result: mcp_types.CallToolResult) -> ToolResult:
    """An MCP result as a tool result: text, images (checked and downscaled like figures),
    structured content, the error flag; a line of text for what cannot be shown."""
    from mcp import types as mcp_types

    from .images import ImageError, image_part

    texts = []
    images = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            texts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent):
            try:
                data = base64.b64decode(block.data, validate=True)
                images.append(image_part(data, block.mime_type, label=f"from MCP server {server}"))
            except (ValueError, ImageError) as error:  # binascii.Error is a ValueError
                texts.append(f"[image {block.mime_type} not shown: {error}]")
        elif isinstance(block, mcp_types.AudioContent):
            texts.append(f"[audio {block.mime_type} not shown: models here take text and images]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, mcp_types.TextResourceContents):
                texts.append(resource.text)
            else:
                texts.append(f"[resource {resource.uri} ({resource.mime_type or 'binary'})]")
        elif isinstance(block, mcp_types.ResourceLink):
            texts.append(f"[resource link {block.uri}: {block.name}]")
    metadata: dict[str, Any] = {"mcp_server": server}
    if result.structured_content is not None:
        structured = json.dumps(result.structured_content, ensure_ascii=False, default=str)
        metadata["structured_content"] = result.structured_content
        if not texts:  # the spec asks servers to repeat it as text; not all do
            texts.append(structured)
    return ToolResult("\n".join(texts), result.is_error, metadata, images)


def _read_only(listed: mcp_types.Tool) -> bool:
    return bool(listed.annotations and listed.annotations.read_only_hint)


@command("mcp", "%crush mcp [restart NAME]", "MCP servers, their state and tools; restart one")
def mcp_command(crush: Crush, args: list[str]) -> None:
    from IPython.core.error import UsageError

    servers = crush.mcp
    if not args:
        print(servers.status())
        from .trust_report import untrusted_notice

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
    from .run_display import kernel_loop

    servers.restart(server, kernel_loop())
    print(f"Restarting MCP server {server.name}; %crush mcp shows its state")
