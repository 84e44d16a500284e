"""What ``prepare`` does before a prompt is accepted, one rule per test.

Settings changed with ``%config`` after the agent was made apply to the next prompt; a cell
continues the current session unless it asks for a new one; a folder's untrusted crush.json is
said at the prompt; a damaged journal stops the prompt with one line before anything starts.
"""

from __future__ import annotations

import json

import pytest
from IPython.core.error import UsageError

from jupyter_crush.core.message import Message, Role, TextPart
from jupyter_crush.kernel.prepare import prepare
from jupyter_crush.providers.trust import TRUST_ENV
from jupyter_crush.store.transcript import TranscriptStore
from jupyter_crush.testing import ScriptedModel


def test_settings_changed_with_config_after_the_first_prompt_apply_to_the_next(ip, crush):
    first = prepare(crush, "first")
    assert first.agent.max_steps != 3 and first.agent.titles
    ip.run_line_magic("config", "CrushConfig.max_steps = 3")
    ip.run_line_magic("config", "CrushConfig.titles = False")
    ip.run_line_magic("config", "CrushConfig.title_model = 'replay:anthropic-multi-tool'")
    again = prepare(crush, "second")
    assert again.agent is first.agent  # the same agent, brought in line with the settings
    assert again.agent.max_steps == 3
    assert again.agent.titles is False
    assert again.agent.title_model is crush.resolve_model("replay:anthropic-multi-tool")


def test_a_prompt_continues_the_current_session_unless_it_asks_for_a_new_one(crush):
    first = prepare(crush, "first")
    assert prepare(crush, "second").session.id == first.session.id
    fresh = prepare(crush, "third", new=True).session.id
    assert fresh != first.session.id
    assert crush.current_session_id == fresh


def test_an_untrusted_folder_file_is_said_at_the_prompt(crush, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "crush.json").write_text(
        json.dumps({"providers": {"openai": {"base_url": "http://127.0.0.1:9/v1"}}})
    )
    monkeypatch.chdir(folder)
    prepare(crush, "hi")
    said = capsys.readouterr().out
    assert "crush.json is not trusted" in said and "providers.openai.base_url" in said


def test_a_damaged_journal_stops_the_prompt_with_one_line_before_it_starts(ip, tmp_path):
    from jupyter_crush.magics import current

    with TranscriptStore(tmp_path / "store") as store:
        session = store.create_session(title="analysis")
        store.add_message(Message(session.id, Role.USER, [TextPart("one")]))
        journal = store.journal_path(session.id)
    journal.write_bytes(journal.read_bytes() + b"#garbage#\n")
    crush = current()
    crush.use_model(ScriptedModel(["never asked"]))
    with pytest.raises(UsageError) as refused:
        prepare(crush, "hi", session_ref=session.id)
    assert f"corrupted transcript file {journal}" in str(refused.value)
    assert "\n" not in str(refused.value)
