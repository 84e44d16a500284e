"""Providers against real recorded bytes, served by a local HTTP server.

Each recording in jupyter_crush/recordings/ is replayed from 127.0.0.1 in
recorded order; the official SDK parses the bytes and our provider turns them
into stream events. Expected text, reasoning, signatures and tool arguments
are derived from the recorded events by a deliberately naive reader below
(independent of the SDK path); finish reasons, usage and tool names are
spelled out from the recordings.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.bounded import until
from support.replay_server import ReplayServer, Step, error_step, recording_steps

from jupyter_crush.core.message import (
    FinishPart,
    FinishReason,
    Message,
    ReasoningPart,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from jupyter_crush.core.model import (
    ModelError,
    ReasoningEnd,
    StreamFinish,
    TextDelta,
    ToolCallStart,
    ToolSpec,
    apply_event,
)
from jupyter_crush.providers import (
    AnthropicModel,
    CrushConfigError,
    MissingAPIKeyError,
    OpenAIModel,
    ProviderConfig,
    ProviderConfigError,
    ProviderSettings,
    ReplayModel,
    resolve_model,
)
from jupyter_crush.providers import anthropic as anthropic_provider
from jupyter_crush.providers import openai as openai_provider
from jupyter_crush.providers.prices import step_cost
from jupyter_crush.providers.replay import (
    RECORDINGS_DIR,
    SHORT_NAMES,
    load_recording,
)
from jupyter_crush.providers.trust import TRUST_ENV

RECORDINGS = sorted(RECORDINGS_DIR.glob("*.yaml"))
SECRET = "sk-test-0123456789-secret"
AZURE_VERSION = "2025-04-01-preview"
WEATHER = ToolSpec(
    "weather",
    "Get weather information for a location",
    {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No developer keys, base URLs or crush.json leak into a test."""
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "GROQ_API_KEY",
        "OPENROUTER_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


# -- helpers ------------------------------------------------------------------


def settings_for(url: str, **overrides: Any) -> ProviderSettings:
    options: dict[str, Any] = {
        "api_keys": {"openai": SECRET, "anthropic": SECRET},
        "base_urls": {"openai": f"{url}/v1", "anthropic": url},
        "providers": {
            "compat": ProviderConfig("compat", "openai-compat", f"{url}/v1", requires_key=False),
            "azure": ProviderConfig("azure", "azure", url, SECRET, api_version=AZURE_VERSION),
        },
        "crush_config": False,
        "max_retries": 2,
        "read_timeout": 5.0,
        "connect_timeout": 2.0,
    }
    options.update(overrides)
    return ProviderSettings(**options)


def model_for_recording(path: Path, url: str, **overrides: Any):
    recording = load_recording(path)
    if recording.protocol == "anthropic":
        provider = "anthropic"
    elif recording.host == "api.openai.com":
        provider = "openai"
    elif recording.host.endswith(".openai.azure.com"):
        provider = "azure"  # the recorded model's name is the deployment's here
    else:
        provider = "compat"
    if recording.protocol == "responses":  # the local server is not OpenAI's own host
        overrides.setdefault("openai_apis", {provider: "responses"})
    return resolve_model(f"{provider}:{recording.model}", settings=settings_for(url, **overrides))


def protocol_model(protocol: str, url: str, **overrides: Any):
    name = "anthropic:claude-sonnet-4-20250514" if protocol == "anthropic" else "openai:gpt-4o"
    if protocol == "responses":
        overrides.setdefault("openai_apis", {"openai": "responses"})
    return resolve_model(name, settings=settings_for(url, **overrides))


@dataclass
class Streamed:
    """One step's events applied to a Message, as the agent does."""

    message: Message
    events: list[Any] = field(default_factory=list)

    @property
    def finish(self) -> StreamFinish:
        last = self.events[-1]
        assert isinstance(last, StreamFinish)
        return last

    @property
    def signature(self) -> str:
        return "".join(p.signature for p in self.message.parts if isinstance(p, ReasoningPart))

    def arguments(self) -> dict[str, tuple[str, Any]]:
        return {c.id: (c.name, json.loads(c.input or "{}")) for c in self.message.tool_calls}


async def run_step(model, messages: list[Message], tools=(WEATHER,)) -> Streamed:
    out = Streamed(Message("s", Role.ASSISTANT))
    async for event in model.stream(messages, system="You are a helpful assistant", tools=tools):
        out.events.append(event)
        if isinstance(event, ToolCallStart):
            assert out.message.tool_call(event.id) is None, "a tool call started twice"
        apply_event(out.message, event)
    finishes = [e for e in out.events if isinstance(e, StreamFinish)]
    assert len(finishes) == 1 and out.events[-1] is finishes[0]
    return out


def user(text: str) -> Message:
    return Message("s", Role.USER, [TextPart(text)])


def tool_results(step: Streamed, content: str = "40 C") -> Message:
    return Message(
        "s",
        Role.TOOL,
        [ToolResultPart(c.id, c.name, content) for c in step.message.tool_calls],
    )


