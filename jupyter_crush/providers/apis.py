"""Which of OpenAI's two APIs a model is spoken to through: Responses or Chat Completions.

OpenAI's own models at OpenAI's own endpoint take the Responses API, which streams reasoning
summaries and carries the reasoning between a turn's steps; every other OpenAI-compatible
server (a proxy at ``OPENAI_BASE_URL`` included) keeps Chat Completions, which all of them
speak. Either can be forced per model: ``ProviderSettings.openai_apis`` (keys
``"provider:model"`` or ``"provider"``), or crush.json's ``"api"`` on a provider entry or on
one of its ``models``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from .config_file import CrushConfigError

WireAPI = Literal["responses", "chat"]
WIRE_APIS: tuple[str, ...] = ("responses", "chat")

#: OpenAI's own host, where its models take the Responses API by default.
OPENAI_HOST = "api.openai.com"

#: Model families that take the Responses API, and the chat-only variants among them.
_RESPONSES_FAMILIES = ("gpt-4", "gpt-5", "codex")
_RESPONSES_PREFIXES = ("o1", "o3", "o4")
_CHAT_ONLY = ("audio", "search-preview", "realtime")


def is_responses_model(model: str) -> bool:
    """Whether OpenAI serves ``model`` through the Responses API."""
    name = model.lower()
    if any(word in name for word in _CHAT_ONLY):
        return False
    return name.startswith(_RESPONSES_PREFIXES) or any(f in name for f in _RESPONSES_FAMILIES)


def is_reasoning_model(model: str) -> bool:
    """Whether ``model`` reasons (takes the ``reasoning`` options and returns reasoning items);
    the chat variants of GPT-5 do not."""
    name = model.lower()
    if "-chat" in name:
        return False
    return (
        name.startswith(_RESPONSES_PREFIXES)
        or any(f"-{p}" in name for p in _RESPONSES_PREFIXES)
        or "gpt-5" in name
        or "codex" in name
        or "oss" in name
    )


def default_api(provider_type: str, host: str, model: str) -> WireAPI:
    """The API a model takes when nothing forces one."""
    if provider_type == "openai" and host == OPENAI_HOST and is_responses_model(model):
        return "responses"
    return "chat"


def checked_api(value: Any, where: str) -> WireAPI:
    """``value`` if it names an API, else the error saying what to write."""
    if value not in WIRE_APIS:
        raise CrushConfigError(
            f'{where} is {value!r}; use "responses" (OpenAI\'s Responses API) or "chat" '
            "(Chat Completions)"
        )
    return value  # type: ignore[no-any-return]


def entry_apis(path: Path, pid: str, raw: Mapping[str, Any]) -> dict[str, WireAPI]:
    """The APIs a crush.json provider entry forces: ``"*"`` for its ``"api"``, and each of its
    ``models`` that has one, by model id."""
    apis: dict[str, WireAPI] = {}
    if raw.get("api") is not None:
        apis["*"] = checked_api(raw["api"], f'{path}: provider "{pid}" api')
    models = raw.get("models")
    for model in models if isinstance(models, list) else ():
        if isinstance(model, Mapping) and model.get("api") is not None and model.get("id"):
            where = f'{path}: provider "{pid}" model "{model["id"]}" api'
            apis[str(model["id"])] = checked_api(model["api"], where)
    return apis
