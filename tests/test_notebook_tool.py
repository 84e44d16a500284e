"""The ``notebook`` tool on an InteractiveShell: a notebook on disk, the kernel's history,
ranges, search, bounds and bad input. The live document (JupyterLab) is in
tests/browser/test_notebook_context.py, the real kernel in test_notebook_kernel.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

from jupyter_crush.core.tools import ToolContext
from jupyter_crush.notebook import state as notebook_state
from jupyter_crush.tools.notebook import CELL_OUTPUT_CHARS, NotebookTool, output_text
from jupyter_crush.tools.workspace import Workspace

CTX = ToolContext("session", "call-1")
PNG = "iVBORw0KGgo" * 100


def write_notebook(path: Path, cells: list[dict]) -> Path:
    path.write_text(
        json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    return path


def code(source: str, count: int | None = None, outputs=(), id: str = "") -> dict:
    return {
        "cell_type": "code",
        "id": id or f"c{count}",
        "source": source,
        "execution_count": count,
        "metadata": {},
        "outputs": list(outputs),
    }


@pytest.fixture(scope="module")
def shell():
    start_ipython()  # the process's one shell, as the other test files use it
    shell = get_ipython()
    notebook_state.install(shell)
    yield shell
    notebook_state.uninstall(shell)  # no error seen here leaks into another file's tests


@pytest.fixture
def on_disk(tmp_path, shell, monkeypatch):
    path = write_notebook(
        tmp_path / "analysis.ipynb",
        [
            {"cell_type": "markdown", "id": "intro", "source": ["# Sales\n", "A look."]},
            code(
                "df = load()\ndf.head()",
                1,
                [{"output_type": "stream", "name": "stdout", "text": ["loaded 3 rows\n"]}],
            ),
            code(
                "plot(df)",
                2,
                [
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {
                            "image/png": PNG,
                            "text/plain": "<Figure size 640x480 with 1 Axes>",
                        },
                    }
                ],
            ),
            code(
                "df['prize']",
                3,
                [
                    {
                        "output_type": "error",
                        "ename": "KeyError",
                        "evalue": "'prize'",
                        "traceback": ["\x1b[0;31mKeyError\x1b[0m: 'prize'"],
                    }
                ],
            ),
        ],
    )
    monkeypatch.setitem(shell.user_ns, "__session__", str(path))
    # The module's shell is shared with other test files: start from an empty history.
    monkeypatch.setattr(shell.history_manager, "input_hist_raw", [""])
    monkeypatch.setitem(shell.user_ns, "Out", {})
    return path


async def run(shell, workspace: Path | None = None, **args) -> tuple[str, bool]:
    tool = NotebookTool(shell, Workspace(workspace)) if workspace else NotebookTool(shell)
    result = await tool.run(args, CTX)
    return result.content, result.is_error


async def test_reads_the_kernels_notebook_on_disk(shell, on_disk):
    text, error = await run(shell)
    assert not error
    assert text.startswith(f"Notebook (file on disk: {on_disk}), ")
    assert "## cell 0 id=intro markdown\n# Sales\nA look." in text
    assert "## cell 1 id=c1 code [1]\ndf = load()\ndf.head()\n-- output --\nloaded 3 rows" in text
    # Images are noted with their size, not pasted; errors keep type, message, traceback.
    assert f"[image image/png, {len(PNG) * 3 // 4:,} bytes]" in text
    assert "<Figure size 640x480 with 1 Axes>" in text
    assert "[error] KeyError: 'prize'\nKeyError: 'prize'" in text
    assert "\x1b" not in text and PNG not in text


async def test_range_search_and_sources_only(shell, on_disk):
    text, _ = await run(shell, start=1, end=2)
    assert "## cell 1 " in text and "## cell 2 " in text
    assert "## cell 0 " not in text and "## cell 3 " not in text
    assert "showing 2." in text

    text, _ = await run(shell, search="PRIZE")
    assert "## cell 3 " in text and "## cell 1 " not in text

    text, _ = await run(shell, search="loaded 3 rows")  # matches outputs too
    assert "## cell 1 " in text

    text, _ = await run(shell, outputs=False)
    assert "loaded 3 rows" not in text and "df = load()" in text

    text, error = await run(shell, search="no such thing")
    assert not error and "No cell contains 'no such thing'." in text


async def test_bad_input_is_a_clear_error(shell, on_disk, tmp_path):
    text, error = await run(shell, start=10, end=12)
    assert error
    assert text == (
        "notebook: cell range 10-12 is out of bounds: the notebook has 4 cells (indexes 0-3)"
    )
    text, error = await run(shell, tmp_path, path="missing.ipynb")
    assert error and "not found; give a path to an existing .ipynb" in text
    (tmp_path / "broken.ipynb").write_bytes(b"\xff\xfe not json")
    text, error = await run(shell, tmp_path, path=str(tmp_path / "broken.ipynb"))
    assert error and "is not a notebook (not valid JSON" in text
    text, error = await run(shell, start="1")
    assert error and text == "notebook: 'start' must be a cell index (an integer), not '1'"


async def test_path_reads_another_notebook_of_the_workspace(shell, on_disk, tmp_path):
    """Relative to the workspace's root, whatever the working directory; not outside it."""
    (tmp_path / "ws" / "drafts").mkdir(parents=True)
    other = write_notebook(tmp_path / "ws" / "drafts" / "other.ipynb", [code("draft = 1", 1)])
    text, error = await run(shell, tmp_path / "ws", path="drafts/other.ipynb")
    assert not error and text.startswith(f"Notebook (file on disk: {other}), 1 cells")
    text, error = await run(shell, tmp_path / "ws", path=str(on_disk))
    assert error and f"outside the workspace {tmp_path / 'ws'}, " in text
    assert "df = load()" not in text


