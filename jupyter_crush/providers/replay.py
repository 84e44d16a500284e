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
never matched: the answer is the recording's whatever was asked, so
:func:`for_prompt` says which prompt it answers (the status line shows it).

A recording keeps its conversation whole: its prompt (:attr:`Recording.prompt`)
and its tools (:attr:`Recording.tools`), which answer the recorded calls with
the recorded results, so a replayed turn reads as the real one did.
``replay:auto`` picks, for each prompt, the recording that answered it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx2
import yaml

from ..core.message import Message, Role
from ..core.model import Model, StreamEvent, ToolSpec
from ..core.tools import Tool, ToolContext, ToolResult
from .config import ProviderConfig, ProviderConfigError, ProviderSettings

RECORDINGS_DIR = Path(__file__).resolve().parent.parent / "recordings"

#: Short names for the recordings shipped with the package, in the order ``replay:auto``
#: prefers them when several answered the same prompt (for the weather question, the
#: longest stream: word-by-word reasoning, a tool call, an answer).
SHORT_NAMES: dict[str, str] = {
    "anthropic-simple": "AnthropicCommon--claude-sonnet-4--simple_streaming",
    "anthropic-multi-tool": "AnthropicCommon--claude-sonnet-4--multi_tool_streaming",
    "zai-thinking": "OpenAICompatibleThinking--zai-glm-4-7-flash--thinking-streaming",
    "anthropic-thinking": "AnthropicThinking--claude-sonnet-4--thinking-streaming",
    "anthropic-tool": "AnthropicCommon--claude-sonnet-4--tool_streaming",
    "openai-simple": "OpenAICommon--openai-gpt-4o--simple_streaming",
    "openai-tool": "OpenAICommon--openai-gpt-4o--tool_streaming",
    "openai-multi-tool": "OpenAICommon--openai-gpt-5--multi_tool_streaming",
    "groq-tool": "OpenAICompatibleCommon--groq-kimi-k2--tool_streaming",
    "llama-cpp-thinking": "OpenAICompatibleThinking--llama-cpp-gpt-oss--thinking-streaming",
    "openai-responses-thinking": (
        "OpenAIResponsesWithSummaryThinking--openai-gpt-5--thinking-streaming"
    ),
    "o4-mini-responses-thinking": (
        "OpenAIResponsesWithSummaryThinking--openai-o4-mini--thinking-streaming"
    ),
    "openai-responses-simple": "OpenAIResponsesCommon--openai-gpt-4o--simple_streaming",
    "openai-responses-multi-tool": "OpenAIResponsesCommon--openai-gpt-5--multi_tool_streaming",
    "azure-tool": "AzureCommon--azure-o4-mini--tool_streaming",
    "azure-responses-tool": "AzureResponsesCommon--azure-gpt-5-mini--tool_streaming",
}

#: ``replay:auto`` chooses a recording by prompt; a prompt none answered gets this one.
AUTO = "auto"
AUTO_FALLBACK = "anthropic-thinking"

#: Recorded hosts whose prices we know, so a replay reports what the recorded step cost.
_PRICED_HOSTS = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "api.groq.com": "groq",
}
#: Azure OpenAI resources live under this domain, one host each.
_AZURE_DOMAIN = ".openai.azure.com"

