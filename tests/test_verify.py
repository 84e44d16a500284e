"""``%crush verify`` without a fresh kernel: the names the cells define (hidden state), how
saved and fresh outputs are compared, the report's text, the fresh kernel's replay mode, and
bad input in one line. A real fresh kernel is in test_verify_kernel.py."""

from __future__ import annotations

import json

import pytest
from IPython.core.error import UsageError

import jupyter_crush
from jupyter_crush.notebook.defined_names import defined_names, hidden_names
from jupyter_crush.notebook.verify_report import (
    NEEDS_MODEL,
    CellRun,
    Failure,
    VerifyReport,
    comparable,
    differs,
    edited_cells,
    saved_state,
)


def names(*sources: str) -> set[str]:
    return defined_names(enumerate(sources)).names


def test_every_kind_of_binding_counts_and_local_names_do_not():
    found = names(
        "a = b, c = 1, 2\nd += 1\ne: int = 3\n(f := 4)\n[g for g in range(3)]",
        "import os.path\nimport numpy as np\nfrom math import pi, tau as t",
        "for i, (j, k) in []: pass\nwith open('x') as fh, open('y') as (p, q): pass",
        "def fn(arg):\n    local = 1\n    global shared\n    shared = arg\nclass K:\n    attr = 1",
        "try:\n    pass\nexcept Exception as err:\n    pass",
        "match m:\n    case [first, *rest]: pass\n    case {'k': v, **others}: pass\n"
        "    case str() as s: pass",
        "lambda z: z\nany(w := x for x in [1])",
    )
    assert {
        "a",
        "b",
        "c",
        "d",
        "e",
        "f",
        "os",
        "np",
        "pi",
        "t",
        "i",
        "j",
        "k",
        "fh",
        "p",
        "q",
    } <= found
    assert {"fn", "shared", "K", "err", "first", "rest", "v", "others", "s", "w"} <= found
    assert not {"g", "arg", "local", "attr", "z", "x", "tau", "path"} & found


def test_magics_and_shell_lines_are_read_without_crashing():
    found = defined_names(
        enumerate(
            [
                "%matplotlib inline\nfiles = !ls\nx = 1  # after a magic",
                "%%time\ntimed = sum(range(3))",
                "%%capture captured\nprint('quiet')",
                "%%bash\necho not python",
                "%%crush -s s\nMake `stock` for {prices}",
                "def broken(:\n    pass",
            ]
        )
    )
    assert {"files", "x", "timed", "captured"} <= found.names
    assert found.notes == ["cell 5 does not parse as Python; its names are not read"]


def test_star_imports_use_the_module_the_kernel_has_or_say_so():
    found = defined_names(enumerate(["from json import *", "from surely_not_imported import *"]))
    assert {"dumps", "loads"} <= found.names
    assert found.notes == ["cell 1 imports * from surely_not_imported: its names are not checked"]


def test_hidden_names_leave_out_ipython_underscores_and_modules():
    namespace = {"df": 1, "df_clean": 2, "_tmp": 3, "json": json, "In": [], "exit": None}
    assert hidden_names(namespace, {"df"}, ignore={"In", "exit"}) == ["df_clean"]


def stream(text: str) -> dict:
    return {"output_type": "stream", "name": "stdout", "text": text}


def result(**data: str) -> dict:
    return {"output_type": "execute_result", "data": data, "metadata": {}}


FRAME = (
    "    a   b\n0   1   2\n1   3   4\n2   5   6\n3   7   8\n4   9  10\n..  ..  ..\n9  19  20\n"
    "\n[10 rows x 2 columns]"
)


