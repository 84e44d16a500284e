"""``replay:<name>``: recorded real provider exchanges, for trying things offline.

A replay model is the real OpenAI or Anthropic provider with the real SDK;
only the network is swapped for an in-process httpx transport that answers
with a recording's response bytes (go-vcr YAML, as in
``jupyter_crush/recordings/``). Its ``provider`` is ``"replay"`` and its name
is the recording's, so the transcript never passes it off as a live model.

Which recorded response answers a request: a recording holds one
conversation, one interaction per model step. The transport counts the
assistant steps since the request's last user prompt and serves that
interaction; past the last one it starts over from the first (so a new prompt
always replays the recording from its beginning, and an agent that keeps
calling tools loops through it until its step limit). The request content is
never matched: the answer is the recording's whatever was asked.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx2
import yaml

from ..message import Message
from ..model import StreamEvent, ToolSpec
from .config import ProviderConfig, ProviderConfigError, ProviderSettings

RECORDINGS_DIR = Path(__file__).resolve().parent.parent / "recordings"

#: Short names for the recordings shipped with the package.
SHORT_NAMES: dict[str, str] = {
    "anthropic-simple": "AnthropicCommon--claude-sonnet-4--simple_streaming",
    "anthropic-tool": "AnthropicCommon--claude-sonnet-4--tool_streaming",
    "anthropic-multi-tool": "AnthropicCommon--claude-sonnet-4--multi_tool_streaming",
    "anthropic-thinking": "AnthropicThinking--claude-sonnet-4--thinking-streaming",
    "openai-simple": "OpenAICommon--openai-gpt-4o--simple_streaming",
    "openai-tool": "OpenAICommon--openai-gpt-4o--tool_streaming",
    "openai-multi-tool": "OpenAICommon--openai-gpt-5--multi_tool_streaming",
    "groq-tool": "OpenAICompatibleCommon--groq-kimi-k2--tool_streaming",
    "llama-cpp-thinking": "OpenAICompatibleThinking--llama-cpp-gpt-oss--thinking-streaming",
    "zai-thinking": "OpenAICompatibleThinking--zai-glm-4-7-flash--thinking-streaming",
}

#: Recorded hosts whose prices we know, so a replay reports what the recorded step cost.
_PRICED_HOSTS = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "api.groq.com": "groq",
}

Protocol = Literal["openai", "anthropic"]


@dataclass(frozen=True)
class Interaction:
    method: str
    url: str
    request_body: str
    status: int
    headers: dict[str, str]
    body: str


@dataclass(frozen=True)
class Recording:
    name: str
    path: Path
    interactions: tuple[Interaction, ...]

    @property
    def protocol(self) -> Protocol:
        path = urlsplit(self.interactions[0].url).path
        if path.endswith("/messages"):
            return "anthropic"
        if path.endswith("/chat/completions"):
            return "openai"
        raise ProviderConfigError(
            f"recording {self.path} is neither Anthropic /v1/messages nor OpenAI "
            f"/chat/completions (first request: {path})"
        )

    @property
    def model(self) -> str:
        """The model the recorded client asked for."""
        try:
            return str(json.loads(self.interactions[0].request_body)["model"])
        except (ValueError, KeyError, TypeError):
            return self.name

    @property
    def host(self) -> str:
        return urlsplit(self.interactions[0].url).hostname or ""


def recording_names() -> list[str]:
    return sorted(SHORT_NAMES)


def find_recording(ref: str) -> Path:
    """A short name, a file stem in the recordings folder, or a path to a YAML file."""
    if ref in SHORT_NAMES:
        return RECORDINGS_DIR / f"{SHORT_NAMES[ref]}.yaml"
    stem = RECORDINGS_DIR / f"{ref}.yaml"
    if "/" not in ref and stem.is_file():
        return stem
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    raise ProviderConfigError(
        f"no recording {ref!r}: use replay:<name> with one of {', '.join(recording_names())}, "
        "or replay:<path to a go-vcr YAML file>"
    )


def load_recording(path: Path, name: str | None = None) -> Recording:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ProviderConfigError(f"cannot read recording {path}: {exc}") from None
    raw = data.get("interactions") if isinstance(data, dict) else None
    if not raw:
        raise ProviderConfigError(
            f"{path} is not a go-vcr recording (no interactions); record one with go-vcr v2"
        )
    interactions = []
    for item in raw:
        try:
            request, response = item["request"], item["response"]
            headers = {
                str(k).lower(): ", ".join(v) if isinstance(v, list) else str(v)
                for k, v in (response.get("headers") or {}).items()
            }
            interactions.append(
                Interaction(
                    method=str(request.get("method", "POST")),
                    url=str(request["url"]),
                    request_body=str(request.get("body") or ""),
                    status=int(response.get("code") or 200),
                    headers=headers,
                    body=str(response.get("body") or ""),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ProviderConfigError(
                f"{path}: interaction {len(interactions)} lacks request.url or response"
            ) from None
    short = {v: k for k, v in SHORT_NAMES.items()}.get(path.stem)
    return Recording(name or short or path.stem, path, tuple(interactions))


def split_events(body: str) -> list[bytes]:
    """The body cut at server-sent-event boundaries, each piece ending with its blank line."""
    pieces = body.split("\n\n")
    chunks = [piece + "\n\n" for piece in pieces[:-1]]
    if pieces[-1]:
        chunks.append(pieces[-1])
    return [c.encode() for c in chunks]


class _PacedStream(httpx2.AsyncByteStream):
    def __init__(self, chunks: list[bytes], delay: float) -> None:
        self._chunks = chunks
        self._delay = delay

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(self._chunks):
            if self._delay and i:
                await asyncio.sleep(self._delay)
            yield chunk


def step_index(body: dict[str, Any]) -> int:
    """Assistant steps since the last user prompt (tool results do not count as prompts)."""
    steps = 0
    for message in reversed(body.get("messages") or []):
        role = message.get("role")
        if role == "assistant":
            steps += 1
        elif role == "user" and _is_prompt(message.get("content")):
            break
    return steps


def _is_prompt(content: Any) -> bool:
    if isinstance(content, list):  # Anthropic: a user message of only tool results is no prompt
        return any(block.get("type") != "tool_result" for block in content)
    return True


class ReplayTransport(httpx2.AsyncBaseTransport):
    """Answers SDK requests with a recording's responses (see the module doc for the order)."""

    def __init__(self, recording: Recording, *, delay: float = 0.0) -> None:
        self.recording = recording
        self.delay = delay
        #: JSON bodies of the latest requests served, oldest first (for inspection in
        #: notebooks); bounded so a long-lived kernel does not accumulate them.
        self.requests: deque[dict[str, Any]] = deque(maxlen=100)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        raw = await request.aread()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        self.requests.append(body)
        interactions = self.recording.interactions
        interaction = interactions[step_index(body) % len(interactions)]
        headers = dict(interaction.headers)
        headers.setdefault("content-type", "text/event-stream")
        return httpx2.Response(
            interaction.status,
            headers=headers,
            stream=_PacedStream(split_events(interaction.body), self.delay),
            request=request,
        )


