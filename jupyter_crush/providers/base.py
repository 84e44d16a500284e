"""What the SDK-backed models share: identity, one SDK client per event loop, errors, cost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Generic, TypeVar

import httpx2

from ..core.message import Usage
from ..core.model import ModelError
from .config import ProviderConfig, ProviderSettings
from .errors import translate_error
from .prices import step_cost
from .vision import accepts_images

#: Content types that are never an event stream: a proxy's or portal's page, not the API.
_NOT_A_STREAM = frozenset({"text/html", "application/xhtml+xml"})
_Stream = TypeVar("_Stream")


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

    @property
    def accepts_images(self) -> bool:
        """Whether requests carry images, or a line of text in place of each."""
        return accepts_images(self.name, self.settings.image_input)

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

    def _url(self) -> str:
        return str(self.config.base_url or self._client().base_url)

    @contextlib.asynccontextmanager
    async def _answer(self, request: Awaitable[_Stream]) -> AsyncIterator[Answer[_Stream]]:
        """The SDK's ``create(..., stream=True)`` opened and its first event read, both
        within one ``answer_timeout`` from now (the SDK's retries included): a server that
        answers with headers and then nothing fails there, not after the read timeout. The
        HTTP response is closed on every exit."""
        deadline = asyncio.get_running_loop().time() + self.settings.answer_timeout
        stream = await self._open(request, deadline)
        async with stream:
            try:
                async with asyncio.timeout_at(deadline):
                    first = await anext(stream, None)
            except TimeoutError:
                raise ModelError(
                    f"no first event from {self._url()} within "
                    f"{self.settings.answer_timeout:g} s: the server answered (HTTP "
                    f"{stream.response.status_code}) and then sent nothing; check that it is "
                    "not overloaded, or raise answer_timeout for a model that takes longer "
                    "to start",
                    provider=self.provider,
                ) from None
            yield Answer(stream, first)

    async def _open(self, request: Awaitable[_Stream], deadline: float) -> _Stream:
        """Await the SDK's ``create(..., stream=True)``: its retries, bounded as a whole by
        ``deadline``, then a check that what came back is an event stream."""
        limit = self.settings.answer_timeout
        attempts = self.settings.max_retries + 1
        try:
            async with asyncio.timeout_at(deadline):
                stream = await request
        except TimeoutError:
            raise ModelError(
                f"no answer from {self._url()} within {limit:g} s over up to {attempts} "
                "attempts: the server accepted the connection but sent nothing; check that "
                "it is up (ProviderSettings.answer_timeout sets the limit)",
                provider=self.provider,
            ) from None
        kind = stream.response.headers.get("content-type", "")
        if kind.split(";")[0].strip().lower() in _NOT_A_STREAM:
            await stream.response.aclose()
            raise self._wrong_content(kind)
        return stream

    def _wrong_content(self, kind: str) -> ModelError:
        return ModelError(
            f"the server at {self._url()} answered with {kind or 'no content type'} instead of "
            "an event stream (a proxy or a login page in between?); check the base URL",
            provider=self.provider,
        )

    def _ended_early(self, stream: Any = None) -> ModelError:
        kind = stream.response.headers.get("content-type", "") if stream is not None else ""
        if kind and not kind.startswith("text/event-stream"):
            return self._wrong_content(kind)
        return ModelError(
            "the stream ended before the model finished (connection closed early)",
            provider=self.provider,
        )

    def _cost(self, usage: Usage) -> float | None:
        return step_cost(
            self._price_provider, self._price_model, usage, base_url=self.config.base_url
        )


class Answer(Generic[_Stream]):
    """An SDK stream whose first event was read ahead (``None``: the stream was empty);
    iterating it yields that event, then the rest. The SDKs' streams are their own
    iterators: no generator is left suspended between the two reads."""

    def __init__(self, stream: _Stream, first: Any) -> None:
        self.response = stream.response
        self._stream = stream
        self._first = first

    def __aiter__(self) -> Answer[_Stream]:
        return self

    async def __anext__(self) -> Any:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._stream)
