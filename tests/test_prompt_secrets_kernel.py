"""A real kernel with the user's OpenAI key, talking to a local OpenAI-compatible server: a
``%%crush`` cell asking about ``{os.environ}`` sends the key only in the request's
Authorization header, never in its body, the transcript store or the notebook's outputs."""

from __future__ import annotations

import json

import pytest
from support.kernel_harness import SETUP, Kernel

pytestmark = pytest.mark.slow

KEY = "sk-user-key-7b3e9d1f5a2c"


def test_the_key_in_an_interpolated_environ_stays_in_the_kernel(tmp_path, openai_server):
    k = Kernel(tmp_path, env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": f"{openai_server.url}/v1"})
    try:
        k.run(SETUP)
        k.run("%config CrushConfig.titles = False")  # the server holds one recorded answer
        k.run("import os")
        k.run("%%crush\nWhat is in {os.environ}?")
        k.run("await crush.last_view.wait()")
        assert k.value("crush.last_view.phase") == "done", k.value("crush.last_view.status_text()")
        redacted = k.value(
            "\"'OPENAI_API_KEY': '[redacted]'\" in "
            "crush.store.list_messages(crush.current_session_id)[0].text"
        )
        k.run("crush.store.flush()")
        store_bytes = b"".join(p.read_bytes() for p in tmp_path.rglob("*.jsonl"))
        outputs = json.dumps([m["content"] for m in k.iopub])
    finally:
        k.shutdown()
    assert redacted
    (request,) = openai_server.requests
    assert request.headers["authorization"] == f"Bearer {KEY}"  # where the key belongs
    assert KEY.encode() not in request.body
    assert b"'OPENAI_API_KEY': '[redacted]'" in request.body
    assert KEY.encode() not in store_bytes
    assert KEY not in outputs
