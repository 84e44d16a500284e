"""OpenAI's Responses API against real recorded streams (jupyter_crush/recordings/
OpenAIResponses*, recorded by charmbracelet/fantasy) served from 127.0.0.1: the reasoning
summary reaches the transcript as reasoning, the encrypted reasoning item goes back on the
turn's next step and on no other, a Stop mid-reasoning closes the stream with nothing
requested after it, and which API a model is spoken to through."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from support.bounded import until, within
from support.replay_server import ReplayServer, Step, error_step, recording_steps
from test_delta_view_ops import in_sync, make_view
from test_providers import _isolated_env, settings_for, user

from jupyter_crush import SessionAgent, SessionAgentCall
from jupyter_crush.core.message import (
    FinishReason,
    Message,
    ReasoningPart,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    part_from_dict,
    part_to_dict,
)
from jupyter_crush.core.model import ModelError, ReasoningDelta, StreamFinish, ToolSpec
from jupyter_crush.core.tools import Tool, ToolContext, ToolResult
from jupyter_crush.kernel.rerun import RecordedModel, RecordedTurn, Replay
from jupyter_crush.providers import (
    CrushConfigError,
    OpenAIModel,
    ProviderConfigError,
    ProviderSettings,
    ResponsesModel,
    resolve_model,
)
from jupyter_crush.providers.replay import RECORDINGS_DIR, SHORT_NAMES, load_recording
from jupyter_crush.providers.responses import build_input

__all__ = ["_isolated_env"]  # the autouse fixture: no developer keys leak into these tests

THINKING = RECORDINGS_DIR / f"{SHORT_NAMES['openai-responses-thinking']}.yaml"
WEATHER_PROMPT = "What's the weather in Florence, Italy?"
WEATHER = ToolSpec(
    "weather",
    "Get weather information for a location",
    {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
)


def recorded_events(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data: {")]


def recorded_reasoning_item(body: str) -> dict[str, Any]:
    """The reasoning item as the recorded step's ``output_item.done`` event holds it."""
    [item] = [
        e["item"]
        for e in recorded_events(body)
        if e["type"] == "response.output_item.done" and e["item"]["type"] == "reasoning"
    ]
    return item


def recorded_summary(body: str) -> str:
    return "".join(
        e["delta"]
        for e in recorded_events(body)
        if e["type"] == "response.reasoning_summary_text.delta"
    )


def gpt5(url: str, **overrides: Any) -> ResponsesModel:
    # OpenAI's own models take the Responses API at OpenAI's host; this one is local.
    settings = settings_for(url, openai_apis={"openai": "responses"}, **overrides)
    model = resolve_model("openai:gpt-5", settings=settings)
    assert isinstance(model, ResponsesModel)
    return model


