"""Model providers: ``resolve_model("provider:model")`` gives a streaming :class:`Model`.

=================  =====================================================
name               what it talks to
=================  =====================================================
``openai:M``       OpenAI: the Responses API for its own models at its own endpoint, chat
                   completions elsewhere (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``)
``anthropic:M``    Anthropic Messages (``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``)
``ollama:M``       Ollama's OpenAI-compatible API at http://localhost:11434/v1 (or
                   ``OLLAMA_HOST``), no key; ``lmstudio:M``, ``llamacpp:M``, ``vllm:M``
                   likewise at 127.0.0.1:1234, :8080 and :8000 (``local.discover`` lists them)
``groq:M``         Groq (``GROQ_API_KEY``)
``azure:D``        an Azure OpenAI deployment (``AZURE_OPENAI_ENDPOINT``, ``AZURE_OPENAI_API_KEY``,
                   ``OPENAI_API_VERSION``)
``gemini:M``       Gemini through Google's OpenAI-compatible endpoint (``GEMINI_API_KEY``)
``openrouter:M``   OpenRouter (``OPENROUTER_API_KEY``)
``ID:M``           a custom provider from ``ProviderSettings.providers`` or crush.json
``crush:large``    crush.json's ``models.large`` (or ``small``)
``replay:NAME``    a recorded exchange, played through the real SDK offline
=================  =====================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.model import Model

if TYPE_CHECKING:
    from .anthropic import AnthropicModel
    from .config import (
        CrushConfigError,
        MissingAPIKeyError,
        ProviderConfig,
        ProviderConfigError,
        ProviderSettings,
    )
    from .openai import OpenAIModel
    from .replay import ReplayModel, recording_names
    from .responses import ResponsesModel

_CONFIG_NAMES = (
    "CrushConfigError",
    "MissingAPIKeyError",
    "ProviderConfig",
    "ProviderConfigError",
    "ProviderSettings",
)


def __getattr__(name: str) -> Any:
    # Each SDK takes a large part of a second to import: load one only when it is used. The
    # replay models bring httpx2 and yaml, and the configuration is a module of its own: both
    # load on first use too, so that the kernel's other layers can read folder trust and
    # model windows from this package at %load_ext without them.
    if name in _CONFIG_NAMES:
        from . import config

        return getattr(config, name)
    if name in ("ReplayModel", "recording_names"):
        from . import replay

        return getattr(replay, name)
    if name == "AnthropicModel":
        from .anthropic import AnthropicModel

        return AnthropicModel
    if name == "OpenAIModel":
        from .openai import OpenAIModel

        return OpenAIModel
    if name == "ResponsesModel":
        from .responses import ResponsesModel

        return ResponsesModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AnthropicModel",
    "CrushConfigError",
    "MissingAPIKeyError",
    "OpenAIModel",
    "ProviderConfig",
    "ProviderConfigError",
    "ProviderSettings",
    "ReplayModel",
    "ResponsesModel",
    "recording_names",
    "resolve_model",
]


def resolve_model(name: str, *, settings: ProviderSettings | None = None) -> Model:
    """The model for ``"provider:model"``; raises :class:`ProviderConfigError` with the fix."""
    from .config import (
        ProviderConfigError,
        ProviderSettings,
        load_crush_config,
        provider_config,
        wire_api,
    )

    settings = settings or ProviderSettings()
    if not isinstance(name, str) or not name.strip():
        raise ProviderConfigError(
            "no model given: name one as 'provider:model', e.g. 'openai:gpt-4o' or "
            "'replay:openai-simple'"
        )
    provider_id, sep, model = name.strip().partition(":")
    if sep and not model.strip():
        raise ProviderConfigError(
            f"model {name!r} names no model after the provider: write e.g. '{provider_id}:gpt-4o'"
        )
    if not sep or not provider_id:
        raise ProviderConfigError(
            f"model {name!r} has no provider: write 'provider:model', e.g. 'openai:{name}', "
            f"'anthropic:{name}' or 'ollama:{name}'"
        )
    if provider_id == "replay":
        from .replay import replay_model

        return replay_model(model, settings)

    crush = load_crush_config(settings.crush_config, trust_all=settings.trust_project_config)
    if provider_id == "crush":
        if model not in crush.models:
            where = ", ".join(str(p) for p in crush.sources) or "no crush.json found"
            raise ProviderConfigError(
                f"crush.json has no models.{model} ({where}); add "
                f'"models": {{"{model}": {{"provider": "...", "model": "..."}}}}'
            )
        provider_id, model = crush.models[model]

    config = provider_config(provider_id, settings, crush)
    if config.type == "anthropic":
        from .anthropic import AnthropicModel

        return AnthropicModel(model, config, settings)
    if config.type == "azure":
        from .azure import AzureChatModel, AzureResponsesModel

        responses = wire_api(config, model, settings, crush) == "responses"
        kind = AzureResponsesModel if responses else AzureChatModel
        return kind(model, config, settings, price_provider="azure")  # by deployment name
    if wire_api(config, model, settings, crush) == "responses":
        from .responses import ResponsesModel

        return ResponsesModel(model, config, settings)
    from .openai import OpenAIModel

    return OpenAIModel(model, config, settings)
