"""The ``fetch`` tool: GET one http(s) URL and return its body as text for the model.

HTML becomes Markdown (markdownify: MIT-licensed, maintained, built on BeautifulSoup), JSON
is pretty-printed, CSV and other text come back as they are; a binary body, or one larger
than :data:`MAX_BODY_BYTES`, is one line saying what it was. Text longer than the tool
result's cap keeps its head and tail with the count of characters cut. Redirects are
followed only to http and https URLs, and the result names the URL asked for and the one
that answered.

It sends a request the model built, so it goes through the permission prompt (unless
``allowed_tools`` or "Allow for session" allows it), and a request carrying a secret the
kernel knows (an API key, a configured header or URL credential, a credential-like
environment variable) is refused before anything is sent.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import httpx2

from ..core.model import ToolSpec
from ..core.output import MAX_OUTPUT_CHARS, clean, secret_values
from ..core.tools import Tool, ToolContext, ToolResult

DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 120.0
#: Bodies larger than this are not read: the result says what it was instead.
MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_REDIRECTS = 10
_SCHEMES = frozenset({"http", "https"})
_HTML = frozenset({"text/html", "application/xhtml+xml"})
#: Non-``text/*`` types whose bodies are text.
_TEXT_TYPES = frozenset(
    {"application/xml", "application/javascript", "application/x-ndjson", "application/csv"}
)
_USER_AGENT = "jupyter-crush fetch"

DESCRIPTION = """\
Fetch a web page or an API's response with an HTTP GET and return it as text: HTML as \
Markdown, JSON pretty-printed, CSV and plain text as they are. Only http and https URLs; \
redirects are followed (http and https only). The result starts with the URL, the final \
URL after redirects, the status and the content type. Long bodies keep their head and tail; \
binary bodies and bodies over {max_mb} MB are described in one line, not returned. Times out \
after `timeout` seconds (default {timeout:g}, max {max_timeout:g}). Never put API keys or \
other credentials in the URL or headers: such a request is refused."""


@dataclass
class FetchTool:
    timeout: float = DEFAULT_TIMEOUT
    max_timeout: float = MAX_TIMEOUT
    max_bytes: int = MAX_BODY_BYTES
    limit: int = MAX_OUTPUT_CHARS

    def tool(self) -> Tool:
        spec = ToolSpec(
            name="fetch",
            description=DESCRIPTION.format(
                max_mb=self.max_bytes // (1024 * 1024),
                timeout=self.timeout,
                max_timeout=self.max_timeout,
            ),
            parameters={
                "type": "object",
                "properties": {
                    "url": {"type": "string", "description": "The http or https URL to GET."},
                    "headers": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": 'Extra request headers, e.g. {"Accept": '
                        '"application/json"}.',
                    },
                    "timeout": {
                        "type": "number",
                        "description": f"Seconds for the whole fetch (default "
                        f"{self.timeout:g}, max {self.max_timeout:g}).",
                    },
                },
                "required": ["url"],
                "additionalProperties": False,
            },
        )
        return Tool(spec=spec, run=self.run, changes_state=True, summarize=summarize)

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        url = args.get("url")
        if not isinstance(url, str) or not url.strip():
            return _error("'url' must be an http or https URL")
        url = url.strip()
        problem = _url_problem(url)
        if problem:
            return _error(problem)
        headers = args.get("headers") or {}
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            return _error("'headers' must be an object of header names to string values")
        timeout = args.get("timeout", self.timeout)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            return _error("'timeout' must be a positive number of seconds")
        timeout = min(float(timeout), self.max_timeout)
        where = _secret_in(url, headers)
        if where:
            return _error(
                f"refused: the request's {where} contains a secret this kernel knows (an API "
                "key or credential); a fetch never sends one, so ask the user to fetch it"
            )
        ctx.stop_if_covered()  # a Stop that landed while the permission prompt was answered
        try:
            async with asyncio.timeout(timeout):
                return await self._fetch(url, {"User-Agent": _USER_AGENT, **headers})
        except TimeoutError:
            return _error(
                f"no complete answer from {url} within {timeout:g} s; try again or raise "
                f"'timeout' (at most {self.max_timeout:g})"
            )
        except httpx2.HTTPError as exc:
            return _error(f"could not GET {url}: {type(exc).__name__}: {exc}".rstrip(": "))

    async def _fetch(self, url: str, headers: dict[str, str]) -> ToolResult:
        current = url
        async with httpx2.AsyncClient(follow_redirects=False, timeout=None) as client:
            for _ in range(MAX_REDIRECTS + 1):
                request = client.build_request("GET", current, headers=headers)
                response = await client.send(request, stream=True)
                try:
                    location = response.headers.get("location")
                    if response.is_redirect and location:
                        target = urljoin(current, location)
                        scheme = urlsplit(target).scheme.lower()
                        if scheme not in _SCHEMES:
                            return _error(
                                f"refused the redirect from {current} to {target}: only http "
                                "and https redirects are followed"
                            )
                        current = target
                        continue
                    return await self._read(url, response)
                finally:
                    await response.aclose()
        return _error(f"more than {MAX_REDIRECTS} redirects from {url}; not followed")

    async def _read(self, url: str, response: httpx2.Response) -> ToolResult:
        final = str(response.url)
        kind = response.headers.get("content-type", "")
        media = kind.split(";")[0].strip().lower()
        head = _head(url, final, response, kind)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return _described(
                head,
                response,
                f"{_size(int(declared))}, over the {_size(self.max_bytes)} fetch reads; not read",
            )
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self.max_bytes:
                return _described(
                    head,
                    response,
                    f"more than {_size(self.max_bytes)}, the most fetch reads; not read",
                )
        data = bytes(body)
        text = _as_text(data, media, response.charset_encoding)
        if text is None:
            return _described(
                head,
                response,
                f"{media or 'no content type'}, {_size(len(data))}, binary; not shown",
            )
        metadata = {
            "url": url,
            "final_url": final,
            "status": response.status_code,
            "content_type": kind,
            "bytes": len(data),
        }
        content = clean(f"{head}\n\n{_converted(text, media)}", self.limit, what="body")
        return ToolResult(content, response.status_code >= 400, metadata)