#: OpenAI chat completions, OpenAI's Responses API, Anthropic Messages.
Protocol = Literal["openai", "responses", "anthropic"]


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
        if path.endswith("/responses"):
            return "responses"
        raise ProviderConfigError(
            f"recording {self.path} is neither Anthropic /v1/messages nor OpenAI "
            f"/chat/completions or /responses (first request: {path})"
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

    @functools.cached_property
    def prompt(self) -> str:
        """The user prompt the recorded conversation answers."""
        messages = _messages(_request_body(self.interactions[0]))
        prompts = [m.get("content") for m in messages if m.get("role") == "user"]
        return _content_text(prompts[-1]) if prompts else ""

    @functools.cached_property
    def tools(self) -> tuple[Tool, ...]:
        """The recorded tools; each answers a recorded call with its recorded result."""
        return recorded_tools([self])

    def tool_specs(self) -> list[ToolSpec]:
        """The tools the recorded client offered, in the order it sent them."""
        for interaction in self.interactions:
            tools = _request_body(interaction).get("tools")
            if tools:
                return [_tool_spec(tool) for tool in tools]
        return []

    def tool_results(self) -> dict[str, str]:
        """Recorded tool results by tool call id, as the recorded client sent them back."""
        results = {}
        for interaction in self.interactions:
            for message in _messages(_request_body(interaction)):
                if message.get("role") == "tool":  # OpenAI
                    results[message.get("tool_call_id", "")] = _content_text(message["content"])
                elif message.get("type") == "function_call_output":  # OpenAI Responses
                    results[message.get("call_id", "")] = _content_text(message.get("output"))
                elif isinstance(message.get("content"), list):  # Anthropic
                    for block in message["content"]:
                        if block.get("type") == "tool_result":
                            results[block["tool_use_id"]] = _content_text(block.get("content"))
        return results


def _request_body(interaction: Interaction) -> dict[str, Any]:
    try:
        body = json.loads(interaction.request_body or "{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A request's messages: chat's and Anthropic's ``messages``, or Responses' ``input``."""
    items = body.get("messages") or body.get("input") or []
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _content_text(content: Any) -> str:
    """A message content's text: a string, or the text blocks of a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def _tool_spec(tool: dict[str, Any]) -> ToolSpec:
    function = tool.get("function") or tool  # OpenAI nests the tool under "function"
    return ToolSpec(
        name=function["name"],
        description=function.get("description", ""),
        parameters=function.get("parameters") or function.get("input_schema") or {},
    )


def recorded_tools(recordings: Iterable[Recording]) -> tuple[Tool, ...]:
    """The tools of ``recordings`` by name (the first spec of a name wins), each answering
    any of their recorded calls with the recorded result (call ids are unique)."""
    specs: dict[str, ToolSpec] = {}
    results: dict[str, str] = {}
    for recording in recordings:
        for spec in recording.tool_specs():
            specs.setdefault(spec.name, spec)
        results.update(recording.tool_results())
    return tuple(Tool(spec, _recorded_result(results)) for spec in specs.values())


def _recorded_result(results: Mapping[str, str]) -> Any:
    async def run(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        recorded = results.get(context.tool_call_id)
        if recorded is None:
            return ToolResult(f"no recorded result for call {context.tool_call_id}", True)
        return ToolResult(recorded, metadata={"recorded": True})

    return run


def recording_names() -> list[str]:
    return sorted([*SHORT_NAMES, AUTO])


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
    """Assistant steps since the last user prompt (tool results do not count as prompts).
    In a Responses ``input`` a step is a run of the model's items (reasoning, messages,
    function calls) between tool outputs."""
    steps = 0
    in_step = False
    for message in reversed(_messages(body)):
        role, kind = message.get("role"), message.get("type")
        if role == "user" and _is_prompt(message.get("content")):
            break
        model_item = role == "assistant" or kind in ("reasoning", "function_call")
        # chat and Anthropic: each assistant message is a step of its own
        if model_item and (not in_step or "messages" in body):
            steps += 1
        in_step = model_item
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
        elif protocol == "responses":
            from .responses import ResponsesModel as inner_cls
        else:
            from .openai import OpenAIModel as inner_cls
        self._inner = inner_cls(
            recording.model,
            config,
            settings,
            transport=self.transport,
            price_provider=(
                "azure"
                if recording.host.endswith(_AZURE_DOMAIN)
                else _PRICED_HOSTS.get(recording.host, "replay")
            ),
        )

    @property
    def requests(self) -> list[dict[str, Any]]:
        return list(self.transport.requests)

    @property
    def tools(self) -> tuple[Tool, ...]:
        """The recorded tools, offered beside the agent's own (see :class:`~..model.Model`)."""
        return self.recording.tools

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


class AutoReplayModel:
    """``replay:auto``: each prompt gets the shipped recording that answered it.

    The notebook asks :meth:`for_prompt` before a turn starts, so the transcript
    names the recording played; :meth:`stream` does the same from the request's
    last prompt, for code that drives the agent directly.
    """

    provider = "replay"
    name = AUTO

    def __init__(self, settings: ProviderSettings) -> None:
        self._settings = settings
        # One model per recording name, made on first use; the loop thread only.
        self._models: dict[str, ReplayModel] = {}

    def for_prompt(self, prompt: str) -> ReplayModel:
        name = next(
            (n for n, r in _shipped_recordings().items() if same_prompt(prompt, r.prompt)),
            AUTO_FALLBACK,
        )
        if name not in self._models:
            self._models[name] = ReplayModel(_shipped_recordings()[name], self._settings)
        return self._models[name]

    @property
    def tools(self) -> tuple[Tool, ...]:
        return _shipped_tools()

    def __repr__(self) -> str:
        return f"AutoReplayModel(recordings={sorted(SHORT_NAMES)!r})"

    def stream(self, messages: Sequence[Message], **options: Any) -> AsyncIterator[StreamEvent]:
        prompts = [m.text for m in messages if m.role is Role.USER]
        return self.for_prompt(prompts[-1] if prompts else "").stream(messages, **options)


@functools.cache
def _shipped_recordings() -> dict[str, Recording]:
    """The recordings shipped with the package by short name, read once per process."""
    return {name: load_recording(find_recording(name)) for name in SHORT_NAMES}


@functools.cache
def _shipped_tools() -> tuple[Tool, ...]:
    return recorded_tools(_shipped_recordings().values())


def same_prompt(asked: str, recorded: str) -> bool:
    """Whether two prompts are the same question: words compared, case and punctuation not."""

    def words(text: str) -> list[str]:
        return re.findall(r"\w+", text.casefold())

    return words(asked) == words(recorded)


def for_prompt(model: Model, prompt: str) -> tuple[Model, str]:
    """The model that answers ``prompt`` and what a status line says about it.

    ``replay:auto`` becomes the recording that answered ``prompt``; a replay is described by
    the recorded prompt it answers, saying so when that is not ``prompt``; any other model
    is returned as it is, with nothing to say.
    """
    if isinstance(model, AutoReplayModel):
        model = model.for_prompt(prompt)
    if not isinstance(model, ReplayModel):
        return model, ""
    recorded = model.recording.prompt
    if not recorded:
        return model, "replaying a recorded answer (the recording keeps no prompt)"
    if same_prompt(prompt, recorded):
        return model, f"replaying a recorded answer to: “{recorded}”"
    return model, f"replaying a recorded answer to a different prompt: “{recorded}”"


def replay_model(ref: str, settings: ProviderSettings) -> ReplayModel | AutoReplayModel:
    if ref == AUTO:
        return AutoReplayModel(settings)
    path = find_recording(ref)
    return ReplayModel(load_recording(path), settings)
