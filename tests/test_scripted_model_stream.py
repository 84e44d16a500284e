"""ScriptedModel as a load: what it holds while it streams a long reply."""

from __future__ import annotations

import tracemalloc

from jupyter_crush.core.message import Message, Role
from jupyter_crush.core.model import TextDelta
from jupyter_crush.testing import ScriptedModel, iter_tokens, tokenize


def test_iter_tokens_gives_the_tokens_of_tokenize():
    text = "  Hello, world!\n\n  two  spaces\tand a tab "
    assert list(iter_tokens(text)) == tokenize(text)
    assert "".join(iter_tokens(text)) == text


async def test_a_long_reply_is_streamed_without_a_list_of_its_tokens():
    # A list of a long reply's tokens costs the loop tens of ms to make as the stream starts
    # and to free as a Stop ends it; the stream takes them one at a time instead.
    reply = "word " * 200_000
    model = ScriptedModel([reply])
    stream = model.stream([Message("s1", Role.USER, "go")])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        first = await anext(stream)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert first == TextDelta("word")
    assert held < 100_000  # a list of the tokens alone is 1.6 MB of pointers
    rest = [event.text async for event in stream if isinstance(event, TextDelta)]
    assert "".join(["word", *rest]) == reply