def naive_expectation(body: str) -> dict[str, Any]:
    """Text, reasoning, signature and tool arguments read straight off the recorded events."""
    text, reasoning, signature = [], [], []
    tools: dict[Any, list[str]] = {}
    for line in body.splitlines():
        if not line.startswith("data:") or line.strip() == "data: [DONE]":
            continue
        data = json.loads(line[5:])
        kind = data.get("type", "")
        if kind == "response.output_text.delta":
            text.append(data["delta"])
        elif kind == "response.reasoning_summary_part.added" and data["summary_index"]:
            reasoning.append("\n\n")  # the summary's parts are paragraphs of one section
        elif kind == "response.reasoning_summary_text.delta":
            reasoning.append(data["delta"])
        elif kind == "response.output_item.added" and data["item"]["type"] == "function_call":
            tools[data["item"]["id"]] = [data["item"]["name"], ""]
        elif kind == "response.function_call_arguments.delta":
            tools[data["item_id"]][1] += data["delta"]
        if (
            data.get("type") == "content_block_start"
            and data["content_block"]["type"] == "tool_use"
        ):
            tools[data["index"]] = [data["content_block"]["name"], ""]
        elif data.get("type") == "content_block_delta":
            delta = data["delta"]
            text.append(delta.get("text", ""))
            reasoning.append(delta.get("thinking", ""))
            signature.append(delta.get("signature", ""))
            if delta["type"] == "input_json_delta":
                tools[data["index"]][1] += delta["partial_json"]
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            text.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
            for call in delta.get("tool_calls") or ():
                entry = tools.setdefault(call["index"], ["", ""])
                entry[0] = entry[0] or call["function"].get("name") or ""
                entry[1] += call["function"].get("arguments") or ""
    return {
        "text": "".join(text),
        "reasoning": "".join(reasoning),
        "signature": "".join(signature),
        "tools": sorted((name, json.loads(args or "{}")) for name, args in tools.values()),
    }


# What each recorded step must finish with: (finish reason, usage, tool names).
EXPECTED: dict[str, list[tuple[FinishReason, Usage, list[str]]]] = {
    "anthropic-simple": [(FinishReason.END_TURN, Usage(16, 38), [])],
    "anthropic-tool": [
        (FinishReason.TOOL_USE, Usage(394, 67), ["weather"]),
        (FinishReason.END_TURN, Usage(476, 46), []),
    ],
    "anthropic-multi-tool": [
        (FinishReason.TOOL_USE, Usage(502, 137), ["add", "multiply"]),
        (FinishReason.END_TURN, Usage(700, 31), []),
    ],
    "anthropic-thinking": [
        (FinishReason.TOOL_USE, Usage(424, 119), ["weather"]),
        (FinishReason.END_TURN, Usage(558, 51), []),
    ],
    "openai-simple": [(FinishReason.END_TURN, Usage(20, 2), [])],
    "openai-tool": [
        (FinishReason.TOOL_USE, Usage(61, 16), ["weather"]),
        (FinishReason.END_TURN, Usage(86, 13), []),
    ],
    "openai-multi-tool": [
        (FinishReason.TOOL_USE, Usage(190, 379), ["add", "multiply"]),
        (FinishReason.END_TURN, Usage(262, 25), []),
    ],
    # Responses: output tokens include the reasoning (64 of the thinking turn's first 121).
    "openai-responses-simple": [(FinishReason.END_TURN, Usage(20, 3), [])],
    "openai-responses-multi-tool": [
        (FinishReason.TOOL_USE, Usage(109, 223), ["add", "multiply"]),
        (FinishReason.END_TURN, Usage(167, 30), []),
    ],
    "openai-responses-thinking": [
        (FinishReason.TOOL_USE, Usage(63, 121), ["weather"]),
        (FinishReason.END_TURN, Usage(92, 456), []),
    ],
    "o4-mini-responses-thinking": [
        (FinishReason.TOOL_USE, Usage(60, 225), ["weather"]),
        (FinishReason.END_TURN, Usage(89, 196), []),
    ],
    "azure-tool": [
        (FinishReason.TOOL_USE, Usage(64, 87), ["weather"]),
        (FinishReason.END_TURN, Usage(92, 56), []),
    ],
    "azure-responses-tool": [
        (FinishReason.TOOL_USE, Usage(63, 101), ["weather"]),
        (FinishReason.END_TURN, Usage(92, 230), []),
    ],
    "groq-tool": [
        (FinishReason.TOOL_USE, Usage(93, 32), ["weather"]),
        (FinishReason.END_TURN, Usage(143, 13), []),
    ],
    "llama-cpp-thinking": [
        (FinishReason.TOOL_USE, Usage(139, 42), ["weather"]),
        (FinishReason.END_TURN, Usage(197, 18), []),
    ],
    # Z.ai reports cached prompt tokens: input excludes them, cache_read holds them.
    "zai-thinking": [
        (FinishReason.TOOL_USE, Usage(1, 87, cache_read_tokens=172), ["weather"]),
        (FinishReason.END_TURN, Usage(89, 71, cache_read_tokens=177), []),
    ],
}

SHORT_BY_STEM = {stem: short for short, stem in SHORT_NAMES.items()}


def test_every_recording_has_a_short_name_and_expectations():
    assert sorted(SHORT_BY_STEM) == sorted(p.stem for p in RECORDINGS)
    assert sorted(EXPECTED) == sorted(SHORT_NAMES)


