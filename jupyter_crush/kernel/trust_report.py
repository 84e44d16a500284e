"""What folder trust tells the user (:mod:`jupyter_crush.providers.trust` decides).

* :func:`check_at_prompt`: at each prompt, the crush.json files of the notebook's folder are
  looked at as they are now; a file whose risky parts were left out says so in one line, once
  per kernel, and a change of trust (trusted, revoked, the file edited) makes models resolve
  afresh, so the prompt goes where the file now may send it.
* :func:`show`: ``%crush trust --show``, what each file would do once trusted: the hosts it
  would send keys to, the commands it would start, what the key rule would still refuse.
"""

from __future__ import annotations

import json
import os
import re
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..providers.trust import (
    ConfigFile,
    Trust,
    applied,
    forget_trust,
    host_of,
    open_config,
    remember_trust,
    variables,
)

if TYPE_CHECKING:
    from .config import CrushConfig as CrushSettings
    from .crush import Crush


def project_files(config: CrushSettings) -> list[ConfigFile]:
    """The crush.json files in effect that are not the user's own, as they are now: of the
    files the providers and MCP servers read, so a missing ``crush_config`` raises the same
    CrushConfigError."""
    from ..providers.config import crush_config_files

    paths = crush_config_files(config.crush_config)
    files = [open_config(p, trust_all=config.trust_project_config) for p in paths]
    return [file for file in files if file.is_project]


def notice(files: list[ConfigFile], known_providers: set[str]) -> str | None:
    """One line: which files were not applied whole, what was left out, how to trust them."""
    parts = []
    for file in files:
        _, ignored = applied(file, known_providers)
        if ignored:
            listed = ", ".join(ignored[:-1]) + " and " + ignored[-1] if ignored[1:] else ignored[0]
            parts.append(f"{file.path} {file.trust.value}, so its {listed} were ignored")
    if not parts:
        return None
    return (
        "; ".join(parts) + " and your own settings apply: %crush trust --show says what they "
        "would do, %crush trust applies them"
    )


def untrusted_notice(config: CrushSettings) -> str | None:
    """:func:`notice` for the files in effect now (None when they cannot be read)."""
    from ..providers.config import ProviderConfigError

    try:
        return notice(project_files(config), _known_providers(config))
    except ProviderConfigError:
        return None  # an unreadable crush.json: resolving the model says what to fix


def _known_providers(config: CrushSettings) -> set[str]:
    from ..providers.config import known_provider_ids

    # An explicit crush_config is read alone: the user's own file does not apply beside it.
    return known_provider_ids(own=not config.crush_config)


@dataclass
class _Seen:
    state: tuple[Any, ...] = ()
    said: set[str] = field(default_factory=set)


# Per kernel (Crush): the trust state of the last prompt and the notices already printed.
_SEEN: weakref.WeakKeyDictionary[Crush, _Seen] = weakref.WeakKeyDictionary()


def check_at_prompt(crush: Crush) -> None:
    """Before a prompt: say once what a folder's file may not do yet; resolve models afresh
    when what it may do changed."""
    from ..providers.config import ProviderConfigError

    try:
        files = project_files(crush.config)
        line = notice(files, _known_providers(crush.config))
    except ProviderConfigError:
        return  # an unreadable crush.json: resolving the model says what to fix
    seen = _SEEN.setdefault(crush, _Seen())
    state = tuple((str(f.path), f.digest, f.trust) for f in files)
    if state != seen.state:
        seen.state = state
        crush.forget_models()
    if line and line not in seen.said:
        seen.said.add(line)
        print(line)


# -- %crush trust ----------------------------------------------------------------------------

NOTHING_HERE = "No crush.json here to trust: only your own configuration applies"


def trust_here(config: CrushSettings) -> str:
    """Trust the project files in effect as they are now; what was done."""
    files = project_files(config)
    if not files:
        return NOTHING_HERE
    remember_trust(files)
    done = [f"Trusted {f.path} as it is now (sha256 {f.digest[:12]})" for f in files]
    return "\n".join(
        [*done, "It applies from the next prompt; a change to it needs %crush trust again"]
    )


def revoke_here(config: CrushSettings) -> str:
    files = project_files(config)
    if not files:
        return NOTHING_HERE
    gone = forget_trust(files)
    return f"No longer trusted: {', '.join(map(str, gone))}" if gone else "Nothing here is trusted"


