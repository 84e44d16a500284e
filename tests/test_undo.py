"""``%crush undo``: a turn's changes to the kernel's namespace, to objects changed in place and to
files are taken back, one turn at a time, and the report says what was and wasn't restored.
In-process on the test IPython shell with a ScriptedModel whose turns call the real tools."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError
from support.bounded import until, within
from test_rerun import run

from jupyter_crush.core.message import Message, Role, TextPart
from jupyter_crush.kernel.snapshot import touched_names
from jupyter_crush.kernel.submit import submit
from jupyter_crush.providers.anthropic import build_messages as anthropic_messages
from jupyter_crush.providers.history import conversation
from jupyter_crush.store.transcript import TranscriptStore
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall


@pytest.fixture
def model(crush, ip):
    model = ScriptedModel()
    crush.use_model(model)
    run(ip, "%config CrushConfig.allowed_tools = ['python', 'write', 'edit']")
    return model


def turn(ip, model, code: str, session: str = "demo") -> None:
    """One turn of ``session`` whose model runs ``code`` with the python tool."""
    model.add(Reply(tool_calls=[ToolCall("python", {"code": code})]), "Done.")
    run(ip, f"%%crush -s {session}\nDo it")


def undo(ip, capsys, session: str = "") -> str:
    capsys.readouterr()
    run(ip, f"%crush undo {session}".rstrip())
    return capsys.readouterr().out


def test_undo_rebinds_restores_and_removes_the_names_a_turn_changed(ip, model, capsys):
    ip.user_ns.update(rebound=1, deleted="kept")
    ip.user_ns.pop("created", None)
    turn(ip, model, "rebound = 2\ndel deleted\ncreated = [1]")
    assert ip.user_ns["rebound"] == 2 and "deleted" not in ip.user_ns

    report = undo(ip, capsys)
    assert ip.user_ns["rebound"] == 1
    assert ip.user_ns["deleted"] == "kept"
    assert "created" not in ip.user_ns
    assert "Undid the turn 'Do it' of session 'demo':" in report
    assert "variables rebound to their previous values: rebound" in report
    assert "variables removed (the turn created them): created" in report
    assert "variables restored (the turn deleted them): deleted" in report


def test_undo_restores_a_dataframe_changed_in_place_for_every_reference(ip, model, capsys):
    frame = pd.DataFrame({"x": [1, 2, 3], "y": [1.5, None, 3.5], "s": ["a", "b", "c"]})
    before = frame.copy(deep=True)
    ip.user_ns.update(df=frame, alias=frame)
    turn(
        ip, model, "df.pop('x')\ndf['y'] = df['y'].fillna(0).astype('int64')\ndf.loc[0, 's'] = 'z'"
    )
    assert list(frame.columns) == ["y", "s"]

    report = undo(ip, capsys)
    assert ip.user_ns["df"] is frame and ip.user_ns["alias"] is frame  # restored in place
    pd.testing.assert_frame_equal(frame, before)
    assert frame.dtypes.to_dict() == before.dtypes.to_dict()
    assert "objects restored in place: df" in report


def test_undo_restores_a_list_appended_to_and_its_aliases(ip, model, capsys):
    rows = [1, 2, 3]
    ip.user_ns.update(rows=rows, same=rows)
    turn(ip, model, "rows.append(4)\nrows[0] = -1")
    report = undo(ip, capsys)
    assert ip.user_ns["rows"] is rows and rows == [1, 2, 3]
    assert ip.user_ns["same"] == [1, 2, 3]
    assert "objects restored in place: rows" in report


def test_an_object_over_the_copy_limit_is_named_as_not_restored(ip, model, capsys):
    big = np.arange(1000)
    ip.user_ns["big"] = big
    run(ip, "%config CrushConfig.undo_copy_limit = 1000")
    turn(ip, model, "big[0] = -1\nsmall = 1")
    report = undo(ip, capsys)
    assert big[0] == -1  # no copy was kept
    assert "changed, not restored: big (numpy.ndarray, 7.8 KB: over the 1000 B undo" in report
    assert "small" in report


def test_undo_restores_a_file_written_and_one_edited(ip, model, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_bytes(b"alpha\r\nbeta\n")
    model.add(
        Reply(
            tool_calls=[
                ToolCall("write", {"path": "new.txt", "content": "fresh"}),
                ToolCall("edit", {"path": "notes.txt", "old_string": "beta", "new_string": "B"}),
                ToolCall("edit", {"path": "notes.txt", "old_string": "B", "new_string": "C"}),
            ]
        ),
        "Done.",
    )
    run(ip, "%%crush -s files\nWrite and edit")
    assert (tmp_path / "new.txt").exists()
    assert (tmp_path / "notes.txt").read_bytes() == b"alpha\r\nC\n"

    report = undo(ip, capsys)
    assert not (tmp_path / "new.txt").exists()
    assert (tmp_path / "notes.txt").read_bytes() == b"alpha\r\nbeta\n"  # the first change's
    assert "files restored: notes.txt" in report
    assert "files removed (the turn created them): new.txt" in report


def test_a_second_undo_undoes_the_turn_before_then_nothing_is_left(ip, model, capsys):
    ip.user_ns.pop("counter", None)
    turn(ip, model, "counter = 1")
    turn(ip, model, "counter = 2")
    model.add("Nothing to run.")  # a turn that changes nothing is passed over
    run(ip, "%%crush -s demo\nJust talk")

    undo(ip, capsys)
    assert ip.user_ns["counter"] == 1
    undo(ip, capsys)
    assert "counter" not in ip.user_ns
    assert undo(ip, capsys).strip() == (
        "Nothing to undo in session 'demo': no turn this kernel ran is left that changed something"
    )


def test_the_transcript_keeps_the_undo_and_marks_its_turn(ip, crush, model, capsys):
    import jupyter_crush as crush_api

    ip.user_ns["value"] = 1
    turn(ip, model, "value = 2")
    report = undo(ip, capsys).strip()
    messages = crush.store.list_messages(crush.current_session_id)
    prompt, event = messages[0], messages[-1]
    assert event.role is Role.SYSTEM and event.text == report
    assert event.metadata == {"event": "undo", "turn": prompt.id}
    assert prompt.metadata["undone_by"] == event.id
    history = crush_api.history("demo")
    assert list(history["role"])[-1] == "system"
    assert list(history["text"])[-1] == report


def test_bad_undo_requests_say_so_in_one_line_and_change_nothing(ip, crush, model, capsys):
    with pytest.raises(UsageError, match="No session 'nosuch'"):
        run(ip, "%crush undo nosuch")
    model.add("Hello.")
    run(ip, "%%crush -s quiet\nHi")
    assert undo(ip, capsys, "quiet").strip() == (
        "Nothing to undo in session 'quiet': no turn this kernel ran is left that changed something"
    )
    other = crush.store.create_session("elsewhere")
    assert undo(ip, capsys, "elsewhere").strip() == (
        "Nothing to undo in session 'elsewhere': this kernel has run none of its turns "
        "(undo takes back turns run here)"
    )
    assert len(crush.store.list_messages(other.id)) == 0


def test_undo_of_a_session_another_kernel_runs_is_refused(ip, crush, model, capsys, tmp_path):
    ip.user_ns["mine"] = 1
    turn(ip, model, "mine = 2", session="shared")
    session_id = crush.current_session_id
    elsewhere = TranscriptStore(tmp_path / "store")  # another kernel's, still open
    try:
        elsewhere.add_message(Message(session_id, Role.USER, [TextPart("their turn")]))
        assert undo(ip, capsys, "shared").strip() == (
            "Session 'shared' is used by another kernel, which ran its latest turn: undo it "
            "from that kernel's notebook"
        )
        assert ip.user_ns["mine"] == 2
    finally:
        elsewhere.close()
    assert "Undid the turn 'Do it'" in undo(ip, capsys, "shared")  # that kernel is gone
    assert ip.user_ns["mine"] == 1


async def test_undo_asked_while_a_turn_runs_waits_for_its_end(ip, crush, capsys):
    model = ScriptedModel([Reply(tool_calls=[ToolCall("python", {"code": "held = 2"})]), "Done."])
    gate = model.gate(step=1, after_tokens=1)
    crush.use_model(model)
    crush.config.allowed_tools = ["python"]
    ip.user_ns["held"] = 1
    view = submit(crush, "Change held", session_ref="busy", new=True, wait=False)
    await within(gate.reached())
    assert ip.user_ns["held"] == 2

    capsys.readouterr()
    said: list[str] = []
    assert crush.undo.request(view.session_id, said.append) is True  # queued
    assert ip.user_ns["held"] == 2 and said == []
    gate.release()
    await within(view.wait())
    assert ip.user_ns["held"] == 1
    assert said and said[0].startswith("Undid the turn 'Change held'")


async def test_the_run_view_ends_with_what_changed_and_its_undo_button_undoes_it(ip, crush):
    model = ScriptedModel([Reply(tool_calls=[ToolCall("python", {"code": "shown = 2"})]), "Done."])
    crush.use_model(model)
    crush.config.allowed_tools = ["python"]
    ip.user_ns["shown"] = 1
    view = submit(crush, "Change shown", session_ref="view", new=True, wait=False)
    await within(view.wait())
    assert view.snapshot()["snapshot"]["changes"] == {"summary": "changed: 1 variable", "note": ""}

    click = {"event": "click", "target": "undo"}
    view._on_message(view.widget, click, [])  # the page's Undo button
    await until(lambda: view.snapshot()["snapshot"]["changes"]["note"])
    assert ip.user_ns["shown"] == 1
    note = view.snapshot()["snapshot"]["changes"]["note"]
    assert note.startswith("Undid the turn 'Change shown' of session 'view':")
    ip.user_ns["shown"] = 3
    view._on_message(view.widget, click, [])  # one undo per turn's view
    await asyncio.sleep(0)
    assert ip.user_ns["shown"] == 3


async def test_a_turn_that_changed_nothing_shows_no_undo(ip, crush):
    crush.use_model(ScriptedModel(["Just words."]))
    view = submit(crush, "Talk", session_ref="talk", new=True, wait=False)
    await within(view.wait())
    assert view.snapshot()["snapshot"]["changes"] == {"summary": "", "note": ""}


def test_the_names_code_can_touch_come_from_its_syntax_tree():
    code = """\
