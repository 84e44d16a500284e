"""OpenAI chat-completion streams with chosen content, for the local replay server.

The bytes have the shape of the recorded ``OpenAICommon--openai-gpt-4o--tool_streaming``
exchange in ``jupyter_crush/recordings/`` (the same chunk fields, the role chunk first, the
arguments streamed in pieces, a usage chunk, ``[DONE]``); only the text, the tool call and
the token counts are ours, so the official SDK parses a real-shaped stream that answers the
prompts of a test's notebook.
"""

from __future__ import annotations

import json
from typing import Any

from support.replay_server import Step

_MODEL = "gpt-4o-2024-08-06"


def _chunk(n: int, delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> str:
    body = {
        "id": f"chatcmpl-test{n}",
        "object": "chat.completion.chunk",
        "created": 1782321896,
        "model": _MODEL,
        "service_tier": "default",
        "system_fingerprint": "fp_e6c46296c9",
        "choices": []
        if usage
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }
    return f"data: {json.dumps(body)}\n\n"


def openai_step(
    n: int, text: str = "", tool: tuple[str, dict[str, Any]] | None = None, tokens: int = 50
) -> Step:
    """One streamed answer: ``text`` in pieces, or a call of ``tool`` (name, arguments)."""
    events = []
    if tool is None:
        events.append(_chunk(n, {"role": "assistant", "content": ""}))
        events += [_chunk(n, {"content": text[i : i + 8]}) for i in range(0, len(text), 8)]
        finish = "stop"
    else:
        name, arguments = tool
        start = {"index": 0, "id": f"call_test{n}", "type": "function"}
        start["function"] = {"name": name, "arguments": ""}
        events.append(_chunk(n, {"role": "assistant", "content": None, "tool_calls": [start]}))
        encoded = json.dumps(arguments)
        pieces = [encoded[i : i + 16] for i in range(0, len(encoded), 16)]
        events += [
            _chunk(n, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in pieces
        ]
        finish = "tool_calls"
    events.append(_chunk(n, {}, finish))
    usage = {"prompt_tokens": tokens, "completion_tokens": tokens // 5}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    events.append(_chunk(n, {}, usage=usage))
    events.append("data: [DONE]\n\n")
    return Step(body="".join(events))
