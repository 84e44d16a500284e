"""Known secrets never leave the kernel inside a prompt: a value a ``%%crush`` cell
interpolates (``{os.environ}``, an object whose repr holds a key) and a prompt's text
attachments are redacted before the model's requests, the transcript store or the
session's export see them; the prompt's ``[redacted]`` shows the user what was left out."""

from __future__ import annotations

import json
import os

from jupyter_crush import export_session
from jupyter_crush.agent.calls import Attachment
from jupyter_crush.core.output import REDACTED
from jupyter_crush.kernel.submit import submit
from jupyter_crush.testing import ScriptedModel

PROMPT_KEY = "sk-prompt-env-4c8e1a7f3b"
PROMPT_CONFIG_KEY = "sk-prompt-config-9d2b6f0e4a"


class Client:
    """A connection object whose repr holds the key it was made with."""

    def __repr__(self) -> str:
        return f"Client(base_url='https://api.example', api_key='{PROMPT_CONFIG_KEY}')"


def sent_and_stored(crush, model) -> str:
    """Every request the model got, the store's files and the session's export."""
    crush.store.flush()
    sent = json.dumps([m.to_dict() for request in model.requests for m in request.messages])
    on_disk = b"".join(p.read_bytes() for p in crush.store.path.rglob("*.jsonl")).decode()
    exported = export_session(crush.current_session_id, store=crush.store)
    return "\n".join([sent, on_disk, exported])


def test_interpolated_values_never_carry_a_known_secret(ip, crush, monkeypatch):
    """{os.environ} holds the provider key; a client's repr holds a %config key."""
    monkeypatch.setenv("OPENAI_API_KEY", PROMPT_KEY)
    ip.run_line_magic("config", f"CrushConfig.api_keys = {{'anthropic': {PROMPT_CONFIG_KEY!r}}}")
    model = ScriptedModel(["It holds your settings."] * 4)
    crush.use_model(model)
    ip.user_ns.update(os=os, client=Client())
    for cell in ("What is in {os.environ}?", "Why does {client} fail?"):
        result = ip.run_cell(f"%%crush\n{cell}")
        assert result.error_in_exec is None, result.error_in_exec

    everything = sent_and_stored(crush, model)
    assert PROMPT_KEY not in everything and PROMPT_CONFIG_KEY not in everything
    prompts = [m.text for m in crush.store.list_messages(crush.current_session_id)][::2]
    assert f"'OPENAI_API_KEY': '{REDACTED}'" in prompts[0]
    assert prompts[1] == (
        f"Why does Client(base_url='https://api.example', api_key='{REDACTED}') fail?"
    )
    assert f"api_key='{REDACTED}'" in model.requests[-1].messages[-1].text


def test_attachments_never_carry_a_known_secret(ip, crush, monkeypatch):
    """The error %crush fix attaches, and a text attachment handed to submit."""
    monkeypatch.setenv("OPENAI_API_KEY", PROMPT_KEY)
    model = ScriptedModel(["Fixed."] * 4)
    crush.use_model(model)
    ip.run_cell("import os\nraise ValueError('bad key ' + os.environ['OPENAI_API_KEY'])")
    ip.run_line_magic("crush", "fix --wait")
    notes = Attachment("notes", f"key={PROMPT_KEY}")
    submit(crush, "Read the notes.", attachments=[notes], wait=True)

    everything = sent_and_stored(crush, model)
    assert PROMPT_KEY not in everything
    assert f"key={REDACTED}" in everything and f"bad key {REDACTED}" in everything
