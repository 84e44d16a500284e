"""``%crush verify`` in real kernels: the user's kernel (with the extension) starts a fresh
kernel of the notebook's kernelspec (a throwaway one here, found through JUPYTER_PATH as any
installed kernelspec is) and runs the notebook's file in it. A cell that depends on a deleted
cell's variable fails and the variable is named as hidden state; a notebook with %%crush cells
replays them without a model request; a cell that hangs times out; Stop ends the run; the
agent's verify tool returns the report. Every fresh kernel is gone when verify returns."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from nbclient import NotebookClient
from support.kernel_harness import KERNEL_NAME, Kernel, kernel_env, kernel_manager, view_ops
from support.openai_chunks import openai_step
from support.replay_server import serving

from jupyter_crush.agent.records import TOOL_CANCELED

pytestmark = pytest.mark.slow

#: Leaves no name of its own (an underscore name is no hidden state).
SETUP = "%load_ext jupyter_crush\nfrom jupyter_crush.magics import current as _current"


def notebook_file(folder: Path, cells: list[nbformat.NotebookNode], name: str = "nb.ipynb") -> Path:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "t", "language": "python"}
    path = folder / name
    nbformat.write(nb, path)
    return path


def ran(source: str, count: int, *outputs: dict) -> nbformat.NotebookNode:
    """A code cell as saved after running it in the user's kernel."""
    cell = nbformat.v4.new_code_cell(source, execution_count=count)
    cell.outputs = [nbformat.from_dict(o) for o in outputs]
    return cell


def stdout(text: str) -> dict:
    return {"output_type": "stream", "name": "stdout", "text": text}


def user_kernel(folder: Path, notebook: Path, **env: str) -> Kernel:
    """The user's kernel of ``notebook``, as Jupyter starts it, and able to find the
    throwaway kernelspec the notebook names."""
    kernel_manager(folder / "specs")  # writes the kernelspec
    env = {"JPY_SESSION_NAME": str(notebook), "JUPYTER_PATH": str(folder / "specs"), **env}
    kernel = Kernel(folder, env=env)
    kernel.run(SETUP)
    return kernel


def processes() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def report_of(kernel: Kernel) -> dict:
    return kernel.value("_current().last_verify.to_dict()")


def test_a_cell_using_a_deleted_cells_variable_fails_and_the_variable_is_named(tmp_path):
    # The user ran three cells, deleted the middle one, then edited the first without
    # running it again: `total` still works here.
    first = "prices = [3.5, 4.0, 2.5]\nprint(len(prices))"
    notebook = notebook_file(
        tmp_path,
        [
            ran(first.replace("2.5]", "2.5, 1.0]"), 2, stdout("3\n")),
            ran("total = sum(cleaned)\nprint(total)", 4, stdout("10.0\n")),
        ],
    )
    kernel = user_kernel(tmp_path, notebook)  # In[1]
    try:
        kernel.run(first)  # In[2]
        kernel.run("cleaned = [p for p in prices]")  # In[3], the cell since deleted
        kernel.run("total = sum(cleaned)\nprint(total)")  # In[4]
        before = processes()
        shown = kernel.execute("%crush verify --wait", timeout=120)
        after = processes()
        report = report_of(kernel)
    finally:
        kernel.shutdown()
    assert after == before  # the fresh kernel is gone
    assert report["outcome"] == "failed"
    failure = report["failure"]
    assert (
        failure["index"] == 1
        and failure["id"] == json.loads(notebook.read_text())["cells"][1]["id"]
    )
    assert failure["exception"] == "NameError: name 'cleaned' is not defined"
    assert "----> 1 total = sum(cleaned)" in failure["traceback"]
    assert failure["in_user_kernel"] == "ran without error ([4])"
    assert report["hidden"] == ["cleaned"]
    cells = json.loads(notebook.read_text())["cells"]
    assert report["edited"] == [{"index": 0, "id": cells[0]["id"], "count": 2}]
    assert report["differences"] == [{"index": 0, "id": cells[0]["id"], "saved": "3", "fresh": "4"}]
    assert [c["state"] for c in report["cells"]] == ["ok", "error"]
    # Nothing of the fresh kernel's own stderr, nor nbclient's log, lands in the cell.
    assert [m for m in shown.outputs if m["msg_type"] == "stream"] == []
    # The cell shows the report (its plain text too, for headless readers).
    (result,) = [m["content"] for m in shown.outputs if m["msg_type"] == "execute_result"]
    plain = result["data"]["text/plain"]
    assert "failed at cell 1" in plain.splitlines()[0]
    assert "hidden state: `cleaned` exists in this kernel but no cell defines it" in plain


