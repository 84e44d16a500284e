"""Turning SDK and transport failures into one readable :class:`ModelError`.

Both SDKs raise the same family of exceptions (``APIStatusError``,
``APITimeoutError``, ``APIConnectionError``); this module reads them
structurally so one translation serves both.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2

from ..core.model import ModelError
from ..core.output import redact

_HINTS = {
    400: "the provider rejected the request",
    401: "check the API key",
    403: "the API key has no access to this model",
    404: "check the model name and the base URL",
    408: "the provider timed out",
    413: "the conversation is too large for this model",
    429: "rate limited: wait a moment and try again",
}


def _provider_message(body: Any, fallback: str) -> str:
    """The provider's own error text, from either SDK's parsed error body."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
        if isinstance(body.get("message"), str):
            return body["message"]
    if isinstance(body, str) and body.strip():
        return body.strip()
    return fallback


def _retry_after(headers: httpx2.Headers) -> float | None:
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return float(value) / divisor
            except ValueError:
                continue
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def translate_error(
    exc: BaseException,
    *,
    provider: str,
    base_url: str | None,
    api_key: str | None = None,
    read_timeout: float | None = None,
) -> ModelError:
    """A :class:`ModelError` for any failure raised while opening or reading a stream.

    The key is scrubbed from the message: some servers echo the credential they rejected,
    and this message is shown in the notebook and written to the transcript.
    """
    error = _translate(exc, provider=provider, base_url=base_url, read_timeout=read_timeout)
    message = redact(error.message)
    if api_key and len(api_key) >= 8:
        message = message.replace(api_key, "***")
    if message != error.message:
        error = ModelError(
            message,
            status_code=error.status_code,
            retry_after=error.retry_after,
            provider=error.provider,
        )
    return error


def _transport_detail(exc: BaseException) -> str:
    """The most specific message down the exception chain (the SDK's own is generic)."""
    link: BaseException | None = exc
    innermost = exc
    while link is not None:
        text = _one_line(str(link))
        if text and text != "Connection error.":
            return text
        innermost = link
        link = link.__cause__ or link.__context__
    return f"connection dropped: {type(innermost).__name__}"


def _translate(
    exc: BaseException, *, provider: str, base_url: str | None, read_timeout: float | None
) -> ModelError:
    where = base_url or "the provider's default endpoint"
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    body = getattr(exc, "body", None)
    if (isinstance(status, int) and status < 400) or (status is None and body is not None):
        # An error event inside a 200 stream (Anthropic "event: error", an OpenAI
        # {"error": ...} chunk): the provider's message, without a misleading status.
        message = _provider_message(body, getattr(exc, "message", "") or str(exc))
        return ModelError(
            _one_line(f"the provider reported an error mid-stream: {message}"), provider=provider
        )
    if isinstance(status, int) and isinstance(response, httpx2.Response):
        if body is None:
            try:
                body = json.loads(response.text)
            except (ValueError, httpx2.ResponseNotRead):
                body = None
        message = _provider_message(body, getattr(exc, "message", "") or response.reason_phrase)
        hint = _HINTS.get(status) or ("the provider had a server error" if status >= 500 else "")
        if hint:
            message = f"{message} ({hint})"
        return ModelError(
            _one_line(message),
            status_code=status,
            retry_after=_retry_after(response.headers),
            provider=provider,
        )
    name = type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if "Timeout" in name or isinstance(cause, httpx2.TimeoutException):
        limit = f" ({read_timeout:g} s)" if read_timeout else ""
        return ModelError(
            f"no data from {where} within the read timeout{limit}; the server stalled or "
            "is overloaded",
            provider=provider,
        )
    if "Connection" in name or isinstance(exc, httpx2.TransportError):
        return ModelError(
            f"connection to {where} failed ({_transport_detail(exc)}); check the base URL and "
            "that the server is running",
            provider=provider,
        )
    if isinstance(exc, ValueError):  # a malformed event: invalid JSON or an unexpected shape
        return ModelError(
            f"the provider sent a malformed stream event ({_one_line(str(exc))[:200]})",
            provider=provider,
        )
    return ModelError(_one_line(f"{name}: {exc}"), provider=provider)
