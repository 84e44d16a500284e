"""Replaying recorded %%crush turns on an InteractiveShell with a ScriptedModel: what replays,
what asks again, what is refused, and what the transcript says. A "Run All" in a new kernel
is a fresh replay chain (``crush.rerun = Rerun()``) over the same store; the real-kernel and
headless runs are in test_rerun_kernel.py."""

from __future__ import annotations

import pandas as pd
import pytest
from IPython.core.error import UsageError

from jupyter_crush.core.message import Role
from jupyter_crush.kernel.rerun import Rerun
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall


def run(ip, cell: str):
    result = ip.run_cell(cell)
    for error in (result.error_before_exec, result.error_in_exec):
        if error is not None:
            raise error
    return result.result


def run_all_again(crush) -> None:
    """What a new kernel running the notebook from the top starts from."""
    crush.rerun = Rerun()
    crush.current_session_id = None


def turns(crush):
    """(role, provider, text, metadata keys) of the current session."""
    return [
        (str(m.role), m.provider, m.text, sorted(m.metadata))
        for m in crush.store.list_messages(crush.current_session_id)
    ]


@pytest.fixture
def model(crush):
    model = ScriptedModel()
    crush.use_model(model)
    return model


def test_an_unchanged_cell_replays_with_no_request(ip, crush, model):
    model.add("Bonjour!", "Ciao!")
    run(ip, "%%crush -s demo\nSay hi in French")
    run(ip, "%%crush -s demo\nNow in Italian")
    first = crush.last_view.status_text()
    assert len(model.requests) == 2 and "replayed" not in first

    run_all_again(crush)
    run(ip, "%%crush -s demo\nSay hi in French")
    assert crush.last_view.answer_markdown == "Bonjour!"
    status = crush.last_view.status_text()
    assert "replayed from 20" in status and "0 tokens · $0" in status
    run(ip, "%%crush -s demo\nNow in Italian")
    assert crush.last_view.answer_markdown == "Ciao!"
    assert len(model.requests) == 2  # nothing asked

    records = turns(crush)
    assert [r[:3] for r in records[-4:]] == [
        ("user", "", "Say hi in French"),
        ("assistant", "recorded", "Bonjour!"),
        ("user", "", "Now in Italian"),
        ("assistant", "recorded", "Ciao!"),
    ]
    assert records[-2][3] == ["fingerprint", "replay_of", "replayed_from"]
    original = crush.store.list_messages(crush.current_session_id)[2]
    replayed = crush.store.list_messages(crush.current_session_id)[-2]
    assert replayed.metadata["replay_of"] == original.id
    assert replayed.metadata["fingerprint"] == original.metadata["fingerprint"]


def test_python_calls_run_again_so_later_cells_see_the_same_state(ip, crush, model):
    code = "made = [n * 2 for n in range(3)]\nprint(made)"
    model.add(Reply(tool_calls=[ToolCall("python", {"code": code})]), "Made `made`.")
    run(ip, "%config CrushConfig.allowed_tools = ['python']")
    run(ip, "%%crush -s demo\nMake a list")
    assert ip.user_ns["made"] == [0, 2, 4]
    del ip.user_ns["made"]

    run_all_again(crush)
    run(ip, "%%crush -s demo\nMake a list")
    assert ip.user_ns["made"] == [0, 2, 4]
    assert len(model.requests) == 2
    assert "diverged" not in crush.last_view.status_text()
    tool = [m for m in crush.store.list_messages(crush.current_session_id) if m.role is Role.TOOL]
    assert tool[-1].tool_results[0].content == tool[0].tool_results[0].content


def test_a_python_call_that_prints_something_else_marks_the_cell_diverged(ip, crush, model):
    model.add(Reply(tool_calls=[ToolCall("python", {"code": "print(base * 2)"})]), "Done.")
    run(ip, "%config CrushConfig.allowed_tools = ['python']")
    ip.user_ns["base"] = 1
    run(ip, "%%crush -s demo\nDouble it")
    ip.user_ns["base"] = 5  # not interpolated: the prompt cannot see it

    run_all_again(crush)
    run(ip, "%%crush -s demo\nDouble it")
    assert "diverged: python call 1 printed something else" in crush.last_view.status_text()
    results = crush.store.list_messages(crush.current_session_id)[-2].tool_results
    assert results[0].content.strip() == "10"
    assert results[0].metadata["replay"] == {"diverged": True, "recorded": "2"}


def test_a_changed_value_asks_again_and_says_what_changed(ip, crush, model):
    model.add("First.", "Second.", "Third.", "Fourth.")
    ip.user_ns["df"] = pd.DataFrame({"n": [1, 2]})
    run(ip, "%%crush -s demo\nDescribe {df}")
    run(ip, "%%crush -s demo\nAnd then?")

    run_all_again(crush)
    ip.user_ns["df"] = pd.DataFrame({"n": [1, 3]})
    run(ip, "%%crush -s demo\nDescribe {df}")
    assert "df changed since the recorded answer" in crush.last_view.status_text()
    assert crush.last_view.answer_markdown == "Third."
    # The next cell of the session asks again too: what it follows changed.
    run(ip, "%%crush -s demo\nAnd then?")
    assert crush.last_view.answer_markdown == "Fourth."
    assert "an earlier turn of the session changed" in crush.last_view.status_text()
    assert len(model.requests) == 4