def summarize(args: dict[str, Any]) -> str:
    """The permission prompt: the request as it would be sent."""
    lines = [f"GET {args.get('url', '')}"]
    headers = args.get("headers")
    if isinstance(headers, dict):
        lines += [f"{name}: {value}" for name, value in headers.items()]
    return "\n".join(lines)


def _error(message: str) -> ToolResult:
    return ToolResult(clean(f"fetch: {message}"), True)


def _url_problem(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"{url!r} is not a URL ({exc})"
    if parts.scheme.lower() not in _SCHEMES:
        scheme = f"'{parts.scheme}:' URLs" if parts.scheme else "URLs without a scheme"
        return f"only http and https URLs can be fetched, not {scheme}"
    if not parts.hostname:
        return f"{url!r} names no host"
    return ""


def _secret_in(url: str, headers: dict[str, str]) -> str:
    """Which part of the request carries a known secret ("" for none)."""
    secrets = secret_values()
    for where, text in (("URL", f"{url}\n{unquote(url)}"), ("headers", _header_text(headers))):
        if any(secret in text for secret in secrets):
            return where
    return ""


def _header_text(headers: dict[str, str]) -> str:
    return "\n".join(f"{name}: {value}\n{unquote(value)}" for name, value in headers.items())


def _head(url: str, final: str, response: httpx2.Response, kind: str) -> str:
    status = f"{response.status_code} {response.reason_phrase}".strip()
    return f"URL: {url}\nFinal URL: {final}\nStatus: {status}\nContent-Type: {kind or '(none)'}"


def _described(head: str, response: httpx2.Response, what: str) -> ToolResult:
    """A body not returned: the head, then one line saying what it was."""
    return ToolResult(clean(f"{head}\n\nBody: {what}"), response.status_code >= 400)


def _as_text(data: bytes, media: str, charset: str | None) -> str | None:
    """The body as text, or None when it is binary."""
    textual = media.startswith("text/") or media in _TEXT_TYPES or media in _HTML
    textual = textual or media.endswith(("+json", "+xml")) or media == "application/json"
    if not textual and (media or b"\0" in data[:8192]):
        return None
    try:
        return data.decode(charset or "utf-8", errors="replace" if textual else "strict")
    except (LookupError, UnicodeDecodeError):
        return data.decode("utf-8", errors="replace") if textual else None


def _converted(text: str, media: str) -> str:
    if media in _HTML:
        return _markdown(text)
    if media == "application/json" or media.endswith("+json"):
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except json.JSONDecodeError:
            return text  # sent as JSON but is not: the model reads it as it came
    return text


def _markdown(html: str) -> str:
    from markdownify import markdownify  # imported on first use: bs4 is slow to import

    converted = markdownify(html, heading_style="ATX")  # drops <script> and <style>
    return re.sub(r"\n{3,}", "\n\n", converted).strip()


def _size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.1f} MB"
    if count >= 1024:
        return f"{count / 1024:.1f} KB"
    return f"{count} bytes"
