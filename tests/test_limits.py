"""A request carries bounded texts and at most MAX_IMAGES images; the store keeps all."""

from __future__ import annotations

import io

from PIL import Image

from jupyter_crush.core.images import image_part
from jupyter_crush.core.limits import MAX_IMAGES, MAX_PART_CHARS, capped
from jupyter_crush.core.message import Message, Role, TextPart, ToolCallPart, ToolResultPart
from jupyter_crush.providers.anthropic import build_messages as anthropic_messages
from jupyter_crush.providers.openai import build_messages as openai_messages

FIVE_MB = "0123456789abcdef" * (5 * 1024 * 1024 // 16)


def test_long_texts_and_tool_results_keep_head_and_tail_with_the_count():
    prompt = Message("s", Role.USER, [TextPart("HEAD" + FIVE_MB + "TAIL")])
    result = Message("s", Role.TOOL, [ToolResultPart("c1", "notebook", "head" + FIVE_MB + "tail")])
    short = Message("s", Role.USER, [TextPart("fine as it is")])
    sent_prompt, sent_result, sent_short = capped([prompt, result, short])
    text = sent_prompt.parts[0].text
    assert len(text) < MAX_PART_CHARS + 100
    assert text.startswith("HEAD") and text.endswith("TAIL")
    omitted = len(FIVE_MB) + 8 - MAX_PART_CHARS
    assert f"[text truncated: {omitted} characters omitted]" in text
    content = sent_result.tool_results[0].content
    assert content.startswith("head") and content.endswith("tail")
    assert f"[output truncated: {omitted} characters omitted]" in content
    assert sent_short is short  # untouched messages are not copied
    assert len(prompt.parts[0].text) == len(FIVE_MB) + 8  # the transcript's own is whole


def test_only_the_newest_images_are_sent_the_older_are_described():
    def picture(n: int):
        out = io.BytesIO()
        Image.new("RGB", (10 + n, 10), (n, 0, 0)).save(out, "PNG")
        return image_part(out.getvalue(), "image/png", f"Figure {n}")

    figures = [picture(n) for n in range(MAX_IMAGES + 2)]
    prompt = Message("s", Role.USER, [TextPart("compare"), figures[0]])
    results = Message(
        "s", Role.TOOL, [ToolResultPart("c1", "python", "plotted", images=figures[1:])]
    )
    sent_prompt, sent_results = capped([prompt, results])
    assert sent_prompt.parts[1].text.startswith("\n[image Figure 0: 10x10 PNG")
    result = sent_results.tool_results[0]
    assert result.images == figures[2:]
    assert result.content == (
        "plotted\n[image Figure 1: 11x10 PNG, 1 KB] (left out: only the newest 20 images are sent)"
    )
    # Both wire formats go through the same cap.
    call = Message("s", Role.ASSISTANT, [ToolCallPart("c1", "python", "{}")])
    wire = anthropic_messages([prompt, call, results])
    assert [b["type"] for b in wire[0]["content"]] == ["text", "text"]
    assert sum(b["type"] == "image" for b in wire[2]["content"][0]["content"]) == MAX_IMAGES
    assert openai_messages([prompt, call, results], None)[0]["content"] == (
        "compare\n[image Figure 0: 10x10 PNG, 1 KB] (left out: only the newest 20 images are sent)"
    )