def test_strict_refuses_a_changed_cell_naming_it_and_what_changed(ip, crush, model):
    model.add("First.")
    ip.user_ns["df"] = pd.DataFrame({"n": [1, 2]})
    run(ip, "%%crush -s demo\nDescribe {df}")

    run_all_again(crush)
    run(ip, "%crush replay strict")
    run(ip, "%%crush -s demo\nDescribe {df}")  # unchanged: replays under strict too
    assert len(model.requests) == 1

    run_all_again(crush)
    ip.user_ns["df"] = pd.DataFrame({"n": [9]})
    with pytest.raises(UsageError) as refused:
        run(ip, "%%crush -s demo\nDescribe {df}")
    message = str(refused.value)
    assert message.startswith("Replay is strict and cell ") and "“Describe {df}”" in message
    assert "df changed" in message and "--fresh" in message
    with pytest.raises(UsageError, match="no recorded answer to this prompt"):
        run(ip, "%%crush -s demo\nA prompt never asked")
    assert len(model.requests) == 1


def test_fresh_and_replay_off_always_ask(ip, crush, model):
    model.add("One.", "Two.", "Three.")
    run(ip, "%%crush -s demo\nSay something")
    run_all_again(crush)
    run(ip, "%%crush -s demo --fresh\nSay something")
    assert crush.last_view.answer_markdown == "Two."
    run_all_again(crush)
    run(ip, "%crush replay off")
    run(ip, "%%crush -s demo\nSay something")
    assert crush.last_view.answer_markdown == "Three."
    assert len(model.requests) == 3
    assert crush.config.replay == "off"


def test_failed_and_canceled_turns_are_never_replayed(ip, crush, model):
    model.add(Reply(text="partial", error=RuntimeError("provider exploded")), "Recovered.")
    run(ip, "%%crush -s demo\nExplain")
    assert crush.last_view.phase == "error"
    run_all_again(crush)
    run(ip, "%%crush -s demo\nExplain")
    assert crush.last_view.answer_markdown == "Recovered."
    assert len(model.requests) == 2

    # A turn the user canceled (headless: a permission denied ends it canceled).
    model.add(Reply(tool_calls=[ToolCall("python", {"code": "1"})]), "Ran it.")
    run(ip, "%%crush -s other\nRun code")
    assert crush.last_view.phase == "canceled"
    run_all_again(crush)
    run(ip, "%config CrushConfig.allowed_tools = ['python']")
    run(ip, "%%crush -s other\nRun code")
    assert len(model.requests) == 4  # asked again, not replayed


def test_a_recorded_bash_call_answers_from_its_record_and_is_not_run_again(
    ip, crush, model, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the workspace the shell runs in
    model.add(
        Reply(text="Running it.", tool_calls=[ToolCall("bash", {"command": "echo ran >> log"})]),
        "Logged it.",
    )
    run(ip, "%config CrushConfig.allowed_tools = ['bash']")
    run(ip, "%%crush -s demo\nLog a line in a shell")
    assert (tmp_path / "log").read_text() == "ran\n"

    run_all_again(crush)
    run(ip, "%%crush -s demo\nLog a line in a shell")
    view = crush.last_view
    assert view.phase == "done" and view.answer_markdown == "Running it.\n\nLogged it."
    assert len(model.requests) == 2  # nothing asked
    assert (tmp_path / "log").read_text() == "ran\n"  # the command did not run again
    assert "recorded result used, not run again: bash" in view.status_text()
    results = [m for m in crush.store.list_messages(crush.current_session_id) if m.tool_results]
    first, replayed = results[0].tool_results[0], results[-1].tool_results[0]
    assert replayed.content == first.content
    assert replayed.metadata["replay"] == {"from_record": True, "not_run": True}


def test_strict_replay_stops_before_a_recorded_call_with_effects_outside_the_kernel(
    ip, crush, model
):
    model.add(
        Reply(text="Listing.", tool_calls=[ToolCall("bash", {"command": "echo hi"})]),
        "Wrote it.",
    )
    run(ip, "%config CrushConfig.allowed_tools = ['bash']")
    run(ip, "%%crush -s demo\nSay hi in a shell")
    assert crush.last_view.phase == "done"

    run_all_again(crush)
    run(ip, "%crush replay strict")
    run(ip, "%%crush -s demo\nSay hi in a shell")
    view = crush.last_view
    assert view.phase == "error" and len(model.requests) == 2
    assert "Replay stopped before the recorded bash call: strict replay" in view.status_text()


def test_replay_command_shows_and_sets_the_mode(ip, crush, capsys):
    run(ip, "%crush replay")
    assert "Replay: auto" in capsys.readouterr().out
    run(ip, "%crush replay on")
    assert crush.config.replay == "auto"
    with pytest.raises(UsageError, match="Usage: %crush replay"):
        run(ip, "%crush replay sometimes")


def test_a_replay_inserts_no_cell_again(ip, crush, model):
    model.add(
        "Here:\n```python\nprint(6 * 7)\n```",
        Reply(tool_calls=[ToolCall("insert_cell", {"code": "total = 1 + 1"})]),
        "Proposed it below.",
    )
    run(ip, "%config CrushConfig.allowed_tools = ['insert_cell']")
    run(ip, "%%crush -s demo -f code\nwrite code")
    assert ip.rl_next_input == "print(6 * 7)"
    ip.rl_next_input = None
    run(ip, "%%crush -s demo\npropose a cell")
    assert ip.rl_next_input == "total = 1 + 1"
    ip.rl_next_input = None

    run_all_again(crush)
    run(ip, "%%crush -s demo -f code\nwrite code")
    run(ip, "%%crush -s demo\npropose a cell")
    assert len(model.requests) == 3
    assert ip.rl_next_input is None  # the cells are already in the notebook
    results = crush.store.list_messages(crush.current_session_id)[-2].tool_results
    assert results[0].metadata["replay"] == {"from_record": True}
