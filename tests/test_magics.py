"""%%crush / %crush on an InteractiveShell: argument parsing, sessions, config, bad input.

Without a kernel there is no front end, so every %%crush cell waits for its answer; the
real-kernel behaviour (returning at once, Stop, interrupt) is in test_kernel.py.
"""

from __future__ import annotations

import re

import pytest
from IPython.core.error import UsageError
from support.bounded import within

from jupyter_crush.core.model import ToolSpec
from jupyter_crush.core.tools import Tool, ToolResult
from jupyter_crush.kernel.config import (
    ANTHROPIC_DEFAULT,
    OPENAI_DEFAULT,
    REPLAY_DEFAULT,
    CrushConfig,
    default_model_name,
)
from jupyter_crush.kernel.display import extract_code
from jupyter_crush.kernel.submit import submit
from jupyter_crush.magics import CrushMagics, current
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall


def run(ip, cell: str):
    result = ip.run_cell(cell)
    if result.error_in_exec is not None:
        raise result.error_in_exec
    if result.error_before_exec is not None:
        raise result.error_before_exec
    return result.result


def messages(crush, session_id=None):
    return crush.store.list_messages(session_id or crush.current_session_id)


# -- loading and config --------------------------------------------------------------------


def test_load_registers_line_and_cell_magics(ip):
    magics = ip.magics_manager.magics
    assert "crush" in magics["line"] and "crush" in magics["cell"]


def test_config_magic_sets_traits(ip, crush):
    run(ip, "%config CrushConfig.max_steps = 3")
    run(ip, "%config CrushConfig.redraw_rate = 10.0")
    assert crush.config.max_steps == 3
    assert crush.config.redraw_rate == 10.0
    with pytest.raises(Exception, match="wait"):
        crush.config.wait = "sometimes"


def test_config_from_shell_config(ip):
    ip.config.CrushConfig.max_steps = 7
    try:
        assert CrushConfig(parent=ip).max_steps == 7
    finally:
        del ip.config.CrushConfig["max_steps"]


def test_data_dir_is_fixed_once_the_store_is_open(ip, crush, tmp_path, caplog):
    run(ip, f"%config CrushConfig.data_dir = {str(tmp_path / 'other')!r}")  # not open yet
    assert crush.store.path == tmp_path / "other"
    run(ip, f"%config CrushConfig.data_dir = {str(tmp_path / 'third')!r}")
    assert "cannot change once the transcript store is open" in caplog.text  # %config logs it
    assert crush.config.data_dir == str(tmp_path / "other")


def test_system_prompt_from_config_reaches_the_model(ip, crush):
    model = ScriptedModel(["ok", "ok"])
    crush.use_model(model)
    run(ip, "%%crush\nfirst")
    run(ip, "%config CrushConfig.system_prompt = 'Answer in French.'")
    run(ip, "%%crush\nsecond")
    assert model.requests[1].system == "Answer in French."


def test_default_model_follows_the_keys():
    assert default_model_name({}) == REPLAY_DEFAULT
    assert default_model_name({"ANTHROPIC_API_KEY": "k"}) == ANTHROPIC_DEFAULT
    assert default_model_name({"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"}) == OPENAI_DEFAULT
    assert default_model_name({"CRUSH_MODEL": "ollama:llama3.2", "OPENAI_API_KEY": "k"}) == (
        "ollama:llama3.2"
    )


