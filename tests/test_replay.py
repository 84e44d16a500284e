"""Replays that fit their prompts: each recording keeps the prompt it answered and its
recorded tool results, ``replay:auto`` picks the recording of the prompt asked, and a
replay always says which prompt it answers."""

from __future__ import annotations

from typing import Any

import pytest
from support.bounded import within

from jupyter_crush import SessionAgent, SessionAgentCall
from jupyter_crush.core.message import FinishReason, Role
from jupyter_crush.core.model import ToolSpec
from jupyter_crush.core.tools import Tool, ToolContext, ToolResult
from jupyter_crush.providers import ProviderSettings, resolve_model
from jupyter_crush.providers.replay import (
    SHORT_NAMES,
    AutoReplayModel,
    ReplayModel,
    for_prompt,
    same_prompt,
)
from jupyter_crush.testing import ScriptedModel

HI = "Say hi in Portuguese"
ADD = "Add and multiply the number 2 and 3"
WEATHER = "What's the weather in Florence, Italy?"
WEATHER_NO_SPACE = "What's the weather in Florence,Italy?"

#: The prompt each shipped recording answered, read from its first request body by hand.
RECORDED_PROMPTS = {
    "anthropic-simple": HI,
    "openai-simple": HI,
    "anthropic-multi-tool": ADD,
    "openai-multi-tool": ADD,
    "anthropic-tool": WEATHER_NO_SPACE,
    "openai-tool": WEATHER_NO_SPACE,
    "groq-tool": WEATHER_NO_SPACE,
    "anthropic-thinking": WEATHER,
    "llama-cpp-thinking": WEATHER,
    "zai-thinking": WEATHER,
    "openai-responses-simple": HI,
    "openai-responses-multi-tool": ADD,
    "openai-responses-thinking": WEATHER,
    "o4-mini-responses-thinking": WEATHER,
    "azure-tool": WEATHER_NO_SPACE,
    "azure-responses-tool": WEATHER_NO_SPACE,
}


def replay(name: str) -> Any:
    return resolve_model(f"replay:{name}", settings=ProviderSettings(replay_delay=0))


async def ask(model: Any, store, prompt: str, tools: list[Tool] = ()) -> list[Any]:
    agent = SessionAgent(model, store, tools=tools)
    session = store.create_session(title="t")
    await within(agent.run(SessionAgentCall(session.id, prompt)))
    return store.list_messages(session.id)


@pytest.mark.parametrize("name", sorted(SHORT_NAMES))
def test_each_recording_keeps_the_prompt_it_answered(name):
    assert replay(name).recording.prompt == RECORDED_PROMPTS[name]


def test_same_prompt_compares_words_not_case_spacing_or_punctuation():
    assert same_prompt(WEATHER, WEATHER_NO_SPACE)
    assert same_prompt("say HI in portuguese!", HI)
    assert not same_prompt("Say hi in Spanish", HI)
    assert not same_prompt("", HI)


@pytest.mark.parametrize(
    ("prompt", "chosen"),
    [(HI, "anthropic-simple"), (ADD, "anthropic-multi-tool"), (WEATHER, "zai-thinking")],
)
def test_auto_replays_the_recording_of_the_prompt_asked(prompt, chosen):
    model, note = for_prompt(replay("auto"), prompt)
    assert model.name == chosen
    assert note == f"replaying a recorded answer to: “{RECORDED_PROMPTS[chosen]}”"


def test_a_replay_of_another_prompt_says_so():
    model, note = for_prompt(replay("auto"), "Why does df have NaNs?")
    assert model.name == "anthropic-thinking"
    assert note == f"replaying a recorded answer to a different prompt: “{WEATHER}”"
    _, note = for_prompt(replay("openai-simple"), ADD)
    assert note == f"replaying a recorded answer to a different prompt: “{HI}”"


def test_a_live_model_has_nothing_to_say():
    model = ScriptedModel(["ok"])
    assert for_prompt(model, HI) == (model, "")


async def test_recorded_tools_answer_with_the_recorded_results(store):
    messages = await ask(replay("anthropic-thinking"), store, WEATHER)
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    [result] = messages[2].tool_results
    assert (result.name, result.content, result.is_error) == ("weather", "40 C", False)
    assert "40°C" in messages[3].text
    assert messages[3].finish_reason is FinishReason.END_TURN


async def test_the_agents_own_tool_wins_over_a_recorded_one(store):
    async def weather(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        return ToolResult("12 C and raining")

    spec = ToolSpec("weather", "mine", {"type": "object", "properties": {}})
    messages = await ask(replay("openai-tool"), store, WEATHER, [Tool(spec, weather)])
    assert messages[2].tool_results[0].content == "12 C and raining"


async def test_a_call_the_recording_never_made_gets_an_error_result():
    [add, _] = replay("anthropic-multi-tool").tools
    result = await add.run({"a": 1, "b": 1}, ToolContext("s", "toolu_not_recorded"))
    assert result.is_error and "no recorded result" in result.content


async def test_auto_driven_directly_streams_the_recording_of_the_prompt(store):
    model = replay("auto")
    assert isinstance(model, AutoReplayModel)
    messages = await ask(model, store, ADD)
    assert [r.content for m in messages for r in m.tool_results] == ["5", "6"]
    assert messages[-1].finish_reason is FinishReason.END_TURN
    assert isinstance(model.for_prompt(ADD), ReplayModel)
