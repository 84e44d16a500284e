"""Which MCP servers the kernel may use: Crush's ``mcp`` section, read as Crush reads it.

A ``crush.json`` (the same files, in the same order, as the providers read: see
:func:`~jupyter_crush.providers.config.crush_config_files`) may hold::

    "mcp": {
      "files":  {"type": "stdio", "command": "node", "args": ["server.js"],
                 "env": {"ROOT": "$HOME/data"}, "timeout": 30},
      "github": {"type": "http", "url": "https://api.githubcopilot.com/mcp/",
                 "headers": {"Authorization": "Bearer $GH_PAT"}},
      "legacy": {"type": "sse", "url": "https://example.com/mcp/sse", "disabled": true}
    }

``CrushConfig.mcp_servers`` takes entries of the same shape and wins by name. Values expand
``$VAR`` like the rest of the file. A project file's (one outside the user's config
directory) section applies only once the file is trusted
(:mod:`jupyter_crush.providers.trust`); its stdio servers then inherit the kernel's
environment without the variables holding a provider's key, unless the entry's ``env``
names them. An entry that cannot be used does not stop the others:
it becomes a server that has failed with the reason, shown by ``%crush mcp`` and returned
to the model if it calls one of the server's tools.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Transport names as crush.json spells them.
MCP_TYPES = ("stdio", "http", "sse")
#: Crush's default bound on connecting to a server, in seconds.
DEFAULT_START_TIMEOUT = 10.0
#: Bound on one tool call when the entry sets no ``timeout``: real tools (queries,
#: builds) take longer than a connection should.
DEFAULT_CALL_TIMEOUT = 120.0
#: Where entries from the notebook's traitlets config come from, in messages.
TRAIT_SOURCE = "CrushConfig.mcp_servers"


@dataclass(frozen=True)
class MCPServerConfig:
    """One entry of the ``mcp`` section, with ``$VAR`` references resolved."""

    name: str
    type: str = "stdio"
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    disabled: bool = False
    #: The entry's ``timeout``; ``None`` uses the defaults above.
    timeout: float | None = None
    enabled_tools: tuple[str, ...] = ()  # Crush's allow list; empty allows every tool
    disabled_tools: tuple[str, ...] = ()
    source: str = ""  # the file (or trait) the entry came from
    #: Variables of the kernel's environment a stdio server does not inherit: provider keys,
    #: for a server a project file starts without naming them.
    withheld_env: tuple[str, ...] = ()
    #: Why the entry cannot be used; such a server is shown failed with this reason.
    error: str = ""

    @property
    def start_timeout(self) -> float:
        return self.timeout or DEFAULT_START_TIMEOUT

    @property
    def call_timeout(self) -> float:
        return self.timeout or DEFAULT_CALL_TIMEOUT

    def offers(self, tool_name: str) -> bool:
        """Whether the entry's enabled_tools / disabled_tools let the model see the tool."""
        if self.enabled_tools and tool_name not in self.enabled_tools:
            return False
        return tool_name not in self.disabled_tools


def load_mcp_servers(
    crush_config: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    trust_all: bool = False,
) -> dict[str, MCPServerConfig]:
    """The configured servers by name: crush.json's ``mcp`` (an explicit path, or Crush's
    usual places merged, later files winning by name; a project file's only when trusted, or
    ``trust_all``), then ``overrides`` (the trait's value) on top. A crush.json that cannot be
    read at all raises ``CrushConfigError``."""
    from ..providers.config import CrushConfigError, crush_config_files, key_owners
    from ..providers.trust import open_config

    servers: dict[str, MCPServerConfig] = {}
    for path in crush_config_files(crush_config):
        file = open_config(path, trust_all=trust_all)
        if not file.applies_whole:
            continue  # the notice at the prompt says so (jupyter_crush.commands.trust)
        section = file.data.get("mcp", {})
        if not isinstance(section, dict):
            raise CrushConfigError(f'{path}: "mcp" must be an object of server name -> settings')
        keys = key_owners() if file.is_project else {}
        servers.update(parse_section(section, str(path), keys))
    servers.update(parse_section(overrides or {}, TRAIT_SOURCE))
    return servers