def test_data_dir_defaults_to_env_then_cwd(monkeypatch, tmp_path):
    monkeypatch.setenv("CRUSH_DATA_DIR", str(tmp_path / "x"))
    assert CrushConfig().data_dir == str(tmp_path / "x")
    monkeypatch.delenv("CRUSH_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert CrushConfig().data_dir == str(tmp_path / ".crush")


def test_one_crush_per_shell(ip, crush):
    assert current() is crush


# -- running ---------------------------------------------------------------------------------


def test_cell_runs_and_records_the_turn(ip, crush):
    run(ip, "%%crush\nWhat is six times seven?")
    turn = messages(crush)
    assert [str(m.role) for m in turn] == ["user", "assistant"]
    assert turn[0].text == "What is six times seven?"
    assert turn[1].text == "The answer is 42."
    assert crush.last_view.phase == "done"


def test_prompt_is_interpolated_and_literal_braces_survive(ip, crush):
    run(ip, "n = 6")
    run(ip, '%%crush\nTimes {n}? Keep {"a": {n}} and {{n}} and {undefined}')
    assert messages(crush)[0].text == 'Times 6? Keep {"a": 6} and {n} and {undefined}'


def test_session_by_title_is_created_then_reused(ip, crush):
    run(ip, "%%crush -s analysis\nfirst")
    first = crush.current_session_id
    run(ip, "%%crush --new\nelsewhere")
    assert crush.current_session_id != first
    run(ip, "%%crush -s analysis\nsecond")
    assert crush.current_session_id == first
    assert [m.text for m in messages(crush) if str(m.role) == "user"] == ["first", "second"]


def test_new_session_and_use_by_prefix(ip, crush, capsys):
    run(ip, "%%crush\none")
    first = crush.current_session_id
    run(ip, "%crush new fresh")
    assert crush.current_session_id != first
    run(ip, f"%crush use {first[:8]}")
    assert crush.current_session_id == first
    capsys.readouterr()
    run(ip, "%crush sessions")
    listing = capsys.readouterr().out
    assert f"* {first[:8]}" in listing and "fresh" in listing
    run(ip, "%crush history")
    history = capsys.readouterr().out
    assert "one" in history and "The answer is 42." in history


def test_per_cell_model_overrides_the_default(ip, crush):
    run(ip, "%%crush -m replay:openai-simple\nhi")
    assert messages(crush)[-1].provider == "replay"
    # "hi" is not what the recording answered, and the status line says so.
    assert (
        "replay:openai-simple · replaying a recorded answer to a different prompt: "
        "“Say hi in Portuguese”" in crush.last_view.status_text()
    )


def test_offline_default_replays_the_recording_of_the_prompt_asked(ip):
    crush = current()
    ip.user_ns.update(a=2, b=3)
    run(ip, "%%crush\nAdd and multiply the number {a} and {b}")
    assert crush.config.model == "replay:auto"
    assert (
        "replay:anthropic-multi-tool · replaying a recorded answer to: "
        "“Add and multiply the number 2 and 3” · done" in crush.last_view.status_text()
    )
    # The recorded tools answered with the recorded results, so the answer fits the turn.
    turn = messages(crush)
    assert [m.model for m in turn if m.role == "assistant"] == ["anthropic-multi-tool"] * 2
    assert [r.content for m in turn for r in m.tool_results] == ["5", "6"]
    assert "5" in turn[-1].text and "6" in turn[-1].text

    run(ip, "%%crush\nWhat is a DataFrame?")  # no recording answers it: the line says so
    assert (
        "replay:anthropic-thinking · replaying a recorded answer to a different prompt: "
        "“What's the weather in Florence, Italy?”" in crush.last_view.status_text()
    )


def test_a_cell_model_works_when_the_default_does_not_resolve(ip, monkeypatch):
    monkeypatch.setenv("CRUSH_MODEL", "openai:gpt-4o")  # no OPENAI_API_KEY in these tests
    crush = current()
    run(ip, "%%crush -m replay:openai-simple\nhi")
    assert messages(crush)[-1].text == "Olá!"


def test_format_code_puts_the_code_in_the_next_cell(ip, crush):
    crush.use_model(ScriptedModel(["Here:\n```python\nprint(6 * 7)\n```\nand\n```\nx = 1\n```"]))
    run(ip, "%%crush -f code\nwrite code")
    assert ip.rl_next_input == "print(6 * 7)\n\nx = 1"


def test_format_text_shows_the_answer_verbatim(ip, crush):
    crush.use_model(ScriptedModel(["**not bold**"]))
    run(ip, "%%crush -f text\nanswer")
    state = crush.last_view.snapshot()["snapshot"]
    assert (state["format"], state["answer"]) == ("text", "**not bold**")
    assert "<pre>**not bold**</pre>" in crush.last_view.to_markdown()


def test_model_errors_end_the_turn_with_the_reason(ip, crush):
    crush.use_model(ScriptedModel([Reply(error=RuntimeError("provider exploded"))]))
    run(ip, "%%crush\nhi")
    view = crush.last_view
    assert view.phase == "error"
    assert "provider exploded" in view.status_text()
    assert str(messages(crush)[-1].finish_reason) == "error"


def test_cancel_all_and_session_commands_accept_their_forms(ip, crush):
    run(ip, "%%crush -s s1\nhi")
    run(ip, "%crush cancel")
    run(ip, "%crush cancel s1")
    run(ip, "%crush cancel --all")
    # A cancel on an idle session never poisons the next prompt.
    run(ip, "%%crush -s s1\nagain")
    assert str(messages(crush)[-1].finish_reason) == "end_turn"


def test_model_command_shows_and_sets(ip, crush, capsys):
    run(ip, "%crush model")
    assert "scripted" in capsys.readouterr().out
    run(ip, "%crush model replay:openai-simple")
    assert crush.config.model == "replay:openai-simple"
    assert crush.model_override is None


# -- bad input: one clear line, nothing recorded ---------------------------------------------


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("%%crush --bogus\nhi", "unrecognized arguments: --bogus"),
        ("%%crush -f html\nhi", "invalid choice"),
        ("%%crush --wait --no-wait\nhi", "contradict"),
        ("%%crush\n  \n ", "prompt is empty"),
        ("%%crush -m nosuchprovider:x\nhi", "unknown provider"),
        ("%%crush -m gpt-4o\nhi", "provider:model"),
        ("%%crush -m openai:gpt-4o\nhi", "OPENAI_API_KEY"),
        ("%%crush -m anthropic:claude-sonnet-4-20250514\nhi", "ANTHROPIC_API_KEY"),
        ("%%crush -s " + "a" * 32 + "\nhi", "No session"),
        ("%crush", "%crush help"),
        ("%crush frobnicate", "Unknown command 'frobnicate'"),
        ("%crush use nosuch", "No session 'nosuch'"),
        ("%crush history nosuch", "No session 'nosuch'"),
        ("%crush cancel nosuch", "No session 'nosuch'"),
        ("%crush cancel a b", "Usage: %crush cancel"),
        ("%crush use", "Usage: %crush use SESSION"),
        ("%crush sessions extra", "takes no arguments"),
        ("%crush model nosuchprovider:x", "unknown provider"),
        ('%crush use "unclosed', "No closing quotation"),
    ],
)
def test_bad_input_is_a_usage_error_and_records_nothing(ip, crush, cell, message):
    with pytest.raises(UsageError, match=message) as error:
        run(ip, cell)
    assert "\n" not in str(error.value)
    assert crush.store.list_sessions() == []