CRUSH_CELLS = [
    '%load_ext jupyter_crush\n%config CrushConfig.allowed_tools = ["python"]',
    'prices = {"Lyon": 3.5, "Nice": 4.0, "Brest": 2.5}',
    "%%crush -s stock\nMake a dict `stock` of three cities with their stock",
    "print(sorted(stock.items()))",
    "%%crush -s stock\nWhich city is cheapest in {prices}?",
]
STOCK = 'stock = {"Lyon": 5, "Nice": 0, "Brest": 7}'
ANSWERS = [
    openai_step(1, tool=("python", {"code": f"{STOCK}\nprint(len(stock))"})),
    openai_step(2, "Made `stock`: 3 cities."),
    openai_step(3, "Brest is the cheapest, at 2.5."),
]


def test_a_notebook_that_runs_clean_replays_its_crush_cells_without_a_request(tmp_path):
    with serving(ANSWERS) as server:
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{server.url}/v1"}
        env["CRUSH_DATA_DIR"] = str(tmp_path / ".crush")
        # The user ran the notebook once (the model answered) and saved it.
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CRUSH_CELLS])
        nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "t", "language": "python"}
        NotebookClient(nb, km=kernel_manager(tmp_path / "specs"), timeout=60).execute(
            env=kernel_env(tmp_path / ".crush", **env), cwd=str(tmp_path)
        )
        assert len(server.requests) == 3
        notebook = tmp_path / "nb.ipynb"
        nbformat.write(nb, notebook)
        saved = notebook.read_text()

        kernel = user_kernel(tmp_path, notebook, **env)
        try:
            before = processes()
            kernel.run("%crush verify --wait", timeout=120)
            after = processes()
            report = report_of(kernel)
        finally:
            kernel.shutdown()
    assert after == before
    assert len(server.requests) == 3  # nothing asked
    assert report["outcome"] == "passed", report
    assert [c["state"] for c in report["cells"]] == ["ok", "ok", "replayed", "ok", "replayed"]
    assert all(
        c["note"].startswith("replayed from ") for c in report["cells"] if c["state"] == "replayed"
    )
    assert report["differences"] == [] and report["failure"] is None
    assert notebook.read_text() == saved  # nothing written back


def test_a_crush_cell_that_needs_the_model_is_skipped_with_a_note(tmp_path):
    notebook = notebook_file(
        tmp_path,
        [ran("%load_ext jupyter_crush", 1), ran("%%crush\nNever asked before", 2), ran("x = 1", 3)],
    )
    with serving([openai_step(1, "Asked, with --live.")]) as server:
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{server.url}/v1"}
        kernel = user_kernel(tmp_path, notebook, **env)
        try:
            kernel.run("%crush verify --wait", timeout=120)
            report = report_of(kernel)
            assert server.requests == []
            kernel.run("%crush verify --wait --live", timeout=120)
            live = report_of(kernel)
        finally:
            kernel.shutdown()
        # --live asks (the answer, and the new session's title beside it).
        assert any(b"Never asked before" in r.body for r in server.requests)
    assert [c["state"] for c in live["cells"]] == ["ok", "ok", "ok"]
    assert report["outcome"] == "passed"
    skipped = report["cells"][1]
    assert skipped["state"] == "skipped"
    assert skipped["note"] == (
        "skipped, it needs the model (no recorded answer to this prompt); --live asks it"
    )
    assert report["cells"][2]["state"] == "ok"


def test_a_cell_that_hangs_times_out_and_its_kernel_is_gone(tmp_path):
    notebook = notebook_file(
        tmp_path,
        [ran("x = 1", 1), ran("import time\ntime.sleep(600)", 2), ran("y = 2", 3)],
    )
    kernel = user_kernel(tmp_path, notebook)
    try:
        before = processes()
        kernel.run("%crush verify --wait --timeout 3", timeout=120)
        after = processes()
        report = report_of(kernel)
    finally:
        kernel.shutdown()
    assert after == before
    assert report["outcome"] == "timed out"
    assert report["reason"] == (
        "cell 1 ran longer than 3 s (the cell timeout); the fresh kernel was shut down"
    )
    assert [c["state"] for c in report["cells"]] == ["ok", "timeout"]


def test_the_overall_timeout_and_a_kernel_that_dies_are_reported(tmp_path):
    notebook = notebook_file(
        tmp_path,
        [ran("x = 1", 1), ran("import time\ntime.sleep(600)", 2)],
    )
    dies = notebook_file(
        tmp_path, [ran("x = 1", 1), ran("import os\nos._exit(3)", 2)], "dies.ipynb"
    )
    kernel = user_kernel(tmp_path, notebook)
    try:
        before = processes()
        kernel.run("%crush verify --wait --timeout 100 --total 4", timeout=120)
        late = report_of(kernel)
        kernel.run(f"%crush verify --wait {dies}", timeout=120)
        died = report_of(kernel)
        after = processes()
    finally:
        kernel.shutdown()
    assert after == before
    assert late["outcome"] == "timed out"
    assert late["reason"] == (
        "the notebook ran longer than 4 s (the overall timeout), during cell 1; the fresh "
        "kernel was shut down"
    )
    assert died["outcome"] == "kernel died"
    assert died["reason"] == "the kernel died during cell 1 (exit code 3)"
    assert [c["state"] for c in died["cells"]] == ["ok", "died"]