def weather_tool() -> Tool:
    async def run(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        return ToolResult("40 C")

    return Tool(WEATHER, run)


async def test_a_turn_streams_the_summary_and_sends_the_encrypted_reasoning_back(store):
    bodies = [i.body for i in load_recording(THINKING).interactions]
    item = recorded_reasoning_item(bodies[0])
    async with ReplayServer(recording_steps(THINKING)) as server:
        model = gpt5(server.url)
        agent = SessionAgent(model, store, tools=[weather_tool()], system_prompt="Be brief")
        session = store.create_session()
        view, page, _ = make_view()
        call = SessionAgentCall(session.id, WEATHER_PROMPT, observer=view)
        result = await within(agent.run(call))
        first, second = (r.json() for r in server.requests)
    assert result.reason is FinishReason.END_TURN
    assert [r.path for r in server.requests] == ["/v1/responses", "/v1/responses"]

    # Step 1: OpenAI keeps nothing and returns the reasoning encrypted, with a summary.
    assert first["store"] is False
    assert first["include"] == ["reasoning.encrypted_content"]
    assert first["reasoning"] == {"summary": "auto"}
    assert first["instructions"].startswith("Be brief")
    assert first["input"] == [
        {"role": "user", "content": [{"type": "input_text", "text": WEATHER_PROMPT}]}
    ]
    assert first["tools"][0]["name"] == "weather" and first["tools"][0]["type"] == "function"

    # Step 2: the reasoning item goes back before the call it led to, then the call's result.
    messages = store.list_messages(session.id)
    [call] = messages[1].tool_calls
    assert second["input"][1:] == [
        {
            "type": "reasoning",
            "id": item["id"],
            "summary": [{"type": "summary_text", "text": recorded_summary(bodies[0])}],
            "encrypted_content": item["encrypted_content"],
        },
        {
            "type": "function_call",
            "call_id": call.id,
            "name": "weather",
            "arguments": '{"location": "Florence, Italy"}',
        },
        {"type": "function_call_output", "call_id": call.id, "output": "40 C"},
    ]

    # The store keeps the summary as reasoning, with the item, ahead of the call.
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    reasoning, tool_call = messages[1].parts[:2]
    assert isinstance(reasoning, ReasoningPart) and isinstance(tool_call, ToolCallPart)
    assert reasoning.text == recorded_summary(bodies[0])
    assert reasoning.text.startswith("**Getting weather info**")
    assert (reasoning.item_id, reasoning.encrypted) == (item["id"], item["encrypted_content"])
    assert messages[3].reasoning == recorded_summary(bodies[1])
    assert messages[3].text.startswith("Right now in Florence, Italy")
    # Output tokens count the reasoning (64 of step 1's 121): priced at gpt-5's rates.
    assert (messages[1].usage.input_tokens, messages[1].usage.output_tokens) == (63, 121)
    assert messages[1].cost == pytest.approx(63 * 1.25e-6 + 121 * 10e-6)

    # The run view's reasoning section shows both steps' summaries, the answer below it.
    await until(lambda: in_sync(view, page))
    shown = page.state["reasoning"]
    assert shown == f"{recorded_summary(bodies[0])}\n\n{recorded_summary(bodies[1])}"
    assert page.state["answer"] == messages[3].text


class _NoEffects:
    """The recorded turn's tool has no effects outside the kernel to stop before."""

    def stop_before(self, calls: Any) -> None:
        return None


async def test_run_all_replays_a_responses_turn_with_its_reasoning_items(store):
    async with ReplayServer(recording_steps(THINKING)) as server:
        agent = SessionAgent(gpt5(server.url), store, tools=[weather_tool()])
        recorded_session = store.create_session()
        await within(agent.run(SessionAgentCall(recorded_session.id, WEATHER_PROMPT)))
    prompt, *records = store.list_messages(recorded_session.id)
    turn = RecordedTurn(prompt, records, fingerprint=None)  # type: ignore[arg-type]
    replayed = SessionAgent(
        RecordedModel(Replay(turn, _NoEffects())),  # type: ignore[arg-type]
        store,
        tools=[weather_tool()],
    )
    session = store.create_session()
    await within(replayed.run(SessionAgentCall(session.id, WEATHER_PROMPT)))

    def items(messages: list[Message]) -> list[tuple[str, str, str]]:
        return [
            (p.text, p.item_id, p.encrypted)
            for m in messages
            for p in m.parts
            if isinstance(p, ReasoningPart)
        ]

    again = store.list_messages(session.id)
    assert len(server.requests) == 2  # the replay asked the server nothing
    assert items(again) == items(records) and len(items(again)) == 2
    assert all(encrypted for _, _, encrypted in items(again))
    assert again[-1].text == records[-1].text


def reasoning(text: str, item: str = "", encrypted: str = "") -> ReasoningPart:
    return ReasoningPart(text, item_id=item, encrypted=encrypted)


def test_only_complete_reasoning_items_of_the_current_turn_are_sent():
    call = ToolCallPart("call_2", "weather", '{"location": "Rome"}', finished=True)
    messages = [
        user("first question"),
        Message("s", Role.ASSISTANT, [reasoning("old", "rs_old", "enc-old"), TextPart("hot")]),
        user("second question"),
        Message("s", Role.ASSISTANT, [reasoning("now", "rs_now", "enc-now"), call]),
        Message("s", Role.TOOL, [ToolResultPart("call_2", "weather", "20 C")]),
        # a step cut mid-reasoning: the item never completed, nothing to send
        Message("s", Role.ASSISTANT, [reasoning("half a thou"), TextPart("It is")]),
        # an Anthropic thinking block is not an OpenAI item
        Message("s", Role.ASSISTANT, [ReasoningPart("claude", signature="sig"), TextPart("ok")]),
    ]
    sent = [item for item in build_input(messages) if item.get("type") == "reasoning"]
    assert sent == [
        {
            "type": "reasoning",
            "id": "rs_now",
            "summary": [{"type": "summary_text", "text": "now"}],
            "encrypted_content": "enc-now",
        }
    ]


async def test_a_stop_mid_reasoning_closes_the_stream_and_requests_nothing_more(store):
    steps = recording_steps(THINKING, event_delay=0.02)
    async with ReplayServer(steps) as server:
        agent = SessionAgent(gpt5(server.url), store, tools=[weather_tool()])
        session = store.create_session()
        run = asyncio.create_task(agent.run(SessionAgentCall(session.id, WEATHER_PROMPT)))

        def reasoning_shown() -> bool:
            messages = store.list_messages(session.id)
            return len(messages) > 1 and bool(messages[-1].reasoning)

        await until(reasoning_shown)
        agent.cancel(session.id)
        result = await within(run)
        await within(server.disconnected.wait())
        await asyncio.sleep(0.1)  # room for a request that must not come
        assert len(server.requests) == 1
        assert server.requests[0].client_closed
    assert result.reason is FinishReason.CANCELED
    assistant = store.list_messages(session.id)[-1]
    assert assistant.finish_reason is FinishReason.CANCELED
    assert assistant.reasoning.startswith("**Getting weather info**")
    [part] = [p for p in assistant.parts if isinstance(p, ReasoningPart)]
    assert part.encrypted == ""  # the item never completed: nothing to send back


async def test_a_stop_mid_reasoning_at_the_provider_closes_the_connection():
    async with ReplayServer(recording_steps(THINKING, event_delay=0.02)) as server:
        model = gpt5(server.url)
        reasoned = asyncio.Event()

        async def consume() -> None:
            async for event in model.stream([user(WEATHER_PROMPT)], tools=[WEATHER]):
                if isinstance(event, ReasoningDelta) and event.text:
                    reasoned.set()

        task = asyncio.create_task(consume())
        await within(reasoned.wait())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await within(server.disconnected.wait())
        assert len(server.requests) == 1 and server.requests[0].client_closed


# -- which API --------------------------------------------------------------------------


def chosen(name: str, **settings: Any) -> type:
    options: dict[str, Any] = {"api_keys": {"openai": "k", "groq": "k"}, "crush_config": False}
    return type(resolve_model(name, settings=ProviderSettings(**{**options, **settings})))


def test_openais_own_models_at_its_own_host_take_the_responses_api(monkeypatch):
    assert chosen("openai:gpt-5") is ResponsesModel
    assert chosen("openai:o4-mini") is ResponsesModel
    assert chosen("openai:gpt-4o") is ResponsesModel
    assert chosen("openai:gpt-4o-audio-preview") is OpenAIModel  # chat-only
    assert chosen("openai:gpt-3.5-turbo") is OpenAIModel
    assert chosen("groq:openai/gpt-oss-120b") is OpenAIModel  # another server
    assert chosen("ollama:gpt-oss") is OpenAIModel
    # a proxy at OPENAI_BASE_URL keeps chat completions, which every one of them speaks
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:4000/v1")
    assert chosen("openai:gpt-5") is OpenAIModel


def test_settings_force_either_api_per_model_or_provider():
    assert chosen("openai:gpt-5", openai_apis={"openai:gpt-5": "chat"}) is OpenAIModel
    assert chosen("openai:gpt-5-mini", openai_apis={"openai:gpt-5": "chat"}) is ResponsesModel
    assert chosen("groq:some-model", openai_apis={"groq": "responses"}) is ResponsesModel
    with pytest.raises(ProviderConfigError) as info:
        ProviderSettings(openai_apis={"openai": "respones"})
    assert 'use "responses"' in str(info.value) and "\n" not in str(info.value)


def test_crush_json_forces_an_api_for_a_model_or_a_provider(tmp_path):
    config = tmp_path / "crush.json"
    config.write_text(
        json.dumps(
            {
                "providers": {
                    "openai": {"models": [{"id": "gpt-5", "api": "chat"}]},
                    "proxy": {
                        "type": "openai-compat",
                        "base_url": "http://127.0.0.1:4000/v1",
                        "api": "responses",
                    },
                }
            }
        )
    )
    options = {"crush_config": config, "api_keys": {"openai": "k"}, "trust_project_config": True}
    assert chosen("openai:gpt-5", **options) is OpenAIModel
    assert chosen("openai:o3", **options) is ResponsesModel
    assert chosen("proxy:gpt-5", **options) is ResponsesModel
    config.write_text(json.dumps({"providers": {"openai": {"api": "completions"}}}))
    with pytest.raises(CrushConfigError) as info:
        chosen("openai:gpt-5", **options)
    assert "provider \"openai\" api is 'completions'" in str(info.value)


# -- the store ----------------------------------------------------------------------------


def test_reasoning_parts_of_other_providers_are_stored_as_before():
    plain = part_to_dict(ReasoningPart("thinking", signature="sig"))
    assert "item_id" not in plain and "encrypted" not in plain
    assert part_from_dict(plain) == ReasoningPart("thinking", signature="sig")
    item = ReasoningPart("summary", item_id="rs_1", encrypted="enc")
    assert part_from_dict(part_to_dict(item)) == item


def test_crush_config_forces_either_api(ip):
    from test_magics import run

    from jupyter_crush.magics import current

    run(ip, "%config CrushConfig.api_keys = {'openai': 'sk-test'}")
    assert type(current().resolve_model("openai:gpt-5")) is ResponsesModel
    run(ip, "%config CrushConfig.openai_apis = {'openai:gpt-5': 'chat'}")
    assert type(current().resolve_model("openai:gpt-5")) is OpenAIModel


SIMPLE = RECORDINGS_DIR / f"{SHORT_NAMES['openai-responses-simple']}.yaml"


def simple_events() -> list[str]:
    """The recorded simple answer's events, each with its ``event:`` line."""
    return [e for e in recording_steps(SIMPLE)[0].body.split("\n\n") if e.strip()]


def ending_with(last: dict[str, Any]) -> str:
    """The recorded answer with its ``response.completed`` event replaced by ``last``."""
    events = [e for e in simple_events() if "response.completed" not in e]
    return "\n\n".join([*events, f"event: {last['type']}\ndata: {json.dumps(last)}", ""])


def recorded_response() -> dict[str, Any]:
    [completed] = [e for e in simple_events() if "response.completed" in e]
    return json.loads(completed.split("data: ", 1)[1])["response"]


@pytest.mark.parametrize(
    "last",
    [
        {"type": "error", "code": "server_error", "message": "The server had an error"},
        {
            "type": "response.failed",
            "sequence_number": 9,
            "response": {
                **recorded_response(),
                "status": "failed",
                "error": {"code": "server_error", "message": "The server had an error"},
            },
        },
    ],
    ids=["error", "response.failed"],
)
async def test_a_failure_event_mid_stream_reports_the_providers_message(last):
    async with ReplayServer([Step(ending_with(last))]) as server:
        with pytest.raises(ModelError) as info:
            async for _ in gpt5(server.url).stream([user("hi")]):
                pass
        assert len(server.requests) == 1  # the answer had begun: not retried
    assert str(info.value).endswith("error mid-stream: The server had an error")


async def test_an_incomplete_response_ends_with_its_reason():
    incomplete = {
        "type": "response.incomplete",
        "sequence_number": 9,
        "response": {
            **recorded_response(),
            "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"},
        },
    }
    async with ReplayServer([Step(ending_with(incomplete))]) as server:
        events = [e async for e in gpt5(server.url).stream([user("hi")])]
    finish = events[-1]
    assert isinstance(finish, StreamFinish) and finish.reason is FinishReason.MAX_TOKENS
    assert finish.usage.output_tokens == 3


async def test_an_organization_refused_summaries_gets_its_answer_without_them():
    # OpenAI's 400 for an organization it has not verified, as its API words it.
    refused = error_step(
        400,
        "Your organization must be verified to generate reasoning summaries. Please go to: "
        "https://platform.openai.com/settings/organization/general and click on Verify "
        "Organization.",
    )
    async with ReplayServer([refused, *recording_steps(THINKING)]) as server:
        model = gpt5(server.url)
        first = [e async for e in model.stream([user(WEATHER_PROMPT)], tools=[WEATHER])]
        again = [e async for e in model.stream([user(WEATHER_PROMPT)], tools=[WEATHER])]
        bodies = [r.json() for r in server.requests]
    assert [b.get("reasoning") for b in bodies] == [{"summary": "auto"}, None, None]
    assert all(b["include"] == ["reasoning.encrypted_content"] for b in bodies)
    assert isinstance(first[-1], StreamFinish) and isinstance(again[-1], StreamFinish)