import numpy as np, os.path
from math import tau as t
x = 1
del y
z += 1
df.drop(columns=["a"], inplace=True)
rows[0] = 2
items.append(3)
a.b.c().d()
print(only_read)
def f():
    global g
    g = 1
for i in range(3): pass
!ls
"""
    assert touched_names(code) == {
        *("np", "os", "t", "x", "y", "z", "df", "rows", "items", "a", "f", "g", "i"),
        "get_ipython",  # !ls, as the shell runs it
    }
    assert touched_names("def broken(:") == set()


def test_an_object_undo_cannot_copy_is_named_as_not_restored(ip, model, capsys, tmp_path):
    handle = open(tmp_path / "log.txt", "w")  # noqa: SIM115
    ip.user_ns["handle"] = handle
    try:
        turn(ip, model, "handle.write('line')")
        assert "changed, not restored: handle (_io.TextIOWrapper: undo cannot copy it)" in undo(
            ip, capsys
        )
    finally:
        handle.close()


def test_the_next_request_tells_the_model_its_turn_was_undone(ip, crush, model, capsys):
    ip.user_ns["value"] = 1
    turn(ip, model, "value = 2")
    report = undo(ip, capsys).strip()
    model.add("Understood.")
    run(ip, "%%crush -s demo\nWhat is value now?")
    request = conversation(model.requests[-1].messages)
    note, prompt = request[-2], request[-1]
    assert note.role is Role.USER and prompt.text == "What is value now?"
    assert note.text == f"[Not a request: the user ran %crush undo on the turn before.]\n{report}"
    # Anthropic merges the note into the prompt's user turn; the roles still alternate.
    sent = anthropic_messages(model.requests[-1].messages)
    assert [m["role"] for m in sent[-2:]] == ["assistant", "user"]
    assert [b["text"] for b in sent[-1]["content"]] == [note.text, "What is value now?"]


def test_only_the_newest_turns_are_kept_for_undo(ip, crush, monkeypatch, capsys, model):
    monkeypatch.setattr("jupyter_crush.kernel.undo.KEPT_TURNS", 2)
    ip.user_ns["step"] = 0
    for n in (1, 2, 3):
        turn(ip, model, f"step = {n}")
    undo(ip, capsys)
    undo(ip, capsys)
    assert ip.user_ns["step"] == 1  # the first turn's log was let go, with its old value
    assert undo(ip, capsys).startswith("Nothing to undo in session 'demo'")


def test_an_undo_the_store_fails_says_so_in_one_line(ip, crush, model, capsys, monkeypatch):
    turn(ip, model, "broken = 1")

    def refuse(session_id):
        raise OSError("the disk went away")

    monkeypatch.setattr(crush.store, "get_session", refuse)
    assert undo(ip, capsys).strip() == "Undo failed: OSError: the disk went away"
