"""Azure OpenAI deployments and Gemini, against recorded streams served from 127.0.0.1: the
URLs and headers the SDK builds for a deployment (chat completions and the Responses API),
where endpoint, key and api-version come from, and prices from genai-prices."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.openai_chunks import openai_step
from support.replay_server import ReplayServer, Step, recording_steps
from test_providers import SECRET, _isolated_env, run_step, tool_results, user

from jupyter_crush.core.message import FinishReason, part_from_dict, part_to_dict
from jupyter_crush.providers import (
    OpenAIModel,
    ProviderConfigError,
    ProviderSettings,
    resolve_model,
)
from jupyter_crush.providers.azure import AzureChatModel, AzureResponsesModel
from jupyter_crush.providers.replay import RECORDINGS_DIR, SHORT_NAMES

__all__ = ["_isolated_env"]  # the autouse fixture: no developer keys leak into these tests

AZURE_CHAT = RECORDINGS_DIR / f"{SHORT_NAMES['azure-tool']}.yaml"
AZURE_RESPONSES = RECORDINGS_DIR / f"{SHORT_NAMES['azure-responses-tool']}.yaml"
OPENAI_CHAT = RECORDINGS_DIR / f"{SHORT_NAMES['openai-tool']}.yaml"


@pytest.fixture(autouse=True)
def _no_azure_or_gemini_env(monkeypatch):
    for name in (
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_AD_TOKEN",
        "OPENAI_API_VERSION",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)


def resolve(name: str, **settings: Any) -> Any:
    return resolve_model(name, settings=ProviderSettings(crush_config=False, **settings))


async def two_steps(model: Any) -> list[Any]:
    first = await run_step(model, [user("What's the weather in Florence,Italy?")])
    history = [user("What's the weather in Florence,Italy?"), first.message, tool_results(first)]
    second = await run_step(model, history)
    return [first, second]


async def test_an_azure_deployment_from_the_environment_goes_where_the_sdk_sends_it(
    monkeypatch,
):
    async with ReplayServer(recording_steps(AZURE_CHAT)) as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", SECRET)
        monkeypatch.setenv("OPENAI_API_VERSION", "2024-10-21")
        model = resolve("azure:o4-mini", max_tokens=4000)
        assert isinstance(model, AzureChatModel)  # deployments take chat completions
        first, second = await two_steps(model)
    assert [r.path for r in server.requests] == [
        "/openai/deployments/o4-mini/chat/completions?api-version=2024-10-21"
    ] * 2
    headers = server.requests[0].headers
    assert headers["api-key"] == SECRET and "authorization" not in headers
    body = server.requests[0].json()
    assert body["max_completion_tokens"] == 4000  # what Azure's reasoning models take
    assert first.message.tool_calls[0].name == "weather"
    assert first.finish.reason is FinishReason.TOOL_USE
    assert second.message.text.startswith("The current temperature in Florence")
    # genai-prices knows Azure's o4-mini: $1.10 in, $4.40 out per million tokens
    assert first.finish.cost == pytest.approx(64 * 1.1e-6 + 87 * 4.4e-6)


async def test_a_deployment_of_another_name_has_no_price_rather_than_a_wrong_one(monkeypatch):
    async with ReplayServer(recording_steps(AZURE_CHAT)[:1]) as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", SECRET)
        monkeypatch.setenv("OPENAI_API_VERSION", "2024-10-21")
        step = await run_step(resolve("azure:team-reasoner"), [user("weather?")])
    assert server.requests[0].path.startswith("/openai/deployments/team-reasoner/")
    assert step.finish.usage.output_tokens == 87 and step.finish.cost is None


def test_azure_without_endpoint_or_api_version_says_what_to_set(monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", SECRET)
    with pytest.raises(ProviderConfigError) as info:
        resolve("azure:o4-mini")
    assert "set AZURE_OPENAI_ENDPOINT" in str(info.value) and "\n" not in str(info.value)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    with pytest.raises(ProviderConfigError) as info:
        resolve("azure:o4-mini")
    assert "set OPENAI_API_VERSION" in str(info.value) and "api_version" in str(info.value)
    assert SECRET not in str(info.value)


async def test_an_azure_deployment_from_crush_json_takes_the_responses_api(tmp_path, monkeypatch):
    async with ReplayServer(recording_steps(AZURE_RESPONSES)) as server:
        own = tmp_path / "xdg" / "crush" / "crush.json"  # the user's own: no trust needed
        own.parent.mkdir(parents=True)
        entry = {
            "type": "azure",
            "base_url": server.url,
            "api_key": "$WORK_AZURE_KEY",
            "api_version": "2025-04-01-preview",
            "api": "responses",
        }
        own.write_text(json.dumps({"providers": {"work": entry}}))
        monkeypatch.setenv("WORK_AZURE_KEY", SECRET)
        model = resolve_model("work:gpt-5-mini", settings=ProviderSettings())
        assert isinstance(model, AzureResponsesModel)
        first, second = await two_steps(model)
    assert [r.path for r in server.requests] == [
        "/openai/responses?api-version=2025-04-01-preview"
    ] * 2
    assert server.requests[0].headers["api-key"] == SECRET
    body = server.requests[1].json()
    assert body["model"] == "gpt-5-mini" and body["store"] is False
    assert [item.get("type") for item in body["input"][1:]] == [
        "function_call",
        "function_call_output",
    ]
    assert first.finish.reason is FinishReason.TOOL_USE
    assert second.message.text.startswith("Right now in Florence, Italy")
    assert first.finish.cost == pytest.approx(63 * 0.25e-6 + 101 * 2e-6)  # Azure gpt-5-mini


async def test_gemini_goes_through_googles_openai_compatible_endpoint(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    model = resolve("gemini:gemini-2.5-flash")
    assert isinstance(model, OpenAIModel)
    assert model.config.base_url == "https://generativelanguage.googleapis.com/v1beta/openai"
    # the same chat-completions stream, served where the Gemini client sends it
    async with ReplayServer(recording_steps(OPENAI_CHAT)) as server:
        model = resolve(
            "gemini:gemini-2.5-flash", base_urls={"gemini": f"{server.url}/v1beta/openai"}
        )
        first, _ = await two_steps(model)
    assert server.requests[0].path == "/v1beta/openai/chat/completions"
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert server.requests[0].json()["model"] == "gemini-2.5-flash"
    # genai-prices' Gemini 2.5 Flash: $0.30 in, $2.50 out per million tokens
    assert first.finish.cost == pytest.approx(61 * 0.3e-6 + 16 * 2.5e-6)


#: Gemini 3 through the OpenAI-compatible endpoint, in the shape Google's documentation of
#: that endpoint gives (no recording of it exists in the fantasy snapshot, whose Gemini
#: streams are Google's native API): the whole call in one chunk, with the thought signature
#: the next request must carry back under the call's extra_content.
SIGNATURE = "CiQBcsjafGfz2Q7GzOIFdgBqz7n2Q0Ayc"
GEMINI_3_CALL = (
    "data: "
    + json.dumps(
        {
            "choices": [
                {
                    "delta": {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "extra_content": {"google": {"thought_signature": SIGNATURE}},
                                "function": {
                                    "arguments": '{"location":"Florence, Italy"}',
                                    "name": "weather",
                                },
                                "id": "function-call-1",
                                "index": 0,
                                "type": "function",
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                    "index": 0,
                }
            ],
            "created": 1782321896,
            "id": "gemini-1",
            "model": "gemini-3-pro-preview",
            "object": "chat.completion.chunk",
            "usage": {"completion_tokens": 20, "prompt_tokens": 60, "total_tokens": 80},
        }
    )
    + "\n\ndata: [DONE]\n\n"
)


async def test_gemini_3_thought_signatures_go_back_with_their_calls(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    steps = [Step(GEMINI_3_CALL), openai_step(2, "It is 40 C in Florence.")]
    async with ReplayServer(steps) as server:
        model = resolve(
            "gemini:gemini-3-pro-preview", base_urls={"gemini": f"{server.url}/v1beta/openai"}
        )
        first, second = await two_steps(model)
    [call] = first.message.tool_calls
    assert (call.id, call.signature) == ("function-call-1", SIGNATURE)
    assert part_from_dict(part_to_dict(call)) == call  # the store keeps it
    sent = server.requests[1].json()["messages"]
    [assistant] = [m for m in sent if m["role"] == "assistant"]
    assert assistant["tool_calls"][0]["extra_content"] == {
        "google": {"thought_signature": SIGNATURE}
    }
    assert second.message.text == "It is 40 C in Florence."