async def test_long_sources_and_outputs_keep_head_and_tail(shell, tmp_path, monkeypatch):
    long_source = "\n".join(f"x{i} = {i}" for i in range(2000))
    long_output = "".join(f"line {i}\n" for i in range(5000))
    path = write_notebook(
        tmp_path / "long.ipynb",
        [code(long_source, 1, [{"output_type": "stream", "name": "stdout", "text": long_output}])],
    )
    monkeypatch.setitem(shell.user_ns, "__session__", str(path))
    text, _ = await run(shell)
    assert "x0 = 0" in text and "x1999 = 1999" in text  # head and tail
    assert "[source truncated: " in text and "[output truncated: " in text
    assert "line 0\n" in text and "line 4999" in text
    assert len(text) < 3_000 + CELL_OUTPUT_CHARS + 1_000


async def test_without_a_file_the_kernel_history_is_the_notebook(shell, monkeypatch):
    monkeypatch.delitem(shell.user_ns, "__session__", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    shell.run_cell("answer = 6 * 7\nanswer", store_history=True)
    shell.run_cell("undefined_name + 1", store_history=True)
    text, error = await run(shell)
    assert not error
    assert text.startswith("Notebook (kernel history), ")
    assert "answer = 6 * 7\nanswer\n-- output --\n42" in text
    assert "undefined_name + 1\n-- output --\n[error] NameError: name 'undefined_name'" in text


async def test_cells_run_since_the_save_follow_the_file(shell, on_disk):
    shell.history_manager.input_hist_raw += ["df = load()\ndf.head()", "fresh = 'not saved yet'"]
    text, _ = await run(shell)
    assert text.count("df = load()") == 1  # a saved cell is not repeated
    assert "fresh = 'not saved yet'" in text
    index = text.index("fresh = 'not saved yet'")
    assert "(kernel history)" in text[text.rindex("## cell", 0, index) : index]


def test_output_text_of_rich_outputs():
    assert output_text({"output_type": "execute_result", "data": {"text/html": "<b>"}}) == (
        "[text/html output]"
    )
    assert (
        output_text({"output_type": "display_data", "data": {"text/markdown": ["**bold**"]}})
        == "**bold**"
    )
    # Markdown over plain text: a finished %%crush answer's plain text is its status line.
    answer = {"text/plain": "[crush] session a · done", "text/markdown": "**crush**\n\nIt is 4."}
    assert output_text({"output_type": "display_data", "data": answer}) == answer["text/markdown"]
    # The page sends an image's base64 length instead of its data.
    assert output_text({"output_type": "display_data", "data": {"image/jpeg": 400}}) == (
        "[image image/jpeg, 300 bytes]"
    )
