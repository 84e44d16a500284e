"""Local model servers, found when asked (``%crush model --local``): Ollama, LM Studio,
llama.cpp's server and vLLM on their usual ports of 127.0.0.1.

Nothing here runs on its own: a probe is a few short GET/POST requests, all at once, each
bounded by ``timeout``, so a closed port costs nothing and a port that accepts and never
answers costs the timeout. A server's models come from its OpenAI-compatible ``/v1/models``
(Ollama's own ``/api/tags``); whether a model can call tools comes from what the server says
(Ollama's ``/api/show`` capabilities, LM Studio's ``/api/v0/models`` capabilities, llama.cpp's
``/props`` chat template capabilities), and is left unknown where it says nothing (vLLM).

Each server is a built-in provider (``ollama:``, ``lmstudio:``, ``llamacpp:``, ``vllm:``);
``ProviderSettings.base_urls`` moves one to another port, for the probe and the requests
alike, and Ollama's own ``OLLAMA_HOST`` is honoured for both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx2

from .config import ProviderSettings, builtin_base_url

#: The servers probed, in the order they are listed: provider id and name.
LOCAL_SERVERS: tuple[tuple[str, str], ...] = (
    ("ollama", "Ollama"),
    ("lmstudio", "LM Studio"),
    ("llamacpp", "llama.cpp server"),
    ("vllm", "vLLM"),
)

#: Seconds each probe request may take: a local server answers in milliseconds.
PROBE_TIMEOUT = 0.5


@dataclass(frozen=True)
class LocalModel:
    name: str
    #: Whether it can call tools, as the server says; None where it does not say.
    tools: bool | None = None


@dataclass(frozen=True)
class LocalServer:
    provider: str  # the provider id its models are named with: ollama:NAME
    name: str
    base_url: str
    #: None: nothing answered there (closed, not this kind of server, or too slow).
    models: tuple[LocalModel, ...] | None = None


def probe_urls(settings: ProviderSettings) -> list[LocalServer]:
    """The servers to probe, at their configured or usual base URLs."""
    return [
        LocalServer(pid, name, settings.base_urls.get(pid) or builtin_base_url(pid) or "")
        for pid, name in LOCAL_SERVERS
    ]


async def discover(
    settings: ProviderSettings, *, timeout: float = PROBE_TIMEOUT
) -> list[LocalServer]:
    """Every local server of :data:`LOCAL_SERVERS`, with its models where one answered."""
    servers = probe_urls(settings)
    limits = httpx2.Timeout(timeout)
    # trust_env off: a proxy from the environment must not carry requests meant for 127.0.0.1.
    async with httpx2.AsyncClient(timeout=limits, trust_env=False) as client:
        found = await asyncio.gather(*(_probe(client, server) for server in servers))
    return [
        LocalServer(s.provider, s.name, s.base_url, models)
        for s, models in zip(servers, found, strict=True)
    ]


def discover_now(
    settings: ProviderSettings, *, timeout: float = PROBE_TIMEOUT
) -> list[LocalServer]:
    """:func:`discover` from code that cannot await (a magic on the kernel's running loop):
    on a loop of its own in a worker thread, waited for (at most about ``timeout`` twice)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, discover(settings, timeout=timeout)).result()


async def _probe(client: httpx2.AsyncClient, server: LocalServer) -> tuple[LocalModel, ...] | None:
    root = server.base_url.rstrip("/").removesuffix("/v1")
    try:
        if server.provider == "ollama":
            return await _ollama_models(client, root)
        names = [m["id"] for m in (await _json(client, f"{root}/v1/models"))["data"]]
        tools = await _tool_support(client, server.provider, root, names)
        return tuple(LocalModel(name, tools.get(name)) for name in names)
    except (httpx2.HTTPError, ValueError, KeyError, TypeError):
        return None  # closed, silent, or not this kind of server


async def _json(client: httpx2.AsyncClient, url: str, body: Any = None) -> Any:
    response = await (client.get(url) if body is None else client.post(url, json=body))
    response.raise_for_status()
    return response.json()


async def _ollama_models(client: httpx2.AsyncClient, root: str) -> tuple[LocalModel, ...]:
    names = [m["name"] for m in (await _json(client, f"{root}/api/tags"))["models"]]
    shown = await asyncio.gather(
        *(_json(client, f"{root}/api/show", {"model": name}) for name in names),
        return_exceptions=True,
    )
    models = []
    for name, show in zip(names, shown, strict=True):
        capabilities = show.get("capabilities") if isinstance(show, dict) else None
        if isinstance(capabilities, list):
            if "completion" not in capabilities:
                continue  # an embedding model: it cannot answer a prompt at all
            models.append(LocalModel(name, "tools" in capabilities))
        else:  # an older Ollama says nothing about tools
            models.append(LocalModel(name))
    return tuple(models)


async def _tool_support(
    client: httpx2.AsyncClient, provider: str, root: str, names: Sequence[str]
) -> dict[str, bool]:
    """What LM Studio or llama.cpp's server says about tool calls, by model; {} elsewhere."""
    try:
        if provider == "lmstudio":
            described = (await _json(client, f"{root}/api/v0/models"))["data"]
            return {
                m["id"]: "tool_use" in m["capabilities"]
                for m in described
                if isinstance(m.get("capabilities"), list)
            }
        if provider == "llamacpp":
            caps = (await _json(client, f"{root}/props")).get("chat_template_caps") or {}
            supported = caps.get("supports_tool_calls", caps.get("supports_tools"))
            return dict.fromkeys(names, bool(supported)) if supported is not None else {}
    except (httpx2.HTTPError, ValueError, KeyError, TypeError):
        pass  # an older server: the models are listed, their tool support unknown
    return {}