# -- recorded exchanges through the real SDKs --------------------------------


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: SHORT_BY_STEM.get(p.stem, p.stem))
async def test_recording_replays_through_the_sdk(path: Path):
    recording = load_recording(path)
    expected = EXPECTED[SHORT_BY_STEM[path.stem]]
    async with ReplayServer(recording_steps(path)) as server:
        model = model_for_recording(path, server.url)
        history = [user("What's the weather in Florence, Italy?")]
        for index, interaction in enumerate(recording.interactions):
            step = await run_step(model, history)
            naive = naive_expectation(interaction.body)
            reason, usage, tool_names = expected[index]

            assert step.message.text == naive["text"]
            assert step.message.reasoning == naive["reasoning"]
            assert step.signature == naive["signature"]
            assert sorted(step.arguments().values()) == naive["tools"]
            assert sorted(name for name, _ in step.arguments().values()) == tool_names
            assert all(call.finished for call in step.message.tool_calls)
            assert step.finish.reason is reason
            assert step.finish.usage == usage
            if step.message.reasoning:
                # reasoning is closed before the answer or the tool calls begin
                assert any(isinstance(e, ReasoningEnd) for e in step.events)
            history += [step.message]
            if step.message.tool_calls:
                history.append(tool_results(step))

        requests = server.requests
        assert len(requests) == len(recording.interactions)
        assert all(r.completed and not r.client_closed for r in requests)
        first = requests[0].json()
        assert first["stream"] is True
        assert first["model"] == recording.model
        azure = f"?api-version={AZURE_VERSION}"
        if recording.protocol == "openai":
            assert first["stream_options"] == {"include_usage": True}
            assert requests[0].path in (
                "/v1/chat/completions",
                f"/openai/deployments/{recording.model}/chat/completions{azure}",
            )
        elif recording.protocol == "responses":
            assert first["store"] is False
            assert requests[0].path in ("/v1/responses", f"/openai/responses{azure}")
        else:
            assert requests[0].path == "/v1/messages"
        headers = requests[0].headers
        assert headers.get("authorization") or headers.get("x-api-key") or headers.get("api-key")


async def test_tool_results_and_thinking_signature_are_sent_back():
    path = RECORDINGS_DIR / f"{SHORT_NAMES['anthropic-thinking']}.yaml"
    async with ReplayServer(recording_steps(path)) as server:
        model = model_for_recording(path, server.url, thinking_budget=4000)
        history = [user("What's the weather in Florence, Italy?")]
        first = await run_step(model, history)
        history += [first.message, tool_results(first, "40 C")]
        await run_step(model, history)

        body = server.requests[1].json()
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 4000}
        assistant, results = body["messages"][1], body["messages"][2]
        thinking = assistant["content"][0]
        assert thinking["type"] == "thinking"
        assert thinking["signature"] == first.signature and len(first.signature) > 100
        assert thinking["thinking"] == first.message.reasoning
        assert assistant["content"][-1]["input"] == {"location": "Florence, Italy"}
        call_id = first.message.tool_calls[0].id
        assert results["role"] == "user"
        assert results["content"][0] == {
            "type": "tool_result",
            "tool_use_id": call_id,
            "content": "40 C",
            "is_error": False,
            "cache_control": {"type": "ephemeral"},  # the newest message: a cache breakpoint
        }


async def test_openai_parallel_tool_results_are_sent_back_in_order():
    path = RECORDINGS_DIR / f"{SHORT_NAMES['openai-multi-tool']}.yaml"
    async with ReplayServer(recording_steps(path)) as server:
        model = model_for_recording(path, server.url)
        history = [user("Add and multiply the number 2 and 3")]
        first = await run_step(model, history)
        history += [first.message, tool_results(first, "5")]
        await run_step(model, history)
        messages = server.requests[1].json()["messages"]
        ids = [c.id for c in first.message.tool_calls]
        assert [c["id"] for c in messages[2]["tool_calls"]] == ids
        assert [(m["role"], m["tool_call_id"]) for m in messages[3:]] == [("tool", i) for i in ids]


# -- failures -----------------------------------------------------------------

SIMPLE = {
    "openai": RECORDINGS_DIR / f"{SHORT_NAMES['openai-simple']}.yaml",
    "anthropic": RECORDINGS_DIR / f"{SHORT_NAMES['anthropic-simple']}.yaml",
}
SIMPLE["responses"] = RECORDINGS_DIR / f"{SHORT_NAMES['openai-responses-simple']}.yaml"
PROTOCOLS = ["openai", "responses", "anthropic"]


def simple_body(protocol: str) -> str:
    return recording_steps(SIMPLE[protocol])[0].body


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_429_is_retried_after_retry_after_then_succeeds(protocol):
    steps = [error_step(429, "slow down", **{"retry-after": "0.05"}), Step(simple_body(protocol))]
    async with ReplayServer(steps) as server:
        step = await run_step(protocol_model(protocol, server.url), [user("hi")])
        assert step.finish.reason is FinishReason.END_TURN
        assert len(server.requests) == 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_429_exhausts_the_retries_and_reports_the_provider_message(protocol):
    steps = [error_step(429, "Rate limit reached", **{"retry-after-ms": "20"})] * 3
    async with ReplayServer(steps) as server:
        with pytest.raises(ModelError) as info:
            await run_step(protocol_model(protocol, server.url, max_retries=2), [user("hi")])
        assert len(server.requests) == 3  # one try + max_retries
    error = info.value
    assert error.status_code == 429
    assert error.retry_after == pytest.approx(0.02)
    assert "Rate limit reached" in str(error) and "HTTP 429" in str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_retried_with_backoff(status):
    # No retry-after: the SDK's own exponential backoff (0.5 s first) applies.
    steps = [error_step(status, "upstream failed")] * 2
    async with ReplayServer(steps) as server:
        with pytest.raises(ModelError) as info:
            await run_step(protocol_model("openai", server.url, max_retries=1), [user("hi")])
        assert len(server.requests) == 2
    assert info.value.status_code == status
    assert "upstream failed" in str(info.value)