def test_stop_ends_a_verify_running_in_the_background(tmp_path):
    notebook = notebook_file(tmp_path, [ran("x = 1", 1), ran("import time\ntime.sleep(600)", 2)])
    kernel = user_kernel(tmp_path, notebook)
    try:
        before = processes()
        kernel.run("%crush verify")  # returns at once: the view follows the run

        def head(msg: dict) -> str:
            return " ".join(v.get("head", "") for op, v in view_ops(msg) if op == "status")

        kernel.wait_iopub(lambda m: "cell 2 of 2" in head(m), timeout=90)
        kernel.stop()
        kernel.wait_iopub(lambda m: head(m).endswith("· stopped"), timeout=30)
        report = report_of(kernel)
        after = processes()
        assert kernel.value("1 + 1") == 2  # the user's kernel was free all along

        # The kernel's interrupt (■) while it is idle stops a verify too.
        kernel.iopub.clear()
        kernel.run("%crush verify")
        kernel.wait_iopub(lambda m: "cell 2 of 2" in head(m), timeout=90)
        kernel.interrupt()
        kernel.wait_iopub(lambda m: head(m).endswith("· stopped"), timeout=30)
        interrupted = report_of(kernel)
        after_interrupt = processes()
    finally:
        kernel.shutdown()
    assert after == before == after_interrupt
    assert report["outcome"] == interrupted["outcome"] == "stopped"
    assert report["reason"] == "stopped during cell 1; the fresh kernel was shut down"


def test_the_verify_tool_gives_the_agent_the_report(tmp_path):
    notebook = notebook_file(
        tmp_path,
        [ran("base = 2", 1), ran("print(base * factor)", 4, stdout("6\n"))],
    )
    kernel = user_kernel(tmp_path, notebook)
    try:
        kernel.run("base, factor = 2, 3")
        kernel.run(
            "from jupyter_crush.testing import Reply as _R, ScriptedModel as _S, ToolCall as _T\n"
            "_current().use_model(_S([_R(tool_calls=[_T('verify', {})]),"
            " 'It needs `factor`.']))"
        )
        kernel.run("%%crush --wait\nDoes my notebook run from scratch?", timeout=120)
        results = kernel.value(
            "[(r.content, r.is_error) for m in _current().store.list_messages("
            "_current().current_session_id)"
            " for r in m.tool_results]"
        )
    finally:
        kernel.shutdown()
    ((content, is_error),) = results
    assert not is_error
    assert content.splitlines()[0].startswith(f"verify {notebook} (file on disk) in a fresh ")
    assert "failed at cell 1" in content.splitlines()[0]
    assert (
        "first failure: cell 1" in content and "NameError: name 'factor' is not defined" in content
    )
    assert "hidden state: `factor` exists in this kernel but no cell defines it" in content


def test_a_stop_of_the_turn_stops_the_verify_tools_run(tmp_path):
    notebook = notebook_file(tmp_path, [ran("import time\ntime.sleep(600)", 1)])
    kernel = user_kernel(tmp_path, notebook)
    try:
        kernel.run(
            "from jupyter_crush.testing import Reply as _R, ScriptedModel as _S, ToolCall as _T\n"
            "_current().use_model(_S([_R(tool_calls=[_T('verify', {})]), 'never sent']))"
        )
        before = processes()
        kernel.run("%%crush\nDoes my notebook run from scratch?")  # in the background
        deadline = time.monotonic() + 90
        while len(processes() - before) == 0:  # the fresh kernel started
            assert time.monotonic() < deadline, "verify never started its kernel"
            time.sleep(0.2)
        kernel.stop()
        phase = "_current().last_view.phase"
        while kernel.value(phase) != "canceled":
            assert time.monotonic() < deadline, "the turn did not end"
            time.sleep(0.2)
        after = processes()
        results = kernel.value(
            "[r.content for m in _current().store.list_messages(_current().current_session_id)"
            " for r in m.tool_results]"
        )
    finally:
        kernel.shutdown()
    assert after == before  # its fresh kernel went with the turn
    assert results == [TOOL_CANCELED]


def test_the_fresh_kernel_ends_with_the_users_kernel(tmp_path):
    notebook = notebook_file(tmp_path, [ran("import time\ntime.sleep(600)", 1)])
    kernel = user_kernel(tmp_path, notebook)
    try:
        user = psutil.Process(kernel.km.provisioner.process.pid)
        kernel.run("%crush verify")
        deadline = time.monotonic() + 90
        while not user.children():  # the fresh kernel started
            assert time.monotonic() < deadline, "verify never started its kernel"
            time.sleep(0.2)
        (fresh,) = user.children()
        user.kill()  # the user's kernel dies without a word (a crash, kill -9)
        gone, alive = psutil.wait_procs([fresh], timeout=30)
    finally:
        kernel.shutdown()
    assert gone and not alive  # it noticed its parent was gone and exited
