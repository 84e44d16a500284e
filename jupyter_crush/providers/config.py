"""Where a provider's endpoint and key come from.

Three sources, most specific first:

1. :class:`ProviderSettings` (the notebook's traitlets config fills it),
2. a ``crush.json`` in Crush's shape, so Crush users bring their config
   (``./crush.json``, ``./.crush.json``, ``$XDG_CONFIG_HOME/crush/crush.json``),
3. the SDKs' own environment variables (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``,
   ``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``) and the usual ones of the
   built-in OpenAI-compatible services (``GROQ_API_KEY``, ``OPENROUTER_API_KEY``).

A crush.json outside the user's config directory (the notebook folder's) applies only as far
as :mod:`jupyter_crush.providers.trust` allows, and even a trusted one sends a user's key
only to a host chosen for it (:func:`provider_config`).

API keys are held only in memory: every ``repr`` here masks them, and nothing
in this module writes them anywhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from ..core.secrets import remember, remember_headers, remember_url
from .apis import WireAPI, checked_api, default_api, entry_apis
from .config_file import (
    CrushConfigError,
    MissingAPIKeyError,
    ProviderConfigError,
    read_crush_json,
)
from .trust import (
    HARMLESS_PROVIDER_KEYS,
    ConfigFile,
    ProjectEntry,
    Secret,
    applied,
    host_of,
    key_destination_problem,
    open_config,
    user_config_dir,
    variables,
)

ProviderType = Literal["openai", "openai-compat", "anthropic", "azure"]
PROVIDER_TYPES: tuple[str, ...] = ("openai", "openai-compat", "anthropic", "azure")

#: Where Crush looks for its config, lowest precedence first (later files override).
CRUSH_CONFIG_NAMES = (".crush.json", "crush.json")


def mask_secret(value: str | None) -> str | None:
    """What a repr shows instead of a key: only whether one is set."""
    return None if not value else "***"


@dataclass(frozen=True)
class ProviderConfig:
    """One provider endpoint: its wire protocol, base URL and key."""

    id: str
    type: ProviderType
    base_url: str | None = None  # None: the SDK's default endpoint
    api_key: str | None = field(default=None, repr=False)
    #: Environment variables that may hold the key, named in the missing-key error.
    api_key_env: tuple[str, ...] = ()
    #: Local servers (Ollama, llama.cpp) take no key; the SDK still wants a non-empty one.
    requires_key: bool = True
    extra_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Set when the entry comes from a project file: what it names, for the key rule.
    project: ProjectEntry | None = field(default=None, repr=False)
    #: Azure OpenAI's api-version query parameter (None: $OPENAI_API_VERSION).
    api_version: str | None = None

    def __repr__(self) -> str:
        return (
            f"ProviderConfig(id={self.id!r}, type={self.type!r}, base_url={self.base_url!r}, "
            f"api_key={mask_secret(self.api_key)!r})"
        )


@dataclass
class ProviderSettings:
    """Keys, endpoints and request options for :func:`~jupyter_crush.providers.resolve_model`.

    ``api_keys`` and ``base_urls`` are keyed by provider id (``"openai"``,
    ``"anthropic"``, ``"groq"``, a custom id, ...). ``providers`` adds custom
    OpenAI-compatible or Anthropic-compatible endpoints. ``crush_config`` is the
    path of a ``crush.json``; ``None`` searches Crush's usual places and
    ``False`` ignores crush.json entirely.
    """

    api_keys: dict[str, str] = field(default_factory=dict)
    base_urls: dict[str, str] = field(default_factory=dict)
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    crush_config: str | Path | Literal[False] | None = None
    #: SDK retries on 408/409/429/5xx and connection errors (honoring retry-after).
    max_retries: int = 2
    #: Seconds without a byte from the server, once it answers, before the request fails.
    read_timeout: float = 300.0
    connect_timeout: float = 10.0
    #: Seconds for the server to start answering (its first event), all attempts (retries)
    #: included: a server that accepts the connection, or sends headers, and then nothing
    #: fails within this.
    answer_timeout: float = 60.0
    max_tokens: int | None = None  # None: the provider's default (Anthropic needs one: 4096)
    #: OpenAI's Responses API: the reasoning summary asked of reasoning models ("auto",
    #: "concise", "detailed"); None asks for none (an unverified organization gets none).
    reasoning_summary: str | None = "auto"
    #: Force OpenAI's Responses API or Chat Completions: {"openai:gpt-5": "chat",
    #: "myproxy": "responses"}; a model not named takes jupyter_crush.providers.apis' default.
    openai_apis: dict[str, str] = field(default_factory=dict)
    #: Anthropic extended thinking budget in tokens; None leaves thinking off.
    thinking_budget: int | None = None
    #: OpenAI / OpenAI-compatible ``reasoning_effort`` ("low", "medium", "high").
    reasoning_effort: str | None = None
    #: Mark Anthropic prompt-cache breakpoints (system prompt, tools, conversation so far).
    prompt_caching: bool = True
    #: Send images to the model (True) or a line of text for each (False); None decides
    #: from the model's name (see providers/vision.py).
    image_input: bool | None = None
    #: Seconds between server-sent events when replaying a recording (0: as fast as possible).
    replay_delay: float = 0.02
    #: Apply every project crush.json whole, trusted or not (CI); see jupyter_crush.providers.trust.
    trust_project_config: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ProviderConfigError(
                f"max_retries must be a non-negative integer, got {self.max_retries!r}"
            )
        for name in ("read_timeout", "connect_timeout", "answer_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ProviderConfigError(f"{name} must be a positive number of seconds")
        for name, api in self.openai_apis.items():
            checked_api(api, f"ProviderSettings.openai_apis[{name!r}]")

    def __repr__(self) -> str:
        keys = {k: mask_secret(v) for k, v in self.api_keys.items()}
        return (
            f"ProviderSettings(api_keys={keys!r}, base_urls={self.base_urls!r}, "
            f"providers={list(self.providers)!r}, crush_config={self.crush_config!r}, "
            f"max_retries={self.max_retries!r}, read_timeout={self.read_timeout!r})"
        )


# -- built-in providers -------------------------------------------------------

_BUILTIN: dict[str, ProviderConfig] = {
    "openai": ProviderConfig("openai", "openai", base_url=None, api_key_env=("OPENAI_API_KEY",)),
    "anthropic": ProviderConfig(
        "anthropic", "anthropic", base_url=None, api_key_env=("ANTHROPIC_API_KEY",)
    ),
    # Local servers at their usual ports (providers/local.py finds them on request).
    "ollama": ProviderConfig(
        "ollama", "openai-compat", base_url="http://localhost:11434/v1", requires_key=False
    ),
    "lmstudio": ProviderConfig(
        "lmstudio", "openai-compat", base_url="http://127.0.0.1:1234/v1", requires_key=False
    ),
    "llamacpp": ProviderConfig(
        "llamacpp", "openai-compat", base_url="http://127.0.0.1:8080/v1", requires_key=False
    ),
    "vllm": ProviderConfig(
        "vllm", "openai-compat", base_url="http://127.0.0.1:8000/v1", requires_key=False
    ),
    "openrouter": ProviderConfig(
        "openrouter",
        "openai-compat",
        base_url="https://openrouter.ai/api/v1",
        api_key_env=("OPENROUTER_API_KEY",),
    ),
    "groq": ProviderConfig(
        "groq",
        "openai-compat",
        base_url="https://api.groq.com/openai/v1",
        api_key_env=("GROQ_API_KEY",),
    ),
    # Azure OpenAI: the model named is a deployment; endpoint and key as the SDK reads them.
    "azure": ProviderConfig("azure", "azure", base_url=None, api_key_env=("AZURE_OPENAI_API_KEY",)),
    # Gemini through Google's OpenAI-compatible endpoint (see the README's Models section).
    "gemini": ProviderConfig(
        "gemini",
        "openai-compat",
        base_url="https://generativelanguage.googleapis.com/v1beta/openai",
        api_key_env=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    ),
}

#: The SDKs' own base-URL variables, honored for the two first-party providers.
_BASE_URL_ENV = {
    "openai": "OPENAI_BASE_URL",
    "anthropic": "ANTHROPIC_BASE_URL",
    "azure": "AZURE_OPENAI_ENDPOINT",
}


def builtin_base_url(provider_id: str) -> str | None:
    """A built-in provider's base URL; Ollama's honours its own ``OLLAMA_HOST``
    (``127.0.0.1:11500``, ``http://box:11434``; a bind-all address means this machine)."""
    builtin = _BUILTIN.get(provider_id)
    host = os.environ.get("OLLAMA_HOST", "").strip() if provider_id == "ollama" else ""
    if not host:
        return builtin.base_url if builtin else None
    parts = urlsplit(host if "://" in host else f"http://{host}")
    name = parts.hostname if parts.hostname not in (None, "0.0.0.0", "::") else "127.0.0.1"
    return f"{parts.scheme}://{name}:{parts.port or 11434}/v1"


#: The SDK's own variable for Azure OpenAI's api-version.
API_VERSION_ENV = "OPENAI_API_VERSION"

#: Placeholder key for servers that take none (the SDK refuses an empty key).
NO_KEY = "not-needed"


# -- crush.json ---------------------------------------------------------------


#: Variables that hold a built-in provider's key, and that provider.
_KEY_OWNERS = {name: pid for pid, config in _BUILTIN.items() for name in config.api_key_env}


@dataclass(frozen=True)
class CrushConfig:
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    #: ``{"large": ("openai", "gpt-4o"), "small": (...)}`` from Crush's ``models``.
    models: dict[str, tuple[str, str]] = field(default_factory=dict)
    sources: tuple[Path, ...] = ()
    #: Variable -> the provider whose key it holds: the built-in ones and the user's own files'.
    key_owners: dict[str, str] = field(default_factory=lambda: dict(_KEY_OWNERS))
    #: Base URLs the user's own crush.json names, by provider id.
    user_base_urls: dict[str, str] = field(default_factory=dict)
    #: Project files read without the parts that need trust (jupyter_crush.providers.trust).
    untrusted: tuple[Path, ...] = ()
    #: The OpenAI API each provider's entry forces, by model id ("*": all its models).
    apis: dict[str, dict[str, WireAPI]] = field(default_factory=dict)


def crush_config_paths(cwd: Path | None = None) -> list[Path]:
    """Crush's config locations, lowest precedence first."""
    here = cwd or Path.cwd()
    return [user_config_dir() / "crush.json", *(here / name for name in CRUSH_CONFIG_NAMES)]


def crush_config_files(source: str | Path | Literal[False] | None = None) -> list[Path]:
    """The crush.json files to read, lowest precedence first: none for ``False``; for ``None``
    (or ``""``, the kernel setting's unset value) those at Crush's config locations that exist;
    else ``source`` alone, ``~`` expanded and a relative path taken in the working directory
    (the notebook's folder, as for ``./crush.json``), which must exist. Every reader of
    crush.json (providers, model windows, MCP servers, the trust report) takes its files from
    here, so they all read the same ones."""
    if source is False:
        return []
    if not source:
        return [path for path in crush_config_paths() if path.is_file()]
    path = Path(source).expanduser().absolute()
    if not path.is_file():
        raise CrushConfigError(
            f"crush config {path} does not exist; fix the crush_config path, or leave it "
            "unset to read crush.json from Crush's usual places"
        )
    return [path]


_ENV_REF = re.compile(
    r"^\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))$"
)
#: A ``$VAR`` or ``${VAR}`` inside a longer value, such as ``"Bearer $GH_PAT"``.
_EMBEDDED_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def expand_value(value: Any, path: Path | str, what: str) -> str | None:
    """Crush writes secrets as ``"$ENV_VAR"``; resolve those, keep literals as they are.

    A whole-value reference to an unset variable gives ``None``; a reference inside a longer
    value (``"Bearer $TOKEN"``) must be set, or the value would be sent half-empty.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise CrushConfigError(f"{path}: {what} must be a string, got {type(value).__name__}")
    match = _ENV_REF.match(value.strip())
    if match:
        return os.environ.get(match.group("braced") or match.group("bare")) or None
    if "$(" in value:
        # Crush runs $(...) through a shell; reading a config file must not run commands.
        raise CrushConfigError(
            f"{path}: {what} uses $(...) command substitution, which is not run here; "
            'put the value in an environment variable and write "$VAR"'
        )

    def substitute(ref: re.Match[str]) -> str:
        name = ref.group(1) or ref.group(2)
        if name not in os.environ:
            raise CrushConfigError(f"{path}: {what} refers to ${name}, which is not set")
        return os.environ[name]

    return _EMBEDDED_REF.sub(substitute, value)


def _env_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        match = _ENV_REF.match(value.strip())
        if match:
            return (match.group("braced") or match.group("bare"),)
    return ()


def _parse_crush_file(file: ConfigFile, data: Mapping[str, Any]) -> CrushConfig:
    """``data``: what of ``file`` applies (jupyter_crush.providers.trust.applied)."""
    path = file.path
    providers: dict[str, ProviderConfig] = {}
    raw_providers = data.get("providers", {})
    if not isinstance(raw_providers, dict):
        raise CrushConfigError(f'{path}: "providers" must be an object of provider id -> settings')
    key_owners: dict[str, str] = {}
    user_base_urls: dict[str, str] = {}
    apis: dict[str, dict[str, WireAPI]] = {}
    for pid, raw in raw_providers.items():
        if not isinstance(raw, dict):
            raise CrushConfigError(f'{path}: provider "{pid}" must be an object')
        forced = entry_apis(path, pid, raw)
        if forced:
            apis[pid] = forced
        if raw.get("disable") or not raw.keys() - HARMLESS_PROVIDER_KEYS:
            continue  # disabled, or only its model list (read for windows): the endpoint stays
        ptype = raw.get("type") or (_BUILTIN[pid].type if pid in _BUILTIN else None)
        if ptype not in PROVIDER_TYPES:
            raise CrushConfigError(
                f'{path}: provider "{pid}" has type {ptype!r}; use one of '
                + ", ".join(f'"{t}"' for t in PROVIDER_TYPES)
            )
        headers = raw.get("extra_headers") or {}
        if not isinstance(headers, dict):
            raise CrushConfigError(f'{path}: provider "{pid}" extra_headers must be an object')
        builtin = _BUILTIN.get(pid)
        base_url = expand_value(raw.get("base_url"), path, f'provider "{pid}" base_url')
        project = None
        if file.is_project:
            written = raw.get("base_url")
            project = ProjectEntry(
                path,
                named_host=host_of(base_url) if base_url and not variables(written) else None,
                key_vars=tuple(variables(raw.get("api_key"))),
                header_vars=tuple(variables(headers)),
            )
        else:  # the user's own: the hosts and key variables it names are the user's choice
            key_owners.update(dict.fromkeys(variables(raw.get("api_key")), pid))
            if base_url:
                user_base_urls[pid] = base_url
        providers[pid] = ProviderConfig(
            id=pid,
            type=ptype,
            base_url=base_url or (builtin.base_url if builtin else None),
            api_key=expand_value(raw.get("api_key"), path, f'provider "{pid}" api_key'),
            api_key_env=_env_names(raw.get("api_key")) + (builtin.api_key_env if builtin else ()),
            requires_key=builtin.requires_key if builtin else "api_key" in raw,
            extra_headers={
                str(k): expand_value(v, path, f'provider "{pid}" header {k}') or ""
                for k, v in headers.items()
            },
            project=project,
            api_version=expand_value(raw.get("api_version"), path, f'provider "{pid}" api_version'),
        )

    models: dict[str, tuple[str, str]] = {}
    raw_models = data.get("models", {})
    if not isinstance(raw_models, dict):
        raise CrushConfigError(f'{path}: "models" must be an object like {{"large": {{...}}}}')
    for size, raw in raw_models.items():
        if not isinstance(raw, dict) or not raw.get("provider") or not raw.get("model"):
            raise CrushConfigError(
                f'{path}: models.{size} needs "provider" and "model", '
                'e.g. {"provider": "openai", "model": "gpt-4o"}'
            )
        models[size] = (str(raw["provider"]), str(raw["model"]))
    for provider in providers.values():  # known from reading the file on, used or not
        remember([provider.api_key])
        remember_headers(provider.extra_headers)
        remember_url(provider.base_url)
    return CrushConfig(
        providers,
        models,
        (path,),
        key_owners=key_owners,
        user_base_urls=user_base_urls,
        untrusted=() if file.applies_whole else (path,),
        apis=apis,
    )


def load_crush_config(
    source: str | Path | Literal[False] | None = None, *, trust_all: bool = False
) -> CrushConfig:
    """Read crush.json: an explicit path, or (``None``) Crush's usual places merged. A project
    file applies whole only when trusted (``trust_all``: every one is;
    jupyter_crush.providers.trust)."""
    merged = CrushConfig()
    for path in crush_config_files(source):
        file = open_config(path, trust_all=trust_all)
        data, _ = applied(file, {*_BUILTIN, *merged.providers})
        found = _parse_crush_file(file, data)
        merged = CrushConfig(
            {**merged.providers, **found.providers},
            {**merged.models, **found.models},
            (*merged.sources, path),
            key_owners={**merged.key_owners, **found.key_owners},
            user_base_urls={**merged.user_base_urls, **found.user_base_urls},
            untrusted=(*merged.untrusted, *found.untrusted),
            apis={
                pid: {**merged.apis.get(pid, {}), **found.apis.get(pid, {})}
                for pid in {*merged.apis, *found.apis}
            },
        )
    return merged


def _own_providers() -> dict[str, Any]:
    """The provider entries of the user's own crush.json."""
    own = user_config_dir() / "crush.json"
    entries = read_crush_json(own).get("providers") if own.is_file() else None
    return {pid: raw for pid, raw in (entries or {}).items() if isinstance(raw, dict)}


def key_owners() -> dict[str, str]:
    """Variables holding a provider's key (the built-in ones and those the user's own
    crush.json names), and that provider."""
    owners = dict(_KEY_OWNERS)
    for pid, raw in _own_providers().items():
        owners.update(dict.fromkeys(variables(raw.get("api_key")), pid))
    return owners


def known_provider_ids(*, own: bool = True) -> set[str]:
    """Providers a project file may choose a model of without trust: the built-in ones and
    (``own``) those the user's own crush.json defines."""
    return {*_BUILTIN, *(_own_providers() if own else ())}


# -- resolution ---------------------------------------------------------------


def provider_config(
    provider_id: str, settings: ProviderSettings, crush: CrushConfig
) -> ProviderConfig:
    """The endpoint for ``provider_id`` with its key filled in, or a clear error."""
    config = settings.providers.get(provider_id) or crush.providers.get(provider_id)
    builtin = _BUILTIN.get(provider_id)
    if config is None and builtin is None:
        known = sorted({*_BUILTIN, *settings.providers, *crush.providers, "replay"})
        untrusted = ", ".join(str(p) for p in crush.untrusted)
        raise ProviderConfigError(
            f"unknown provider {provider_id!r}: use one of {', '.join(known)}, or add it to "
            'crush.json ("providers": {"' + provider_id + '": {"type": "openai-compat", '
            '"base_url": "..."}})'
            + (f"; {untrusted} is not trusted: %crush trust --show" if untrusted else "")
        )
    config = config or builtin
    assert config is not None

    default_url = builtin_base_url(provider_id) if config is builtin else config.base_url
    base_url = settings.base_urls.get(provider_id) or default_url
    if base_url is None and provider_id in _BASE_URL_ENV:
        base_url = os.environ.get(_BASE_URL_ENV[provider_id]) or None

    key = settings.api_keys.get(provider_id)
    secrets = [Secret(f"CrushConfig.api_keys[{provider_id!r}]", provider_id)] if key else []
    if not key and config.api_key:
        key = config.api_key
        secrets = _file_key(config, crush)
    if not key:
        for name in config.api_key_env:
            key = os.environ.get(name)
            if key:
                secrets = [Secret(f"${name}", crush.key_owners.get(name, provider_id))]
                break
    if config.project is not None:
        owners = crush.key_owners
        secrets += [Secret(f"${v}", owners.get(v), True) for v in config.project.header_vars]
    _check_destination(provider_id, config, base_url, secrets, settings, crush)
    if not key:
        if config.requires_key:
            envs = " or ".join(config.api_key_env)
            raise MissingAPIKeyError(
                f"no API key for provider {provider_id!r}: "
                + (f"set {envs}, " if envs else "")
                + f"pass ProviderSettings(api_keys={{{provider_id!r}: ...}}), "
                "or set api_key in crush.json"
            )
        key = NO_KEY
    api_version = config.api_version
    if config.type == "azure":
        api_version = api_version or os.environ.get(API_VERSION_ENV) or None
        _check_azure(provider_id, base_url, api_version)
    # Whatever reaches a request is a secret tool output must never show.
    remember(settings.api_keys.values())
    remember([key])
    remember_headers(config.extra_headers)
    remember_url(base_url)
    return replace(config, base_url=base_url, api_key=key, api_version=api_version)


def _check_azure(provider_id: str, endpoint: str | None, api_version: str | None) -> None:
    """An Azure deployment needs its resource's endpoint and an api-version."""
    where = f'"providers": {{"{provider_id}": {{...}}}} in crush.json'
    if not endpoint:
        raise ProviderConfigError(
            f"no endpoint for Azure OpenAI provider {provider_id!r}: set AZURE_OPENAI_ENDPOINT "
            f'(https://RESOURCE.openai.azure.com) or "base_url" in {where}'
        )
    if not api_version:
        raise ProviderConfigError(
            f"no api-version for Azure OpenAI provider {provider_id!r}: set "
            f'{API_VERSION_ENV} (e.g. 2025-04-01-preview) or "api_version" in {where}'
        )


def _file_key(config: ProviderConfig, crush: CrushConfig) -> list[Secret]:
    """Whose key a crush.json entry's api_key is: the user's (their own file, or a variable
    holding a provider's key), or the file's own literal one."""
    if config.project is None:
        return [Secret(f"the api_key of {config.id!r} in your crush.json", config.id)]
    if not config.project.key_vars:
        return []  # written in the file itself: its author's key, not the user's
    return [Secret(f"${v}", crush.key_owners.get(v), True) for v in config.project.key_vars]


def _check_destination(
    provider_id: str,
    config: ProviderConfig,
    base_url: str | None,
    secrets: list[Secret],
    settings: ProviderSettings,
    crush: CrushConfig,
) -> None:
    """Refuse a request that would carry a user's key to a host not chosen for it."""
    host = host_of(base_url, config.type)
    project = config.project
    named = project is not None and project.named_host == host
    for secret in secrets:
        problem = key_destination_problem(
            secret,
            host,
            host_named_by_file=named and provider_id not in settings.base_urls,
            chosen_hosts=_chosen_hosts(secret.owner, settings, crush),
        )
        if problem:
            where = f" ({project.path})" if project is not None else ""
            raise ProviderConfigError(
                f"provider {provider_id!r}{where}: {problem}; "
                "a trusted crush.json sends a key of yours to its own base_url only when the "
                'same entry names the key ("api_key": "$VAR")'
            )


def _chosen_hosts(owner: str | None, settings: ProviderSettings, crush: CrushConfig) -> set[str]:
    """The hosts the user chose for ``owner``'s key: its default, and what their config names."""
    if owner is None:
        return set()
    builtin = _BUILTIN.get(owner)
    urls = [
        settings.base_urls.get(owner),
        os.environ.get(_BASE_URL_ENV.get(owner, "")),
        crush.user_base_urls.get(owner),
    ]
    if owner in settings.providers:
        urls.append(settings.providers[owner].base_url)
    hosts = {host_of(url) for url in urls if url}
    if builtin is not None:
        hosts.add(host_of(builtin.base_url, builtin.type))
    return hosts


def wire_api(
    config: ProviderConfig, model: str, settings: ProviderSettings, crush: CrushConfig
) -> WireAPI:
    """The OpenAI API ``model`` of ``config`` (resolved) is spoken to through: the one
    settings or crush.json force, else :func:`~jupyter_crush.providers.apis.default_api`."""
    forced = settings.openai_apis.get(f"{config.id}:{model}") or settings.openai_apis.get(config.id)
    if forced:
        return forced  # type: ignore[return-value]  # checked in __post_init__
    entry = crush.apis.get(config.id, {})
    return (
        entry.get(model)
        or entry.get("*")
        or default_api(config.type, host_of(config.base_url, config.type), model)
    )