def show(config: CrushSettings) -> str:
    """What each project file in effect does, or would do once trusted."""
    files = project_files(config)
    if not files:
        return f"No crush.json or .crush.json in {Path.cwd()}: only your own configuration applies"
    lines = []
    for file in files:
        would = "it does" if file.applies_whole else "trusted as it is now, it would"
        lines.append(f"{file.path} {file.trust.value} (sha256 {file.digest[:12]}); {would}:")
        effects = _provider_effects(config, file) + _mcp_effects(file) + _model_effects(file)
        lines += [f"  {effect}" for effect in effects] or ["  nothing that needs trust"]
    return "\n".join(lines)


def _provider_effects(config: CrushSettings, file: ConfigFile) -> list[str]:
    from ..providers.config import (
        HARMLESS_PROVIDER_KEYS,
        NO_KEY,
        ProviderConfigError,
        load_crush_config,
        provider_config,
    )

    settings = replace(config.provider_settings(), trust_project_config=True)
    trusted = load_crush_config(settings.crush_config, trust_all=True)
    owners = trusted.key_owners
    effects = []
    entries = file.data.get("providers")
    for pid, raw in (entries if isinstance(entries, dict) else {}).items():
        if not isinstance(raw, dict) or not raw.keys() - HARMLESS_PROVIDER_KEYS:
            continue
        try:
            endpoint = provider_config(pid, settings, trusted)
        except ProviderConfigError as error:
            effects.append(f"provider {pid}: refused even when trusted: {error}")
            continue
        named = [*variables(raw.get("api_key")), *variables(raw.get("extra_headers"))]
        if named:
            keys = ", ".join(_variable(name, owners) for name in dict.fromkeys(named))
        elif endpoint.api_key == NO_KEY:
            keys = "no key"
        elif raw.get("api_key"):
            keys = "the key written in the file"
        else:
            keys = f"your own {pid} key"
        effects.append(
            f"provider {pid}: sends requests to {host_of(endpoint.base_url, endpoint.type)} "
            f"({endpoint.base_url or 'the SDK default'}) with {keys}"
        )
    return effects


def _mcp_effects(file: ConfigFile) -> list[str]:
    from ..core.output import redact
    from ..mcp.config import parse_section
    from ..providers.config import key_owners

    section = file.data.get("mcp")
    if not isinstance(section, dict):
        return []
    owners = key_owners()
    effects = []
    for name, server in parse_section(section, str(file.path), owners).items():
        raw = section.get(name)
        if server.error:
            effects.append(f"MCP server {name}: would fail: {server.error}")
        elif server.disabled:
            effects.append(f"MCP server {name}: disabled, starts nothing")
        elif server.type == "stdio":
            env = variables(raw.get("env")) if isinstance(raw, dict) else []
            given = ", ".join(_variable(v, owners) for v in env)
            given = f", given {given} in its environment" if env else ""
            withheld = [f"${v}" for v in server.withheld_env if os.environ.get(v)]
            if withheld:
                given += f"; {', '.join(withheld)} kept out of its environment"
            command = redact(" ".join(map(_argument, [server.command, *server.args])))
            effects.append(f"MCP server {name}: starts {command}{given}")
        else:
            headers = variables(raw.get("headers")) if isinstance(raw, dict) else []
            given = ", ".join(_variable(v, owners) for v in headers)
            given = f" with {given}" if headers else ""
            effects.append(f"MCP server {name}: connects to {redact(server.url)}{given}")
    return effects


def _variable(name: str, owners: dict[str, str]) -> str:
    """``$NAME``, and whose key it holds when it holds a provider's."""
    return f"${name} (your {owners[name]} key)" if name in owners else f"${name}"


def _argument(text: str) -> str:
    """A command-line word as a user would type it, in double quotes when it needs any."""
    return text if re.fullmatch(r"[\w@%+=:,./-]+", text) else json.dumps(text)


def _model_effects(file: ConfigFile) -> list[str]:
    """The model choices that wait for trust (of a provider only the file defines)."""
    from ..providers.config import known_provider_ids

    _, needs_trust = applied(replace(file, trust=Trust.UNTRUSTED), known_provider_ids())
    models = file.data.get("models")
    return [
        f"models.{size}: {choice.get('provider')}:{choice.get('model')}"
        for size, choice in (models.items() if isinstance(models, dict) else ())
        if f"models.{size}" in needs_trust and isinstance(choice, dict)
    ]