def test_outputs_compare_text_frames_by_shape_and_head_figures_by_size():
    assert differs([stream("1\n")], [stream("1\n")]) is None
    assert differs([stream("1\n")], [stream("2\n")]) == ("1", "2")
    assert differs([stream("1\n")], []) == ("1", "(nothing)")
    # A frame's rows past its head do not count; its shape does.
    html = '<table class="dataframe">'
    changed_tail = FRAME.replace("9  19  20", "9  99  99")
    assert (
        differs(
            [result(**{"text/plain": FRAME, "text/html": html})],
            [result(**{"text/plain": changed_tail, "text/html": html})],
        )
        is None
    )
    longer = FRAME.replace("[10 rows", "[11 rows")
    assert (
        differs(
            [result(**{"text/plain": FRAME, "text/html": html})],
            [result(**{"text/plain": longer, "text/html": html})],
        )
        is not None
    )
    # Figures: their size, never their pixels (the page sends only their length).
    figure = "<Figure size 640x480 with 1 Axes>"
    saved = {"output_type": "display_data", "data": {"image/png": 1234, "text/plain": figure}}
    fresh = {"output_type": "display_data", "data": {"image/png": "iVBOR...", "text/plain": figure}}
    assert differs([saved], [fresh]) is None
    bigger = {
        "output_type": "display_data",
        "data": {"image/png": "x", "text/plain": figure.replace("640", "800")},
    }
    assert differs([saved], [bigger]) == ("figure 640x480", "figure 800x480")
    # A live widget's state is the kernel's: never compared.
    widget = {"application/vnd.jupyter.widget-view+json": {"model_id": "1"}, "text/plain": "w"}
    assert comparable(result(**widget)) == ""
    # Addresses differ from run to run; a %%crush answer's status line too.
    assert comparable(result(**{"text/plain": "<Foo at 0x7f3a2b1c9d00>"})) == "<Foo at 0x…>"
    asked = "**crush** · session s · done · 3.1 s · 200 tokens\n\nBrest."
    replayed = "**crush** · session s · replayed from 2026-12-07 10:00 · 0 tokens\n\nBrest."
    assert (
        differs([result(**{"text/markdown": asked})], [result(**{"text/markdown": replayed})])
        is None
    )


def test_a_cell_whose_source_is_not_what_the_kernel_ran_is_edited():
    cells = [
        (0, {"id": "a", "source": "x = 1", "execution_count": 1}),
        (1, {"id": "b", "source": ["y = ", "2\n"], "execution_count": 2}),
        (2, {"id": "c", "source": "z = 3", "execution_count": None}),  # never ran
        (3, {"id": "d", "source": "w = 4", "execution_count": 9}),  # ran in another kernel
    ]
    ran = ["", "x = 1", "y = 1"]  # In[0] is empty, as IPython keeps it
    assert [(e.index, e.id, e.count) for e in edited_cells(cells, ran)] == [(1, "b", 2)]
    # No cell is what this kernel ran: the counts are another kernel's (a restart since).
    assert edited_cells(cells, ["", "other", "cells"]) == []
    report = VerifyReport("nb.ipynb", "file on disk", "python3", "passed")
    report.edited = edited_cells(cells, ran)
    assert "edited after it ran: cell 1 (id b) is not what this kernel ran as In[2]" in (
        report.to_text()
    )


def test_saved_state_says_how_the_cell_did_in_the_users_kernel():
    assert saved_state({"execution_count": 7, "outputs": []}) == "ran without error ([7])"
    error = {"output_type": "error", "ename": "KeyError", "evalue": "'x'"}
    assert (
        saved_state({"execution_count": 7, "outputs": [error]}) == "failed too ([7]): KeyError: 'x'"
    )
    assert saved_state({"execution_count": None}) == "not run (no execution count)"


def test_report_text_names_the_failure_and_the_hidden_name():
    report = VerifyReport("nb.ipynb", "file on disk", "python3", "failed", code_cells=3)
    report.cells = [CellRun(0, "a", 0.5, "ok"), CellRun(1, "b", 0.1, "error")]
    report.failure = Failure(
        1, "b", "NameError: name 'df_clean' is not defined", "Traceback", "ran without error ([4])"
    )
    report.hidden = ["df_clean"]
    text = report.to_text()
    assert text.splitlines()[0] == (
        "verify nb.ipynb (file on disk) in a fresh python3 kernel: failed at cell 1 · "
        "2 of 3 code cells run · 0.0 s"
    )
    assert "first failure: cell 1 (id b): NameError: name 'df_clean' is not defined" in text
    assert "  in this kernel: ran without error ([4])" in text
    assert (
        "hidden state: `df_clean` exists in this kernel but no cell defines it — deleted or "
        "renamed?"
    ) in text
    assert report.to_dict()["failure"]["index"] == 1 and not report.ok


