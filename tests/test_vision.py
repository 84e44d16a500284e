"""Images in provider requests: the official SDKs against recorded streams on 127.0.0.1.

The request bodies the SDKs send must carry images in each API's own shape: OpenAI chat
``image_url`` parts with a data URL, Anthropic ``image`` blocks with a base64 source, in
the user's message or inside the tool result that produced them.
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from support.replay_server import ReplayServer, recording_steps
from test_providers import model_for_recording, run_step, tool_results, user

from jupyter_crush.core.images import image_part
from jupyter_crush.core.message import Message, Role, TextPart
from jupyter_crush.providers import resolve_model
from jupyter_crush.providers.replay import RECORDINGS_DIR, SHORT_NAMES
from jupyter_crush.providers.vision import accepts_images

RECORDED = {name: RECORDINGS_DIR / f"{file}.yaml" for name, file in SHORT_NAMES.items()}


def figure_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 240), (10, 120, 200)).save(out, "PNG")
    return out.getvalue()


def with_image(text: str, label: str = "{fig}") -> tuple[Message, str]:
    part = image_part(figure_png(), "image/png", label)
    return Message("s", Role.USER, [TextPart(text), part]), base64.b64encode(part.read()).decode()


async def tool_step_with_figure(recording: str):
    """Two steps of a recorded tool exchange, the tool's result carrying a figure: the second
    request's messages, the first step, and the figure's base64."""
    path = RECORDED[recording]
    async with ReplayServer(recording_steps(path)) as server:
        model = model_for_recording(path, server.url)
        history = [user("What's the weather in Florence, Italy?")]
        first = await run_step(model, history)
        results = tool_results(first, "Figure 1 drawn")
        part = image_part(figure_png(), "image/png", "Figure 1")
        results.tool_results[0].images.append(part)
        await run_step(model, [*history, first.message, results])
        messages = server.requests[1].json()["messages"]
    return messages, first.message.tool_calls[0], base64.b64encode(part.read()).decode()


async def test_openai_tool_result_images_follow_the_tool_message_in_a_user_message():
    messages, call, b64 = await tool_step_with_figure("openai-tool")
    assert messages[3] == {"role": "tool", "tool_call_id": call.id, "content": "Figure 1 drawn"}
    assert messages[4] == {
        "role": "user",
        "content": [
            {"type": "text", "text": f"Images from the {call.name} call {call.id}:"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
        ],
    }


def openai_image(b64: str) -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}


def anthropic_image(b64: str) -> dict:
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": b64},
        "cache_control": {"type": "ephemeral"},  # the newest block: a cache breakpoint
    }


@pytest.mark.parametrize(
    ("recording", "position", "image_shape"),
    [("openai-simple", 1, openai_image), ("anthropic-simple", 0, anthropic_image)],
)
async def test_a_prompt_image_is_sent_in_the_apis_own_shape(recording, position, image_shape):
    async with ReplayServer(recording_steps(RECORDED[recording])) as server:
        model = model_for_recording(RECORDED[recording], server.url)
        prompt, b64 = with_image("What does this plot show?")
        await run_step(model, [prompt], tools=())
        sent = server.requests[0].json()["messages"][position]
    assert sent == {
        "role": "user",
        "content": [{"type": "text", "text": "What does this plot show?"}, image_shape(b64)],
    }


async def test_anthropic_tool_result_carries_its_image_block():
    messages, call, b64 = await tool_step_with_figure("anthropic-tool")
    assert messages[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": call.id,
        "content": [
            {"type": "text", "text": "Figure 1 drawn"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64}},
        ],
        "is_error": False,
        "cache_control": {"type": "ephemeral"},
    }


async def test_a_model_without_image_input_gets_a_text_note():
    path = RECORDED["groq-tool"]  # kimi-k2 on an OpenAI-compatible server: text only
    async with ReplayServer(recording_steps(path)) as server:
        model = model_for_recording(path, server.url)
        assert not model.accepts_images
        prompt, _ = with_image("What does this plot show?")
        await run_step(model, [prompt])
        sent = server.requests[0].json()["messages"][1]
    assert sent == {
        "role": "user",
        "content": "What does this plot show?\n[image {fig}: 320x240 PNG, 1 KB] "
        "(not shown: this model does not take images)",
    }


def test_a_stored_image_whose_file_is_gone_is_a_note_not_a_failed_request(tmp_path):
    from jupyter_crush.providers.openai import build_messages

    part = image_part(figure_png(), "image/png", "Figure 2")
    part.data, part.directory = None, tmp_path  # as read back from a store that lost the file
    messages = build_messages([Message("s", Role.USER, [TextPart("look"), part])], None)
    assert messages[0]["content"] == (
        "look\n[image Figure 2: 320x240 PNG, 1 KB] (not shown: its file is missing from the "
        "transcript store)"
    )


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-sonnet-4-20250514", True),
        ("claude-3-5-haiku-latest", True),
        ("claude-2.1", False),
        ("gpt-4o", True),
        ("gpt-4.1-mini", True),
        ("gpt-5", True),
        ("o4-mini", True),
        ("o3-mini", False),
        ("gpt-3.5-turbo", False),
        ("llama3.1", False),
        ("llava:13b", True),
        ("qwen2.5-vl:7b", True),
        ("gemma3:1b", False),
        ("moonshotai/kimi-k2-instruct", False),
    ],
)
def test_which_models_take_images(model, expected):
    assert accepts_images(model) is expected


def test_the_setting_overrides_the_name_rule():
    from jupyter_crush.providers import ProviderSettings

    settings = ProviderSettings(
        crush_config=False, image_input=True, base_urls={"ollama": "http://127.0.0.1:9/v1"}
    )
    assert resolve_model("ollama:my-finetune", settings=settings).accepts_images
    settings.image_input = False
    assert not resolve_model("ollama:llava", settings=settings).accepts_images
    from jupyter_crush.kernel.config import CrushConfig

    assert CrushConfig(image_input=False).provider_settings().image_input is False
    assert CrushConfig().provider_settings().image_input is None
