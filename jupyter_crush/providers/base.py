"""What the SDK-backed models share: identity, one SDK client per event loop, errors, cost."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2

from ..message import Usage
from ..model import ModelError
from .config import ProviderConfig, ProviderSettings
from .errors import translate_error
from .prices import step_cost


class SDKModel:
    """Base of :class:`OpenAIModel` and :class:`AnthropicModel`; subclasses make the client."""

    def __init__(
        self,
        model: str,
        config: ProviderConfig,
        settings: ProviderSettings,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        price_provider: str | None = None,
        price_model: str | None = None,
    ) -> None:
        self.provider = config.id
        self.name = model
        self.config = config
        self.settings = settings
        self._transport = transport
        self._price_provider = price_provider or config.id
        self._price_model = price_model or model
        # One SDK client per event loop: httpx connection pools belong to the loop that
        # opened them. Only touched from the loop thread (stream() is a coroutine).
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._client_obj: Any = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(provider={self.provider!r}, name={self.name!r}, "
            f"base_url={self.config.base_url!r})"
        )

    def _make_client(self, **options: Any) -> Any:
        """The SDK's async client built with ``options``."""
        raise NotImplementedError

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client_obj is None or self._client_loop is not loop:
            timeout = httpx2.Timeout(
                self.settings.read_timeout, connect=self.settings.connect_timeout
            )
            http_client = (
                httpx2.AsyncClient(transport=self._transport, timeout=timeout)
                if self._transport is not None
                else None
            )
            self._client_obj = self._make_client(
                api_key=self.config.api_key,
                base_url=self.config.base_url,
                max_retries=self.settings.max_retries,
                timeout=timeout,
                default_headers=dict(self.config.extra_headers) or None,
                http_client=http_client,
            )
            self._client_loop = loop
        return self._client_obj

    def _error(self, exc: Exception) -> ModelError:
        """The SDK's exception as a readable ModelError (the key scrubbed)."""
        return translate_error(
            exc,
            provider=self.provider,
            base_url=self.config.base_url,
            api_key=self.config.api_key,
            read_timeout=self.settings.read_timeout,
        )

    def _ended_early(self) -> ModelError:
        return ModelError(
            "the stream ended before the model finished (connection closed early)",
            provider=self.provider,
        )

    def _cost(self, usage: Usage) -> float | None:
        return step_cost(
            self._price_provider, self._price_model, usage, base_url=self.config.base_url
        )