def test_the_verify_replay_mode_refuses_what_only_the_model_could_answer(ip, crush):
    crush.config.replay = "verify"
    with pytest.raises(UsageError, match=f"^{NEEDS_MODEL} no recorded answer to this prompt$"):
        ip.run_cell_magic("crush", "--wait", "What is in {crush}?")
    with pytest.raises(UsageError, match=f"^{NEEDS_MODEL} the cell says --fresh$"):
        ip.run_cell_magic("crush", "--wait --fresh", "Anything")
    assert crush.store.list_sessions() == [] or all(
        not crush.store.list_messages(s.id) for s in crush.store.list_sessions()
    )


def test_bad_input_is_one_line(ip, tmp_path, monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as nothing:
        ip.run_line_magic("crush", "verify --wait")
    assert str(nothing.value) == (
        "%crush verify: no notebook to verify: no JupyterLab page answered and this kernel "
        "was not started for a saved notebook (JPY_SESSION_NAME); name one: "
        "%crush verify PATH.ipynb"
    )
    (tmp_path / "notes.txt").write_text("not json")
    with pytest.raises(UsageError) as not_notebook:
        ip.run_line_magic("crush", "verify notes.txt")
    assert str(not_notebook.value).startswith(
        "%crush verify: notes.txt is not a notebook (not valid JSON: "
    )
    assert "\n" not in str(not_notebook.value)
    with pytest.raises(UsageError, match=r"^%crush verify: notebook gone\.ipynb not found; give"):
        ip.run_line_magic("crush", "verify gone.ipynb")
    with pytest.raises(UsageError, match="argument --timeout: '0' is not a positive number"):
        ip.run_line_magic("crush", "verify --timeout 0 x.ipynb")


def test_a_kernelspec_that_cannot_start_is_one_line(ip, tmp_path, monkeypatch):
    specs = tmp_path / "specs" / "kernels"
    (specs / "broken").mkdir(parents=True)
    argv = [str(tmp_path / "no-such-python"), "-f", "{connection_file}"]
    (specs / "broken" / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "broken", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "specs"))
    for name, why in [
        ("broken", f"[Errno 2] No such file or directory: '{argv[0]}'"),
        (
            "absent",
            "no such kernelspec is installed (jupyter kernelspec list shows those that are)",
        ),
    ]:
        notebook = {
            "cells": [{"cell_type": "code", "source": "1", "metadata": {}, "outputs": []}],
            "metadata": {"kernelspec": {"name": name}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        (tmp_path / f"{name}.ipynb").write_text(json.dumps(notebook))
        report = ip.run_line_magic("crush", f"verify --wait {tmp_path / name}.ipynb")
        assert report.outcome == "could not start"
        assert jupyter_crush.last_verify is report  # crush.last_verify, as a notebook reads it
        assert report.to_text() == (
            f"verify {tmp_path / name}.ipynb: kernelspec {name!r} cannot start: {why}"
        )


async def test_stop_while_the_fresh_kernel_starts_kills_it_at_once(tmp_path, monkeypatch):
    import asyncio
    import sys

    import psutil

    from jupyter_crush.notebook.verify import NotebookToVerify, VerifyRun

    # A kernel that never answers: its start would wait a minute for it.
    specs = tmp_path / "specs" / "kernels" / "silent"
    specs.mkdir(parents=True)
    argv = [sys.executable, "-c", "import time; time.sleep(600)", "{connection_file}"]
    (specs / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "silent", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "specs"))
    cell = {"cell_type": "code", "source": "x = 1", "metadata": {}, "outputs": []}
    run = VerifyRun(
        NotebookToVerify([cell], tmp_path, "nb.ipynb", "file on disk", "silent"), env={}
    )
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    task = asyncio.ensure_future(run.run())
    for _ in range(300):  # the kernel's process is there
        if {p.pid for p in psutil.Process().children(recursive=True)} - before:
            break
        await asyncio.sleep(0.05)
    run.stop()
    report = await asyncio.wait_for(task, 10)
    assert report.outcome == "stopped"
    assert report.reason == "stopped before the notebook ran"
    assert {p.pid for p in psutil.Process().children(recursive=True)} == before


def test_cancel_all_stops_the_kernels_other_runs(crush):
    # The kernel's interrupt and %crush cancel --all reach a %crush verify this way.
    stopped: list[str] = []
    crush.other_runs.add(lambda: stopped.append("verify"))
    crush.cancel_all()
    assert stopped == ["verify"]
