"""Message.append_text / append_reasoning extend the last part in place: the result is the
concatenation, and a string someone else holds is never changed."""

from __future__ import annotations

from jupyter_crush.core.message import Message, ReasoningPart, Role, TextPart


def test_appended_text_is_the_concatenation_and_held_strings_stay_as_they_were():
    message = Message("s", Role.ASSISTANT)
    held = []
    for i in range(200):
        message.append_text(f"w{i} ")
        held.append(message.text)  # the part's own string, kept by a reader
    assert message.parts == [TextPart("".join(f"w{i} " for i in range(200)))]
    assert held == ["".join(f"w{i} " for i in range(n + 1)) for n in range(200)]


def test_reasoning_appends_to_its_open_part_and_text_starts_a_new_one():
    message = Message("s", Role.ASSISTANT)
    message.append_reasoning("think", signature="sig")
    kept = message.parts[0].text
    message.append_reasoning("ing", signature="-more")
    message.append_text("answer")
    message.append_text("!")
    reasoning = message.parts[0]
    assert isinstance(reasoning, ReasoningPart)
    assert (reasoning.text, reasoning.signature, kept) == ("thinking", "sig-more", "think")
    assert message.parts[1:] == [TextPart("answer!")]