async def test_503_then_success_with_retry_after_ms():
    steps = [
        error_step(503, "overloaded", **{"retry-after-ms": "10"}),
        error_step(503, "overloaded", **{"retry-after-ms": "10"}),
        Step(simple_body("anthropic")),
    ]
    async with ReplayServer(steps) as server:
        step = await run_step(protocol_model("anthropic", server.url), [user("hi")])
        assert step.message.text.startswith("Olá")
        assert len(server.requests) == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_401_is_not_retried(protocol):
    steps = [error_step(401, f"invalid x-api-key {SECRET}")]  # some servers echo the key
    async with ReplayServer(steps) as server:
        with pytest.raises(ModelError) as info:
            await run_step(protocol_model(protocol, server.url), [user("hi")])
        assert len(server.requests) == 1
    assert info.value.status_code == 401
    assert "invalid x-api-key" in str(info.value) and "check the API key" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("fault", ["reset", "close"])
async def test_connection_cut_mid_stream_fails_without_retry(protocol, fault):
    # Events already reached the caller: a retry would repeat them, so none is made.
    steps = [Step(simple_body(protocol), fault=fault, fault_after=4)]
    async with ReplayServer(steps) as server:
        model = protocol_model(protocol, server.url)
        events = []
        with pytest.raises(ModelError) as info:
            async for event in model.stream([user("hi")]):
                events.append(event)
        assert len(server.requests) == 1
    assert not any(isinstance(e, StreamFinish) for e in events)
    assert "connection" in str(info.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_malformed_event_fails_with_a_clear_error(protocol):
    good = simple_body(protocol).split("\n\n")
    broken = (
        'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": bro'
        if protocol == "anthropic"
        else 'data: {"choices": [ {"delta": bro'
    )
    body = "\n\n".join([*good[:3], broken, *good[3:]])
    async with ReplayServer([Step(body)]) as server:
        with pytest.raises(ModelError) as info:
            await run_step(protocol_model(protocol, server.url), [user("hi")])
        assert len(server.requests) == 1
    assert "malformed" in str(info.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_error_event_mid_stream_reports_the_provider_message(protocol):
    good = simple_body(protocol).split("\n\n")
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    event = ("event: error\n" if protocol == "anthropic" else "") + f"data: {json.dumps(error)}"
    async with ReplayServer([Step("\n\n".join([*good[:4], event, ""]))]) as server:
        with pytest.raises(ModelError) as info:
            await run_step(protocol_model(protocol, server.url), [user("hi")])
        assert len(server.requests) == 1
    assert str(info.value).endswith("error mid-stream: Overloaded")
    assert info.value.status_code is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_stall_mid_stream_hits_the_read_timeout(protocol):
    steps = [Step(simple_body(protocol), fault="stall", fault_after=3)]
    async with ReplayServer(steps) as server:
        model = protocol_model(protocol, server.url, read_timeout=0.3)
        with pytest.raises(ModelError) as info:
            await run_step(model, [user("hi")])
        assert len(server.requests) == 1
        await asyncio.wait_for(server.requests[0].hung_up.wait(), 10)
    assert "read timeout" in str(info.value)


async def test_stall_before_the_response_is_retried_then_fails():
    steps = [Step(simple_body("openai"), fault="stall_head")] * 2
    async with ReplayServer(steps) as server:
        model = protocol_model("openai", server.url, read_timeout=0.2, max_retries=1)
        with pytest.raises(ModelError) as info:
            await run_step(model, [user("hi")])
        assert len(server.requests) == 2
    assert "read timeout" in str(info.value)


async def test_unreachable_base_url_names_it():
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    model = protocol_model("openai", url, max_retries=1)
    with pytest.raises(ModelError) as info:
        await run_step(model, [user("hi")])
    message = str(info.value)
    assert f"{url}/v1" in message and "check the base URL" in message


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_cancel_mid_stream_closes_the_connection(protocol):
    steps = [Step(simple_body(protocol), event_delay=0.05)]
    async with ReplayServer(steps) as server:
        model = protocol_model(protocol, server.url)
        got_text = asyncio.Event()

        async def consume():
            async for event in model.stream([user("hi")]):
                if isinstance(event, TextDelta):
                    got_text.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_text.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.disconnected.wait(), 10)
        assert server.requests[0].client_closed
        assert len(server.requests) == 1  # a cancel is never retried


async def test_cancel_during_retry_backoff_sends_no_retry():
    steps = [error_step(429, "slow down", **{"retry-after": "30"}), Step(simple_body("openai"))]
    async with ReplayServer(steps) as server:
        model = protocol_model("openai", server.url, max_retries=3)
        task = asyncio.create_task(run_step(model, [user("hi")]))
        await until(lambda: server.requests)
        await asyncio.sleep(0.1)  # the SDK is now sleeping out the retry-after
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert len(server.requests) == 1


async def test_openai_refusal_is_text_with_content_filter_reason():
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"refusal": "I can't help with that."}}],
    }
    stop = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    body = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(stop)}\n\ndata: [DONE]\n\n"
    async with ReplayServer([Step(body)]) as server:
        step = await run_step(protocol_model("openai", server.url), [user("hi")])
    assert step.message.text == "I can't help with that."
    assert step.finish.reason is FinishReason.CONTENT_FILTER
    assert step.finish.usage == Usage()  # the server sent no usage chunk