def test_secrets_never_reach_the_error(ip, crush, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value-123")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    # Resolving succeeds with a key; the request then fails, and the error is recorded.
    run(ip, "%%crush -m openai:gpt-4o\nhi")
    assert crush.last_view.phase == "error"
    assert "sk-secret-value-123" not in crush.last_view.to_markdown()
    assert all("sk-secret-value-123" not in m.text for m in messages(crush))


# -- help ------------------------------------------------------------------------------------


def test_help_texts(ip, capsys):
    run(ip, "%crush help")
    out = capsys.readouterr().out
    for command in ("sessions", "history", "cancel", "use", "new", "model", "help"):
        assert f"%crush {command}" in out
    assert "%%crush [-s SESSION]" in out  # and the cell form
    from jupyter_crush.commands.registry import COMMANDS

    for registered in COMMANDS.values():  # a usage as long as the column still has a gap
        assert re.search(f"{re.escape(registered.usage)}  +{re.escape(registered.summary)}", out)
    assert "%crush sessions" in (CrushMagics.crush_line.__doc__ or "")
    cell_doc = CrushMagics.crush_cell.__doc__ or ""
    for option in ("-s SESSION", "--new", "-m MODEL", "--wait", "--yolo", "-f"):
        assert option in cell_doc


def test_registered_command_runs_and_is_listed_in_help(ip, crush, capsys, monkeypatch):
    from jupyter_crush.commands import registry as commands

    monkeypatch.setattr(commands, "COMMANDS", dict(commands.COMMANDS))
    seen = []

    @commands.command("echo-test", "%crush echo-test WORDS", "say the words back")
    def echo(crush_arg, args):
        seen.append((crush_arg, args))

    monkeypatch.setattr("jupyter_crush.magics.COMMANDS", commands.COMMANDS)
    run(ip, "%crush echo-test one 'two words'")
    assert seen == [(crush, ["one", "two words"])]
    run(ip, "%crush help")
    out = capsys.readouterr().out
    assert "%crush echo-test WORDS" in out and "say the words back" in out
    assert out.index("%crush echo-test") < out.index("SESSION is a session id")
    with pytest.raises(ValueError, match="registered twice"):
        commands.command("echo-test", "u", "s")(echo)


def test_extract_code_takes_python_blocks_only():
    answer = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```\ny = 2\n```\n"
    assert extract_code(answer) == "x = 1\n\ny = 2"
    assert extract_code("no code here") == ""


# -- provider settings from CrushConfig ------------------------------------------------------


def test_config_keys_and_base_urls_reach_the_provider(ip, capsys):
    run(ip, "%config CrushConfig.api_keys = {'openai': 'sk-test-not-shown'}")
    run(ip, "%config CrushConfig.base_urls = {'openai': 'http://127.0.0.1:9/v1'}")
    run(ip, "%config CrushConfig.max_retries = 0")
    model = current().resolve_model("openai:gpt-4o")
    assert model.config.base_url == "http://127.0.0.1:9/v1"
    assert model.config.api_key == "sk-test-not-shown"
    assert model.settings.max_retries == 0
    capsys.readouterr()
    run(ip, "%config CrushConfig")
    shown = capsys.readouterr().out
    assert "api_keys" in shown and "'openai': '***'" in shown
    assert "sk-test-not-shown" not in shown


def test_changing_provider_settings_resolves_the_model_again(ip):
    run(ip, "%config CrushConfig.api_keys = {'openai': 'first'}")
    first = current().resolve_model("openai:gpt-4o")
    assert current().resolve_model("openai:gpt-4o") is first
    run(ip, "%config CrushConfig.api_keys = {'openai': 'second'}")
    assert current().resolve_model("openai:gpt-4o").config.api_key == "second"


def test_api_keys_must_be_strings(ip):
    with pytest.raises(Exception, match="API key"):
        current().config.api_keys = {"openai": 42}


def test_the_built_in_system_prompt_describes_the_notebook_and_its_tools(ip, crush):
    run(ip, "%%crush\nhi")
    system = crush.model_override.requests[-1].system
    assert "Jupyter notebook kernel" in system
    assert "Tools available: python, variables" in system
    run(ip, "%config CrushConfig.system_prompt = 'Answer in French.'")
    run(ip, "%%crush\nhi again")
    assert crush.model_override.requests[-1].system == "Answer in French."


def test_history_budget_is_a_setting(ip, crush):
    run(ip, "%config CrushConfig.history_chars = 1000")
    run(ip, "%%crush\nhi")
    assert crush.agent.context.history_chars == 1000


def test_allowed_tools_changed_after_the_first_prompt_apply_to_the_next(ip, tmp_path):

    ran = []

    async def write(arguments, context):
        ran.append(arguments)
        return ToolResult("written")

    crush = current()
    crush.tools = [Tool(ToolSpec("write", "Write.", {"type": "object"}), write, changes_state=True)]
    crush.use_model(ScriptedModel([Reply(tool_calls=[ToolCall("write", {"n": 1})]), "done"] * 2))
    run(ip, "%config CrushConfig.allowed_tools = ['write']")
    run(ip, "%%crush\nwrite once")
    assert ran == [{"n": 1}]
    run(ip, "%config CrushConfig.allowed_tools = []")
    run(ip, "%%crush\nwrite again")
    assert ran == [{"n": 1}]  # headless and no longer allowed: denied
    last = messages(crush)[-1]
    assert last.finish_reason == "canceled"
    assert last.finish.message.startswith("Permission denied for write: ")
    assert "headless" in last.finish.message  # the policy's reason reaches the transcript


async def test_a_prompt_folded_into_a_replayed_turn_names_the_recording_that_answers(ip):
    crush = current()
    first = submit(
        crush,
        "Add and multiply the number 2 and 3",
        session_ref="fold",
        new=True,
        model_name="replay:anthropic-multi-tool",
        wait=False,
    )
    # Queued behind a turn that calls tools: it joins that turn after the tool results.
    second = submit(crush, "Say hi in Portuguese", session_ref="fold", wait=False)
    await within(first.wait())
    await within(second.wait())
    assert second.phase == "done"
    # Its answer is the running recording's, and its status line says so.
    assert (
        "replay:anthropic-multi-tool · replaying a recorded answer to a different prompt: "
        "“Add and multiply the number 2 and 3”" in second.status_text()
    )