class ReplayModel:
    """A recorded conversation played back through the real SDK."""

    provider = "replay"

    def __init__(self, recording: Recording, settings: ProviderSettings) -> None:
        self.recording = recording
        self.name = recording.name
        self.transport = ReplayTransport(recording, delay=settings.replay_delay)
        protocol = recording.protocol
        config = ProviderConfig(
            id="replay",
            type="anthropic" if protocol == "anthropic" else "openai-compat",
            # Never contacted: the transport answers every request in-process.
            base_url="http://replay.invalid" + ("" if protocol == "anthropic" else "/v1"),
            api_key="replay",
            requires_key=False,
        )
        # A recorded response is the same on every try: retrying cannot help.
        settings = replace(settings, max_retries=0)
        inner_cls: type[Any]
        if protocol == "anthropic":
            from .anthropic import AnthropicModel as inner_cls
        else:
            from .openai import OpenAIModel as inner_cls
        self._inner = inner_cls(
            recording.model,
            config,
            settings,
            transport=self.transport,
            price_provider=_PRICED_HOSTS.get(recording.host, "replay"),
        )

    @property
    def requests(self) -> list[dict[str, Any]]:
        return list(self.transport.requests)

    def __repr__(self) -> str:
        return (
            f"ReplayModel(name={self.name!r}, recorded_model={self.recording.model!r}, "
            f"file={self.recording.path.name!r})"
        )

    def stream(
        self,
        messages: Sequence[Message],
        *,
        system: str | None = None,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[StreamEvent]:
        return self._inner.stream(messages, system=system, tools=tools)


def replay_model(ref: str, settings: ProviderSettings) -> ReplayModel:
    path = find_recording(ref)
    return ReplayModel(load_recording(path), settings)