async def test_parallel_calls_sent_whole_at_one_index_stay_apart():
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        data = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        return f"data: {json.dumps({**data, 'choices': [choice]})}\n\n"

    def call(call_id: str, name: str) -> dict[str, Any]:
        function = {"name": name, "arguments": '{"a": 2, "b": 3}'}
        return {
            "tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": function}]
        }

    body = (
        chunk(call("a1", "add")) + chunk(call("m1", "multiply")) + chunk({}, "tool_calls")
    ) + "data: [DONE]\n\n"
    async with ReplayServer([Step(body)]) as server:
        step = await run_step(protocol_model("openai", server.url), [user("hi")])
    assert step.arguments() == {
        "a1": ("add", {"a": 2, "b": 3}),
        "m1": ("multiply", {"a": 2, "b": 3}),
    }
    assert step.finish.reason is FinishReason.TOOL_USE


async def test_openrouter_style_reasoning_field():
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        data = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        return f"data: {json.dumps({**data, 'choices': [choice]})}\n\n"

    body = "".join(
        [
            chunk({"role": "assistant", "reasoning": "Think"}),
            chunk({"reasoning": "ing."}),
            chunk({"content": "Done."}),
            chunk({}, "stop"),
            "data: [DONE]\n\n",
        ]
    )
    async with ReplayServer([Step(body)]) as server:
        step = await run_step(protocol_model("openai", server.url), [user("hi")])
    assert (step.message.reasoning, step.message.text) == ("Thinking.", "Done.")
    kinds = [type(e).__name__ for e in step.events]
    assert kinds.index("ReasoningEnd") < kinds.index("TextDelta")


async def test_anthropic_redacted_thinking_is_kept_and_sent_back():
    def event(data: dict[str, Any]) -> str:
        return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n"

    usage = {"input_tokens": 10, "output_tokens": 1}
    message = {"id": "m", "type": "message", "role": "assistant", "content": [], "usage": usage}
    body = "".join(
        event(e)
        for e in [
            {"type": "message_start", "message": {**message, "model": "claude-sonnet-4"}},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "redacted_thinking", "data": "EncryptedBlob=="},
            },
            {"type": "content_block_stop", "index": 0},
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "Done."},
            },
            {"type": "content_block_stop", "index": 1},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 5},
            },
            {"type": "message_stop"},
        ]
    )
    async with ReplayServer([Step(body)]) as server:
        step = await run_step(protocol_model("anthropic", server.url), [user("hi")])
    reasoning = step.message.parts[0]
    assert isinstance(reasoning, ReasoningPart)
    assert (reasoning.redacted, reasoning.text) == ("EncryptedBlob==", "")
    assert reasoning.finished_at is not None and step.message.text == "Done."
    stored = Message.from_dict(json.loads(json.dumps(step.message.to_dict())))
    sent = anthropic_provider.build_messages([user("hi"), stored, user("and?")])[1]["content"]
    assert sent[0] == {"type": "redacted_thinking", "data": "EncryptedBlob=="}
    assert sent[1] == {"type": "text", "text": "Done."}


async def test_stream_ending_without_finish_is_an_error():
    body = simple_body("openai")
    cut = body[: body.index('"finish_reason":"stop"')].rsplit("\n\n", 1)[0] + "\n\n"
    async with ReplayServer([Step(cut)]) as server:
        with pytest.raises(ModelError, match="ended before the model finished"):
            await run_step(protocol_model("openai", server.url), [user("hi")])


# -- request building ---------------------------------------------------------


def canceled_empty_assistant() -> Message:
    return Message("s", Role.ASSISTANT, [FinishPart(FinishReason.CANCELED, "User canceled")])


def test_empty_assistant_is_skipped_and_user_turns_merge():
    history = [user("first"), canceled_empty_assistant(), user("second")]
    openai_messages = openai_provider.build_messages(history, "sys")
    assert openai_messages == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "first\n\nsecond"},
    ]
    assert anthropic_provider.build_messages(history) == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
        }
    ]


