"""Every secret the extension knows stays in the kernel: keys from the environment, from
``%config CrushConfig.api_keys``, from ``crush.json`` (keys, headers, credentials in a base
URL) are redacted from everything tools capture — python output, a python error, bash
output, a file shown — before the store, the model's requests or the cell see it."""

from __future__ import annotations

import json

import pytest
from support.bounded import within

from jupyter_crush import FinishReason, SessionAgent, SessionAgentCall
from jupyter_crush.core.output import REDACTED, redact
from jupyter_crush.core.secrets import remember_headers, remember_url
from jupyter_crush.kernel.config import CrushConfig
from jupyter_crush.providers.config import load_crush_config
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall
from jupyter_crush.tools import default_tools
from jupyter_crush.tools.permissions import PermissionPolicy
from jupyter_crush.view.base import RunLabels, RunView

ENV_SECRET = "env-token-5f1c9a7e3d"
CONFIG_KEY = "sk-config-8b2e4f6a1c"
JSON_KEY = "sk-crushjson-3d7a9c1e"
HEADER_TOKEN = "hdr-token-6e2b8d4f0a"
URL_PASSWORD = "url-pass-1a9f3c7e5b"
CONFIG_URL_PASSWORD = "cfg-url-pass-7c3e9a1f"
SECRETS = {
    "environment": ENV_SECRET,
    "%config": CONFIG_KEY,
    "crush.json key": JSON_KEY,
    "crush.json header": HEADER_TOKEN,
    "base-url password": URL_PASSWORD,
    "%config base_urls password": CONFIG_URL_PASSWORD,
}


@pytest.fixture
def configured(tmp_path, monkeypatch):
    """The secrets set the ways a user sets them."""
    monkeypatch.setenv("MY_SERVICE_TOKEN", ENV_SECRET)
    CrushConfig(  # what %config CrushConfig.api_keys = ... (and base_urls) does
        api_keys={"openai": CONFIG_KEY},
        base_urls={"compat": f"http://me:{CONFIG_URL_PASSWORD}@127.0.0.1:9/v1"},
    )
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # the user's own crush.json
    crush_json = tmp_path / "crush" / "crush.json"
    crush_json.parent.mkdir()
    crush_json.write_text(
        json.dumps(
            {
                "providers": {
                    "corp": {
                        "type": "openai-compat",
                        "base_url": f"http://analyst:{URL_PASSWORD}@127.0.0.1:9/v1",
                        "api_key": JSON_KEY,
                        "extra_headers": {"Authorization": f"Bearer {HEADER_TOKEN}"},
                    }
                }
            }
        )
    )
    load_crush_config(crush_json)


def leaks(text: str) -> list[str]:
    return [source for source, value in SECRETS.items() if value in text]


async def test_no_secret_reaches_the_store_the_requests_or_the_cell(
    configured, shell, store, tmp_path
):
    everything = " ".join(SECRETS.values())
    (tmp_path / "notes.txt").write_text(f"credentials: {everything}\n")
    shell.user_ns["everything"] = everything
    model = ScriptedModel(
        [
            Reply(tool_calls=[ToolCall("python", {"code": "print(everything)"})]),
            Reply(tool_calls=[ToolCall("python", {"code": "raise ValueError(everything)"})]),
            Reply(tool_calls=[ToolCall("bash", {"command": "cat notes.txt"})]),
            Reply(tool_calls=[ToolCall("view", {"path": "notes.txt"})]),
            "Done.",
        ]
    )
    tools = default_tools(shell, tmp_path)
    agent = SessionAgent(
        model, store, tools=tools, permissions=PermissionPolicy(None, yolo=True, tools=tools)
    )
    view = RunView(RunLabels("s", "scripted"), on_stop=lambda: None)
    session = store.create_session()
    result = await within(agent.run(SessionAgentCall(session.id, "show me", observer=view)))
    assert result.reason is FinishReason.END_TURN
    results = [r.content for m in store.list_messages(session.id) for r in m.tool_results]
    assert len(results) == 4 and all(REDACTED in r for r in results), results

    store.flush()
    on_disk = b"".join(p.read_bytes() for p in store.path.rglob("*.jsonl")).decode()
    assert leaks(on_disk) == []
    sent = json.dumps([m.to_dict() for request in model.requests for m in request.messages])
    assert leaks(sent) == []
    cell = json.dumps(view.static_bundle()) + view.to_text()
    assert leaks(cell) == []


def test_header_and_url_credentials_are_redacted_in_their_bare_form():
    remember_headers({"X-Key": "Token abcdefgh12345"})
    remember_url("https://bob:hunter2-long-pw@example.invalid/v1?api_key=query-key-123456")
    text = redact("abcdefgh12345 hunter2-long-pw query-key-123456 bob")
    assert text == f"{REDACTED} {REDACTED} {REDACTED} bob"