def parse_section(
    section: Mapping[str, Any], source: str, key_owners: Mapping[str, str] | None = None
) -> dict[str, MCPServerConfig]:
    """``key_owners`` (a project file's section): variables holding a provider's key, which its
    servers get only where an entry names them."""
    from ..providers.config import CrushConfigError

    parsed = {}
    for name, raw in section.items():
        try:
            parsed[name] = _parse_entry(str(name), raw, source, key_owners or {})
        except CrushConfigError as error:
            parsed[name] = MCPServerConfig(str(name), source=source, error=str(error))
    return parsed


def _parse_entry(
    name: str, raw: Any, source: str, key_owners: Mapping[str, str]
) -> MCPServerConfig:
    from ..providers.config import CrushConfigError, expand_value
    from ..providers.trust import Secret, host_of, key_destination_problem, variables

    where = f'MCP server "{name}"'

    def fail(problem: str) -> CrushConfigError:
        return CrushConfigError(f"{source}: {where} {problem}")

    if not isinstance(raw, Mapping):
        raise fail('must be an object like {"type": "stdio", "command": "..."}')
    kind = raw.get("type") or "stdio"
    if kind not in MCP_TYPES:
        raise fail(f"has type {kind!r}; use one of " + ", ".join(f'"{t}"' for t in MCP_TYPES))

    def text(key: str) -> str:
        return expand_value(raw.get(key), source, f"{where} {key}") or ""

    def names(key: str) -> tuple[str, ...]:
        value = raw.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(f"{key} must be a list of tool names")
        return tuple(value)

    def strings(key: str) -> dict[str, str]:
        value = raw.get(key) or {}
        if not isinstance(value, Mapping):
            raise fail(f"{key} must be an object of name -> string")
        # A value that resolves to nothing (an unset "$VAR") is left out, as Crush does.
        expanded = {str(k): expand_value(v, source, f"{where} {key} {k}") for k, v in value.items()}
        return {k: v for k, v in expanded.items() if v}

    args = raw.get("args") or []
    if not isinstance(args, list):
        raise fail('args must be a list of strings, e.g. ["server.py"]')
    timeout = raw.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise fail(f"timeout must be a positive number of seconds, not {timeout!r}")
    config = MCPServerConfig(
        name=name,
        type=kind,
        command=text("command"),
        args=tuple(expand_value(a, source, f"{where} args") or "" for a in args),
        env=strings("env"),
        url=text("url"),
        headers=strings("headers"),
        disabled=bool(raw.get("disabled", False)),
        timeout=float(timeout) if timeout is not None else None,
        enabled_tools=names("enabled_tools"),
        disabled_tools=names("disabled_tools"),
        source=source,
        withheld_env=tuple(sorted(set(key_owners) - set(variables(raw.get("env"))))),
    )
    if kind != "stdio" and key_owners:
        # Headers go to the entry's url: a key may go there when the entry writes both.
        named = not variables(raw.get("url"))
        for var in variables(raw.get("headers")):
            secret = Secret(f"${var}", key_owners.get(var), named_with_host=True)
            problem = key_destination_problem(
                secret, host_of(config.url), host_named_by_file=named, chosen_hosts=()
            )
            if problem:
                raise fail(f"headers: {problem}; write the url itself, not a $VAR")
    if kind == "stdio" and not config.command:
        raise fail('has no "command"; say which program runs the server')
    if kind != "stdio" and not config.url:
        raise fail(f'has no "url"; a {kind} server needs the address of its endpoint')
    return config


def describe_sources(configs: Iterable[MCPServerConfig]) -> str:
    """Where the entries came from, for ``%crush mcp``."""
    sources = dict.fromkeys(c.source for c in configs if c.source)
    return ", ".join(sources) or "nowhere"