def test_invalid_tool_json_is_sent_as_empty_object():
    cut = Message("s", Role.ASSISTANT, [ToolCallPart("c1", "weather", '{"loca', finished=False)])
    result = Message("s", Role.TOOL, [ToolResultPart("c1", "weather", "interrupted", True)])
    history = [user("q"), cut, result]
    openai_messages = openai_provider.build_messages(history, None)
    assert openai_messages[1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert openai_messages[2] == {"role": "tool", "tool_call_id": "c1", "content": "interrupted"}
    wire = anthropic_provider.build_messages(history)
    assert wire[1]["content"] == [{"type": "tool_use", "id": "c1", "name": "weather", "input": {}}]
    assert wire[2]["content"][0]["is_error"] is True


def test_consecutive_assistant_messages_merge():
    a = Message("s", Role.ASSISTANT, [TextPart("one")])
    b = Message("s", Role.ASSISTANT, [TextPart("two"), ToolCallPart("c", "weather", "{}", True)])
    result = Message("s", Role.TOOL, [ToolResultPart("c", "weather", "ok")])
    openai_messages = openai_provider.build_messages([user("q"), a, b, result], None)
    assert openai_messages[1]["content"] == "one\n\ntwo"
    assert openai_messages[1]["tool_calls"][0]["id"] == "c"
    wire = anthropic_provider.build_messages([user("q"), a, b, result])
    assert [m["role"] for m in wire] == ["user", "assistant", "user"]
    assert [blk["type"] for blk in wire[1]["content"]] == ["text", "text", "tool_use"]


def test_reasoning_goes_back_only_to_anthropic_and_only_signed():
    signed = ReasoningPart("thought", signature="sig-1")
    unsigned = ReasoningPart("half a thought")  # a stream cut mid-thinking
    a = Message("s", Role.ASSISTANT, [signed, TextPart("answer")])
    b = Message("s", Role.ASSISTANT, [unsigned])
    history = [user("q"), a, user("more"), b, user("again")]
    wire = anthropic_provider.build_messages(history)
    assert wire[1]["content"][0] == {
        "type": "thinking",
        "thinking": "thought",
        "signature": "sig-1",
    }
    # b had only unsigned reasoning: dropped, so the user turns around it merge
    assert [m["role"] for m in wire] == ["user", "assistant", "user"]
    openai_messages = openai_provider.build_messages(history, None)
    assert openai_messages[1] == {"role": "assistant", "content": "answer"}
    assert all("reasoning" not in json.dumps(m) for m in openai_messages)


def test_tool_results_open_the_merged_user_message():
    call = Message("s", Role.ASSISTANT, [ToolCallPart("c", "weather", '{"location": "X"}', True)])
    result = Message("s", Role.TOOL, [ToolResultPart("c", "weather", "sunny")])
    wire = anthropic_provider.build_messages([user("q"), call, result, user("and tomorrow?")])
    assert [blk["type"] for blk in wire[2]["content"]] == ["tool_result", "text"]


def test_dangling_and_orphan_tool_results_are_settled():
    call_a = ToolCallPart("a", "weather", '{"location": "X"}', True)
    call_b = ToolCallPart("b", "weather", '{"location": "Y"}', True)
    asked = Message("s", Role.ASSISTANT, [call_a, call_b])
    partial = Message(
        "s",
        Role.TOOL,
        [ToolResultPart("a", "weather", "sunny"), ToolResultPart("zz", "weather", "orphan")],
    )
    unanswered = Message("s", Role.ASSISTANT, [ToolCallPart("c", "weather", "{}", False)])
    history = [user("q"), asked, partial, user("next"), unanswered, user("again")]

    openai_messages = openai_provider.build_messages(history, None)
    tool_rows = [(m["tool_call_id"], m["content"]) for m in openai_messages if m["role"] == "tool"]
    assert [row[0] for row in tool_rows] == ["a", "b", "c"]  # orphan dropped, b and c settled
    assert tool_rows[0][1] == "sunny" and "interrupted" in tool_rows[1][1]

    wire = anthropic_provider.build_messages(history)
    assert [m["role"] for m in wire] == ["user", "assistant", "user", "assistant", "user"]
    settled = [b for b in wire[2]["content"] if b["type"] == "tool_result"]
    assert [(b["tool_use_id"], b["is_error"]) for b in settled] == [("a", False), ("b", True)]
    assert [b["type"] for b in wire[4]["content"]] == ["tool_result", "text"]


def test_request_options():
    settings = ProviderSettings(
        api_keys={"openai": "k", "anthropic": "k", "groq": "k"},
        crush_config=False,
        max_tokens=1000,
        thinking_budget=2000,
        reasoning_effort="high",
    )
    openai_params = resolve_model("openai:gpt-5", settings=settings).request_params([user("q")])
    assert openai_params["max_output_tokens"] == 1000  # the Responses API's name
    assert openai_params["reasoning"] == {"effort": "high", "summary": "auto"}
    settings.openai_apis = {"openai:gpt-5": "chat"}
    chat_params = resolve_model("openai:gpt-5", settings=settings).request_params([user("q")])
    assert chat_params["max_completion_tokens"] == 1000
    assert chat_params["reasoning_effort"] == "high"
    groq_params = resolve_model("groq:llama", settings=settings).request_params([user("q")])
    assert groq_params["max_tokens"] == 1000
    claude = resolve_model("anthropic:claude-sonnet-4-20250514", settings=settings)
    params = claude.request_params([user("q")], system="sys", tools=[WEATHER])
    assert params["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert params["max_tokens"] > 2000  # the API requires room beyond the budget
    assert params["tools"][0]["input_schema"] == WEATHER.parameters
    # prompt-cache breakpoints after the tools (covering the system prompt) and the newest
    # message, so each step of a turn reads what came before from the cache
    cached = {"type": "ephemeral"}
    assert params["system"] == [{"type": "text", "text": "sys", "cache_control": cached}]
    assert params["tools"][-1]["cache_control"] == cached
    assert params["messages"][-1]["content"][-1]["cache_control"] == cached
    plain = resolve_model(
        "anthropic:claude-sonnet-4-20250514",
        settings=ProviderSettings(api_keys={"anthropic": "k"}, prompt_caching=False),
    ).request_params([user("q")], system="sys", tools=[WEATHER])
    assert "cache_control" not in json.dumps(plain)


# -- model names, keys, crush.json -------------------------------------------


def test_resolve_builtin_providers(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("GROQ_API_KEY", SECRET)
    monkeypatch.setenv("OPENROUTER_API_KEY", SECRET)
    gpt = resolve_model("openai:gpt-4o")
    assert isinstance(gpt, OpenAIModel) and (gpt.provider, gpt.name) == ("openai", "gpt-4o")
    claude = resolve_model("anthropic:claude-sonnet-4-20250514")
    assert isinstance(claude, AnthropicModel)
    ollama = resolve_model("ollama:llama3.1")
    assert ollama.config.base_url == "http://localhost:11434/v1" and ollama.config.type == (
        "openai-compat"
    )
    assert resolve_model("groq:moonshotai/kimi-k2").config.base_url.startswith("https://api.groq")
    router = resolve_model("openrouter:anthropic/claude-3.5-sonnet")
    assert router.name == "anthropic/claude-3.5-sonnet"


def test_sdk_environment_variables_are_honored(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    model = resolve_model("openai:gpt-4o")
    assert model.config.base_url == "http://127.0.0.1:9/v1"
    assert model.config.api_key == SECRET
    override = ProviderSettings(api_keys={"openai": "other"}, base_urls={"openai": "http://x/v1"})
    model = resolve_model("openai:gpt-4o", settings=override)
    assert (model.config.api_key, model.config.base_url) == ("other", "http://x/v1")


@pytest.mark.parametrize(
    ("name", "error", "fix"),
    [
        ("gpt-4o", ProviderConfigError, "'provider:model'"),
        ("openai:", ProviderConfigError, "names no model"),
        ("nope:gpt-4o", ProviderConfigError, "unknown provider 'nope'"),
        ("openai:gpt-4o", MissingAPIKeyError, "OPENAI_API_KEY"),
        ("anthropic:claude", MissingAPIKeyError, "ANTHROPIC_API_KEY"),
        ("replay:nothing-like-this", ProviderConfigError, "openai-simple"),
        ("", ProviderConfigError, "openai:gpt-4o"),
        ("crush:large", ProviderConfigError, "models.large"),
    ],
)
def test_bad_model_names_say_what_to_do(name, error, fix):
    with pytest.raises(error) as info:
        resolve_model(name)
    message = str(info.value)
    assert fix in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def write_crush(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_crush_json_providers_and_models(tmp_path, monkeypatch):
    monkeypatch.setenv(TRUST_ENV, "1")  # what a folder's file may do untrusted: test_trust.py
    monkeypatch.setenv("MY_LLM_KEY", SECRET)
    write_crush(
        tmp_path / "crush.json",
        {
            "providers": {
                "mine": {
                    "type": "openai-compat",
                    "base_url": "http://127.0.0.1:8080/v1",
                    "api_key": "$MY_LLM_KEY",
                },
                "claude-proxy": {
                    "type": "anthropic",
                    "base_url": "http://127.0.0.1:8081",
                    "api_key": "${MY_LLM_KEY}",
                },
            },
            "models": {
                "large": {"provider": "claude-proxy", "model": "claude-sonnet-4-20250514"},
                "small": {"provider": "mine", "model": "qwen3"},
            },
        },
    )
    mine = resolve_model("mine:qwen3")  # found in ./crush.json
    assert isinstance(mine, OpenAIModel)
    assert (mine.config.base_url, mine.config.api_key) == ("http://127.0.0.1:8080/v1", SECRET)
    large = resolve_model("crush:large")
    assert isinstance(large, AnthropicModel) and large.provider == "claude-proxy"
    assert resolve_model("crush:small").name == "qwen3"


def test_crush_json_global_file_and_project_override(tmp_path, monkeypatch):
    monkeypatch.setenv(TRUST_ENV, "1")
    global_dir = tmp_path / "xdg" / "crush"
    global_dir.mkdir(parents=True)
    entry = {"type": "openai-compat", "base_url": "http://global/v1", "api_key": "g"}
    write_crush(global_dir / "crush.json", {"providers": {"a": entry, "b": entry}})
    local = {"type": "openai-compat", "base_url": "http://local/v1"}
    write_crush(tmp_path / ".crush.json", {"providers": {"b": local}})
    assert resolve_model("a:m").config.base_url == "http://global/v1"
    local_model = resolve_model("b:m")
    assert local_model.config.base_url == "http://local/v1"
    assert local_model.config.api_key == "not-needed"  # no api_key in crush.json: none needed


def test_crush_json_key_from_unset_variable_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(TRUST_ENV, "1")
    write_crush(
        tmp_path / "crush.json",
        {
            "providers": {
                "mine": {"type": "openai-compat", "base_url": "http://x", "api_key": "$UNSET_KEY_X"}
            }
        },
    )
    with pytest.raises(MissingAPIKeyError, match="UNSET_KEY_X"):
        resolve_model("mine:m")


@pytest.mark.parametrize(
    ("content", "fix"),
    [
        ('{"providers": {"x": {"type": "openai"', "not valid JSON (line 1"),
        ('["a list"]', "top level must be a JSON object"),
        ('{"providers": {"x": {"type": "bedrock"}}}', 'use one of "openai"'),
        ('{"models": {"large": {"model": "m"}}}', 'needs "provider" and "model"'),
        (
            '{"providers": {"x": {"type": "openai", "api_key": "$(pass show k)"}}}',
            "command substitution",
        ),
    ],
)
def test_malformed_crush_json_is_one_clear_line(tmp_path, monkeypatch, content, fix):
    monkeypatch.setenv(TRUST_ENV, "1")  # an untrusted file's providers are not read at all
    path = write_crush(tmp_path / "crush.json", content)
    with pytest.raises(CrushConfigError) as info:
        resolve_model("openai:gpt-4o", settings=ProviderSettings(api_keys={"openai": "k"}))
    assert fix in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)
    explicit = ProviderSettings(crush_config=tmp_path / "missing.json")
    with pytest.raises(CrushConfigError, match="does not exist"):
        resolve_model("openai:gpt-4o", settings=explicit)


def test_keys_never_appear_in_reprs(monkeypatch):
    settings = ProviderSettings(
        api_keys={"openai": SECRET, "anthropic": SECRET}, crush_config=False
    )
    custom = ProviderConfig("mine", "openai-compat", "http://x/v1", api_key=SECRET)
    settings.providers["mine"] = custom
    shown = [
        repr(settings),
        str(settings),
        repr(custom),
        repr(resolve_model("openai:gpt-4o", settings=settings)),
        repr(resolve_model("anthropic:claude", settings=settings)),
        repr(resolve_model("mine:m", settings=settings)),
        repr(resolve_model("openai:gpt-4o", settings=settings).config),
    ]
    for text in shown:
        assert SECRET not in text
    assert "'***'" in repr(settings)


def test_settings_reject_bad_numbers():
    with pytest.raises(ProviderConfigError, match="max_retries"):
        ProviderSettings(max_retries=-1)
    with pytest.raises(ProviderConfigError, match="read_timeout"):
        ProviderSettings(read_timeout=0)


# -- replay provider ----------------------------------------------------------


async def test_replay_provider_plays_a_tool_conversation_and_loops():
    model = resolve_model("replay:openai-tool", settings=ProviderSettings(replay_delay=0))
    assert isinstance(model, ReplayModel)
    assert (model.provider, model.name) == ("replay", "openai-tool")
    history = [user("weather?")]
    first = await run_step(model, history)
    assert first.finish.reason is FinishReason.TOOL_USE
    assert first.finish.cost is not None and first.finish.cost > 0  # priced as gpt-4o
    history += [first.message, tool_results(first)]
    second = await run_step(model, history)
    assert second.message.text == "The current temperature in Florence, Italy is 40°C."
    # a new prompt starts the recording over
    history += [second.message, user("and again?")]
    third = await run_step(model, history)
    assert third.arguments() == first.arguments()
    assert [len(r["messages"]) for r in model.requests] == [2, 4, 6]


async def test_replay_accepts_a_path_and_paces_events(tmp_path):
    source = RECORDINGS_DIR / f"{SHORT_NAMES['anthropic-simple']}.yaml"
    copy = tmp_path / "my-recording.yaml"
    copy.write_text(source.read_text())
    model = resolve_model(f"replay:{copy}", settings=ProviderSettings(replay_delay=0.001))
    assert model.name == "my-recording"
    step = await run_step(model, [user("hi")])
    assert step.message.text.startswith("Olá!")
    assert step.finish.usage == Usage(16, 38)


def test_replay_rejects_a_file_that_is_no_recording(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("hello: world\n")
    with pytest.raises(ProviderConfigError, match="not a go-vcr recording"):
        resolve_model(f"replay:{path}")


async def test_replay_cancel_mid_stream():
    model = resolve_model("replay:zai-thinking", settings=ProviderSettings(replay_delay=0.01))
    seen = []

    async def consume():
        async for event in model.stream([user("q")]):
            seen.append(event)

    task = asyncio.create_task(consume())
    while len(seen) < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not any(isinstance(e, StreamFinish) for e in seen)


# -- prices -------------------------------------------------------------------


def test_cost_from_usage():
    gpt = step_cost("openai", "gpt-4o", Usage(1000, 100))
    assert gpt == pytest.approx(1000 * 2.5e-6 + 100 * 10e-6)
    cached = step_cost("openai", "gpt-4o", Usage(0, 100, cache_read_tokens=1000))
    assert cached < gpt  # cache reads are cheaper than fresh input
    assert step_cost("anthropic", "claude-sonnet-4-20250514", Usage(1000, 100)) > 0
    assert step_cost("openai", "no-such-model-xyz", Usage(10, 10)) is None
    assert step_cost("mine", "whatever", Usage(10, 10)) is None
    assert step_cost("ollama", "llama3.1", Usage(10, 10)) == 0.0


# -- end to end: the agent on a replayed tool conversation -----------------------


@pytest.mark.parametrize("short", ["anthropic-tool", "openai-tool"])
async def test_agent_runs_a_replayed_tool_turn(short, store):
    from jupyter_crush import SessionAgent, SessionAgentCall
    from jupyter_crush.core.tools import Tool, ToolContext, ToolResult

    path = RECORDINGS_DIR / f"{SHORT_NAMES[short]}.yaml"
    asked: list[tuple[dict[str, Any], str]] = []

    async def weather(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        asked.append((arguments, context.tool_call_id))
        return ToolResult("40 C and sunny")

    async with ReplayServer(recording_steps(path)) as server:
        model = model_for_recording(path, server.url)
        agent = SessionAgent(model, store, tools=[Tool(WEATHER, weather)], system_prompt="Be brief")
        session = store.create_session(title="weather")
        result = await agent.run(SessionAgentCall(session.id, "What's the weather in Florence?"))

        assert result is not None and result.reason is FinishReason.END_TURN
        assert len(asked) == 1 and asked[0][0]["location"].startswith("Florence")
        call_id = asked[0][1]
        assert len(server.requests) == 2
        second = json.dumps(server.requests[1].json())
        assert "40 C and sunny" in second and call_id in second

    messages = store.list_messages(session.id)
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    first, results, answer = messages[1], messages[2], messages[3]
    assert first.finish_reason is FinishReason.TOOL_USE
    assert first.tool_calls[0].id == call_id and first.tool_calls[0].finished
    assert results.tool_results[0].content == "40 C and sunny"
    assert answer.finish_reason is FinishReason.END_TURN
    assert "40" in answer.text and result.text.endswith(answer.text)
    assert answer.usage.output_tokens > 0 and answer.cost is not None
    assert first.provider == model.provider and first.model == model.name
