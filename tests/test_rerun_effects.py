"""Replaying turns whose tools had effects outside the kernel: a recorded write or edit is
answered from its record while the file still holds what the turn left in it (a hash kept
with the call says so), and the replay stops naming the file otherwise."""

from __future__ import annotations

import hashlib

import pytest
from test_rerun import run, run_all_again

from jupyter_crush.testing import Reply, ScriptedModel, ToolCall

NOTES = "# Notes\n\nSales fell in March.\n"
WRITE = ToolCall("write", {"path": "report/notes.md", "content": NOTES})
EDIT = ToolCall("edit", {"path": "report/notes.md", "old_string": "March", "new_string": "May"})


@pytest.fixture
def model(crush) -> ScriptedModel:
    model = ScriptedModel()
    crush.use_model(model)
    return model


@pytest.fixture
def workspace(ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the file tools' workspace: the kernel's folder
    run(ip, "%config CrushConfig.allowed_tools = ['write', 'edit']")
    return tmp_path


def write_and_edit(ip, model) -> None:
    """A turn that writes report/notes.md, then edits it."""
    model.add(Reply(tool_calls=[WRITE]), Reply(tool_calls=[EDIT]), "Noted.")
    run(ip, "%%crush -s notes\nNote the sales drop")


def file_results(crush):
    return [
        r
        for m in crush.store.list_messages(crush.current_session_id)
        for r in m.tool_results
        if r.name in ("write", "edit")
    ]


def test_write_and_edit_keep_the_hash_of_the_text_they_left(ip, crush, model, workspace):
    write_and_edit(ip, model)
    written, edited = file_results(crush)
    after_write = hashlib.sha256(NOTES.encode()).hexdigest()
    on_disk = hashlib.sha256((workspace / "report/notes.md").read_bytes()).hexdigest()
    assert (written.metadata["path"], written.metadata["sha256"]) == (
        "report/notes.md",
        after_write,
    )
    assert (edited.metadata["path"], edited.metadata["sha256"]) == ("report/notes.md", on_disk)


def test_a_turn_whose_file_is_unchanged_replays_without_writing_it(ip, crush, model, workspace):
    write_and_edit(ip, model)
    notes = workspace / "report/notes.md"
    written_at = notes.stat().st_mtime_ns

    run_all_again(crush)
    run(ip, "%%crush -s notes\nNote the sales drop")
    view = crush.last_view
    assert view.phase == "done" and view.answer_markdown == "Noted."
    assert len(model.requests) == 3  # the recorded turn's three steps, none asked again
    assert notes.stat().st_mtime_ns == written_at  # not written again
    status = view.status_text()
    expected = "recorded results used, not run again: write report/notes.md, edit report/notes.md"
    assert expected in status
    replayed = file_results(crush)[2:]
    assert [r.metadata["replay"] for r in replayed] == [{"from_record": True, "not_run": True}] * 2


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda notes: notes.write_text(NOTES + "A line of my own.\n"), "changed since"),
        (lambda notes: notes.unlink(), "no longer exists"),
    ],
    ids=["edited", "removed"],
)
def test_a_turn_whose_file_changed_stops_naming_the_file(ip, crush, model, workspace, change, said):
    write_and_edit(ip, model)
    change(workspace / "report/notes.md")

    run_all_again(crush)
    run(ip, "%%crush -s notes\nNote the sales drop")
    view = crush.last_view
    assert view.phase == "error" and len(model.requests) == 3
    status = view.status_text()
    assert "Replay stopped before the recorded write call: report/notes.md " + said in status
    assert "%%crush --fresh" in status
    assert len(file_results(crush)) == 2  # the replay answered no call


def test_strict_replay_stops_before_a_write_even_when_its_file_is_unchanged(
    ip, crush, model, workspace
):
    write_and_edit(ip, model)

    run_all_again(crush)
    run(ip, "%crush replay strict")
    run(ip, "%%crush -s notes\nNote the sales drop")
    view = crush.last_view
    assert view.phase == "error"
    assert "Replay stopped before the recorded write call: strict replay" in view.status_text()


def test_a_record_without_the_hash_stops_saying_the_file_cannot_be_checked(
    ip, crush, model, workspace
):
    write_and_edit(ip, model)
    for message in crush.store.list_messages(crush.current_session_id):
        for result in message.tool_results:
            result.metadata.pop("sha256", None)  # as written before the hash was kept
        if message.tool_results:
            crush.store.update_message(message)

    run_all_again(crush)
    run(ip, "%%crush -s notes\nNote the sales drop")
    status = crush.last_view.status_text()
    assert "its record keeps no hash of report/notes.md to check the file against" in status
