"""The agent tool from a %%crush cell: the kernel's agent offers it, the child session shows
in crush.history(), %crush history and %crush sessions linked to its call, the run view's
status line counts the child's tokens, and CrushConfig.agent_model picks the child's model.
"""

from __future__ import annotations

from test_agent_tool import ASK, READ, TASK
from test_magics import run

import jupyter_crush
from jupyter_crush.core.message import Role
from jupyter_crush.testing import ScriptedModel


def sub_agent_cell(ip, crush, tmp_path, monkeypatch, *replies):
    monkeypatch.chdir(tmp_path)  # the file tools' folder, read when the agent is made
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    model = ScriptedModel(replies or [ASK, READ, "Columns a and b.", "It has a and b."])
    crush.use_model(model)
    run(ip, "%%crush --new\nwhat is in data.csv?")
    parent = crush.current_session_id
    (child,) = [s for s in crush.store.list_sessions() if s.parent_session_id == parent]
    return model, parent, child


def test_the_child_session_is_linked_in_history_and_the_session_list(
    ip, crush, tmp_path, monkeypatch, capsys
):
    model, parent, child = sub_agent_cell(ip, crush, tmp_path, monkeypatch)
    assert "agent" in {t.name for t in model.requests[0].tools}
    call_id = crush.store.list_messages(parent)[1].tool_calls[0].id
    frame = jupyter_crush.history()
    linked = frame[frame.session == child.id]
    assert set(linked.parent_session) == {parent} and set(linked.parent_tool_call) == {call_id}
    assert set(frame[frame.session == parent].parent_session) == {""}
    assert linked.text.iloc[0] == TASK
    capsys.readouterr()
    run(ip, "%crush history")
    shown = capsys.readouterr().out
    assert "  tool call agent " in shown
    assert f"    sub-agent session {child.id[:8]}: %crush history {child.id[:8]}" in shown
    run(ip, f"%crush history {child.id[:8]}")
    shown = capsys.readouterr().out
    assert f"sub-agent of session {parent[:8]}, tool call {call_id}" in shown.splitlines()[0]
    assert "Columns a and b." in shown
    run(ip, "%crush sessions")
    (line,) = [line for line in capsys.readouterr().out.splitlines() if child.id[:8] in line]
    assert f"sub-agent of {parent[:8]}" in line
    sessions = jupyter_crush.sessions()
    assert list(sessions[sessions.session == child.id].parent_tool_call) == [call_id]


def test_the_status_line_counts_the_childs_tokens(ip, crush, tmp_path, monkeypatch):
    _, parent, child = sub_agent_cell(ip, crush, tmp_path, monkeypatch)
    view = crush.last_view
    both = crush.store.get_session(parent).usage + crush.store.get_session(child.id).usage
    assert view.usage == both
    assert f"{both.total_tokens} tokens" in view.status_text()
    (row,) = list(view.tool_rows())
    assert (row.name, row.label) == ("agent", TASK.splitlines()[0])
    assert row.state.startswith("sub-agent done")


def test_agent_model_answers_the_child(ip, crush, tmp_path, monkeypatch):
    run(ip, "%config CrushConfig.agent_model = 'replay:openai-simple'")
    _, parent, child = sub_agent_cell(ip, crush, tmp_path, monkeypatch, ASK, "It has a and b.")
    answers = [m for m in crush.store.list_messages(child.id) if m.role is Role.ASSISTANT]
    assert {m.provider for m in answers} == {"replay"}
    parents = [m for m in crush.store.list_messages(parent) if m.role is Role.ASSISTANT]
    assert {m.provider for m in parents} == {"scripted"}


def test_a_replayed_cell_takes_the_sub_agents_recorded_answer(ip, crush, tmp_path, monkeypatch):
    from test_rerun import run_all_again

    model, _, _ = sub_agent_cell(ip, crush, tmp_path, monkeypatch)
    run_all_again(crush)
    run(ip, "%crush replay strict")  # a sub-agent only reads: strict replays it too
    run(ip, "%%crush --new\nwhat is in data.csv?")
    view = crush.last_view
    assert view.phase == "done" and len(model.requests) == 4  # nothing asked again
    assert "not run again" not in view.status_text()
    assert len([s for s in crush.store.list_sessions() if s.parent_session_id]) == 1
    results = [
        r for m in crush.store.list_messages(crush.current_session_id) for r in m.tool_results
    ]
    assert [r.content for r in results] == ["Columns a and b."]


def test_the_sub_agent_reads_the_projects_context_files(ip, crush, tmp_path, monkeypatch):
    (tmp_path / "AGENTS.md").write_text("Dates in this project are ISO 8601.")
    model, _, _ = sub_agent_cell(ip, crush, tmp_path, monkeypatch)
    child_system = model.requests[1].system
    assert child_system.startswith("You are a sub-agent of crush")
    assert "Dates in this project are ISO 8601." in child_system
