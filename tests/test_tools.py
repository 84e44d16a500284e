"""The notebook tools: python, variables, insert_cell, the file tools and bash."""

from __future__ import annotations

import asyncio
import fnmatch
import os
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.bounded import until

from jupyter_crush.core.output import CappedBuffer, redact, scrubbed_environ, truncate
from jupyter_crush.core.tools import ToolContext
from jupyter_crush.tools import DEFAULT_TOOL_NAMES, default_tools
from jupyter_crush.tools.cells import InsertCellTool
from jupyter_crush.tools.files import FileTools
from jupyter_crush.tools.python import PythonTool
from jupyter_crush.tools.shell import BashTool, process_group_state
from jupyter_crush.tools.variables import VariablesTool
from jupyter_crush.tools.workspace import GlobMatcher, Workspace, WorkspaceError

CTX = ToolContext("session", "call-1")


@pytest.fixture
def ns(shell):
    """A clean user namespace per test (IPython's own names stay)."""
    hidden = set(shell.user_ns_hidden)
    for name in [n for n in shell.user_ns if n not in hidden and not n.startswith("_")]:
        del shell.user_ns[name]
    return shell.user_ns


def python(shell, **kwargs):
    return PythonTool(shell, **kwargs)


def crush_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "crush-python"]


# -- python -----------------------------------------------------------------------------


async def test_python_stdout_result_and_namespace(shell, ns):
    result = await python(shell).run({"code": "x = 41\nprint('hello')\nx + 1"}, CTX)
    assert not result.is_error
    assert result.content == "hello\nOut: 42"
    assert ns["x"] == 41


async def test_python_reads_user_variables_and_none_is_not_shown(shell, ns):
    ns["data"] = [3, 1, 2]
    result = await python(shell).run({"code": "data.sort()\ndata.append(None)\nNone"}, CTX)
    assert result.content == "(no output)"
    assert ns["data"] == [1, 2, 3, None]


async def test_python_exception_has_traceback_of_user_code_only(shell, ns):
    code = "def f(d):\n    return 1 / d\n\nf(0)"
    result = await python(shell).run({"code": code}, CTX)
    assert result.is_error
    assert result.metadata["exception"] == "ZeroDivisionError"
    assert "ZeroDivisionError: division by zero" in result.content
    assert "return 1 / d" in result.content  # the source line, via linecache
    assert "python.py" not in result.content


async def test_python_syntax_error(shell, ns):
    result = await python(shell).run({"code": "def f(:\n  pass"}, CTX)
    assert result.is_error
    assert "SyntaxError" in result.content


async def test_python_ipython_syntax_and_top_level_await(shell, ns):
    result = await python(shell).run({"code": "names = %who_ls\n'x' in names"}, CTX)
    assert not result.is_error, result.content
    code = "import asyncio\nawait asyncio.sleep(0)\nvalue = 7\nvalue * 6"
    result = await python(shell).run({"code": code}, CTX)
    assert result.content == "Out: 42"


async def test_python_display_and_rich_results_are_summarized(shell, ns):
    code = (
        "from IPython.display import display, clear_output\n"
        "display({'a': 1})\n"
        "clear_output()\n"
        "class Rich:\n"
        "    def _repr_html_(self): return '<b>x</b>'\n"
        "    def __repr__(self): return 'Rich()'\n"
        "Rich()"
    )
    result = await python(shell).run({"code": code}, CTX)
    assert "[display] {'a': 1}" in result.content
    assert "Out: Rich()\n[rich output: text/html]" in result.content
    pub = shell.display_pub
    assert "publish" not in vars(pub) and "clear_output" not in vars(pub)  # patch undone


async def test_python_figures_are_described_and_closed(shell, ns):
    pyplot = pytest.importorskip("matplotlib.pyplot")
    code = (
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots()\nax.plot([1, 2, 3])\nax.set_title('growth')\n"
        "plt.show()\nfig2 = plt.figure()"
    )
    result = await python(shell).run({"code": code}, CTX)
    assert not result.is_error, result.content
    assert result.content == (
        "Figures created (now closed): <matplotlib Figure 1: 640x480 px, 1 axes, "
        "titles ['growth']>, <matplotlib Figure 2: 640x480 px, 0 axes>"
    )
    assert pyplot.get_fignums() == []
    fig = (await python(shell).run({"code": "fig"}, CTX)).content
    assert fig.startswith("Out: <Figure size 640x480 with 1 Axes>\n[rich output: ")
    assert "image/png" in fig


async def test_python_output_is_routed_by_thread(shell, ns, capsys):
    """The run's prints land in the result; a cell printing meanwhile keeps its output."""
    ns["go"] = threading.Event()
    code = "for i in range(50):\n    print('tool', i)\n    go.wait(0.002)"
    task = asyncio.create_task(python(shell).run({"code": code}, CTX))
    for _ in range(20):
        print("cell output")
        await asyncio.sleep(0.002)
    result = await task
    out = capsys.readouterr().out
    assert "tool" not in out
    assert out.count("cell output") == 20
    assert "tool 49" in result.content and "cell output" not in result.content
    assert not type(sys.stdout).__name__.startswith("_Routed")


async def test_python_output_is_truncated(shell, ns):
    result = await python(shell, limit=1000).run({"code": "print('y' * 100_000)"}, CTX)
    assert len(result.content) < 1200
    assert "truncated" in result.content


async def test_python_timeout_interrupts_a_busy_loop(shell, ns):
    code = "n = 0\ntry:\n    while True:\n        n += 1\nexcept Exception:\n    n = -1"
    result = await python(shell).run({"code": code, "timeout": 0.3}, CTX)
    assert result.is_error
    assert result.metadata["timed_out"] is True
    assert "time limit of 0.3s" in result.content
    assert ns["n"] > 0  # `except Exception` did not swallow the interrupt
    await until(lambda: not crush_threads())


async def test_python_timeout_abandons_code_blocked_in_c(shell, ns):
    code = "import time\ntime.sleep(1.5)\nprint('late')"
    tool = python(shell, grace=0.1)
    result = await tool.run({"code": code, "timeout": 0.1}, CTX)
    assert result.is_error and result.metadata["abandoned"] is True
    assert "abandoned" in result.content
    await until(lambda: not crush_threads())


async def test_python_cancel_mid_run_stops_the_thread(shell, ns, capsys):
    ns["started"] = threading.Event()
    code = (
        "import threading\nworker = threading.current_thread()\nstarted.set()\n"
        "k = 0\nwhile True:\n    k += 1\n    if k % 100000 == 0: print(k)"
    )
    task = asyncio.create_task(python(shell).run({"code": code}, CTX))
    await until(ns["started"].is_set)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ns["worker"].join(timeout=10)
    assert not ns["worker"].is_alive()
    assert ns["k"] > 0
    assert capsys.readouterr().out == ""  # its prints never reached the cell


async def test_python_bad_input(shell, ns):
    tool = python(shell)
    assert (await tool.run({}, CTX)).is_error
    assert (await tool.run({"code": "   "}, CTX)).is_error
    result = await tool.run({"code": "1", "timeout": -1}, CTX)
    assert result.is_error and "timeout" in result.content
    assert (await tool.run({"code": "1", "timeout": True}, CTX)).is_error


async def test_python_output_redacts_secrets(shell, ns, monkeypatch):
    monkeypatch.setenv("EXAMPLE_API_KEY", "sk-test-1234567890abcdef")
    result = await python(shell).run({"code": "import os\nos.environ['EXAMPLE_API_KEY']"}, CTX)
    assert "sk-test-1234567890abcdef" not in result.content
    assert "[redacted]" in result.content


# -- variables --------------------------------------------------------------------------


async def test_variables_lists_user_data_not_internals(shell, ns):
    import json

    import numpy as np

    ns.update(count=3, names=["a", "b"], arr=np.zeros((4, 5)), json=json, helper=len)
    shell.run_cell("def f(): pass")
    tool = VariablesTool(shell)
    result = await tool.run({}, CTX)
    lines = result.content.splitlines()
    assert lines[0].split() == ["name", "type", "shape/len", "dtype", "memory"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"arr", "count", "names"}
    assert "4x5" in rows["arr"] and "float64" in rows["arr"] and "160 B" in rows["arr"]
    assert "list" in rows["names"]
    with_callables = await tool.run({"include_callables": True}, CTX)
    assert {"json", "f", "helper"} <= {
        line.split()[0] for line in with_callables.content.splitlines()[1:]
    }


async def test_variables_describes_a_dataframe(shell, ns):
    import pandas as pd

    ns["df"] = pd.DataFrame(
        {"price": [1.0, None, 3.5, 4.0], "city": ["a", "b", None, "d"], "n": [1, 2, 3, 4]}
    )
    result = await VariablesTool(shell).run({"name": "df"}, CTX)
    text = result.content
    assert not result.is_error
    assert "shape: 4 rows x 3 columns" in text
    assert "price: float64, 1 null" in text
    assert "city: object, 1 null" in text or "city: str, 1 null" in text
    assert "head(5):" in text and "describe():" in text
    assert "mean" in text


async def test_variables_never_dumps_a_huge_object(shell, ns):
    import pandas as pd

    ns["big"] = list(range(1_000_000))
    ns["text"] = "z" * 1_000_000
    ns["frame"] = pd.DataFrame({f"c{i}": range(1000) for i in range(200)})
    tool = VariablesTool(shell)
    for name in ("big", "text", "frame"):
        result = await tool.run({"name": name}, CTX)
        assert not result.is_error
        assert len(result.content) < 20_000, name
    assert "length: 1000000" in (await tool.run({"name": "big"}, CTX)).content
    assert "first 60 of 200 columns" in (await tool.run({"name": "frame"}, CTX)).content


async def test_variables_bad_input(shell, ns):
    tool = VariablesTool(shell)
    ns["Data"] = 1
    result = await tool.run({"name": "df.head()"}, CTX)
    assert result.is_error and "no expressions" in result.content
    result = await tool.run({"name": "data"}, CTX)
    assert result.is_error and "did you mean 'Data'" in result.content
    assert (await tool.run({"limit": 0}, CTX)).is_error
    assert (await VariablesTool(None).run({}, CTX)).is_error


# -- insert_cell ------------------------------------------------------------------------


async def test_insert_cell_proposes_without_running(shell, ns):
    code = "ran = True\nprint('hi')"
    result = await InsertCellTool(shell).run({"code": code}, CTX)
    assert not result.is_error
    assert shell.rl_next_input == code
    assert "ran" not in ns
    assert result.metadata["proposed_cell"] == code


async def test_insert_cell_custom_proposer_and_bad_input(shell):
    seen = []
    tool = InsertCellTool(shell, lambda code, ctx: seen.append((code, ctx)) or "Shown.")
    result = await tool.run({"code": "%time 1 + 1"}, CTX)
    assert result.content.endswith("Shown.") and seen == [("%time 1 + 1", CTX)]
    result = await tool.run({"code": "def broken(:"}, CTX)
    assert result.is_error and "does not parse" in result.content
    assert (await tool.run({"code": ""}, CTX)).is_error
    assert len(seen) == 1


# -- files: confinement -----------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "nb"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret\n")
    (root / "inner.txt").write_text("inside\n")
    (root / "link_out").symlink_to(outside)
    (root / "file_out.txt").symlink_to(outside / "secret.txt")
    (root / "link_in.txt").symlink_to(root / "inner.txt")
    return Workspace(root)


@pytest.fixture
def files(workspace):
    return FileTools(workspace)


ESCAPES = ["../outside/secret.txt", "link_out/secret.txt", "file_out.txt", "/etc/passwd", "~"]


@pytest.mark.parametrize("path", ESCAPES)
def test_workspace_refuses_paths_outside(workspace, path):
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        workspace.resolve(path)


def test_workspace_accepts_paths_inside(workspace):
    root = workspace.root
    assert workspace.resolve("inner.txt") == root / "inner.txt"
    assert workspace.resolve(str(root / "inner.txt")) == root / "inner.txt"
    assert workspace.resolve("sub/../inner.txt") == root / "inner.txt"
    assert workspace.resolve("link_in.txt") == root / "inner.txt"
    assert workspace.resolve("new/file.txt") == root / "new" / "file.txt"
    with pytest.raises(WorkspaceError, match="non-empty"):
        workspace.resolve("")


async def test_walks_do_not_follow_links_out(files):
    glob = await files.glob({"pattern": "**/*.txt"}, CTX)
    assert "secret" not in glob.content and "inner.txt" in glob.content
    grep = await files.grep({"pattern": "secret"}, CTX)
    assert grep.content.startswith("No matches")
    ls = await files.ls({}, CTX)
    assert "link_out -> (outside the workspace)" in ls.content


# -- files: view / write / edit ---------------------------------------------------------


async def test_view_numbers_lines_and_pages(files, workspace):
    (workspace.root / "a.py").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    result = await files.view({"path": "a.py", "offset": 3, "limit": 2}, CTX)
    assert result.content.splitlines()[:2] == ["     3|line 3", "     4|line 4"]
    assert "offset=5" in result.content
    full = await files.view({"path": "a.py"}, CTX)
    assert "more lines" not in full.content and full.content.count("\n") == 9


async def test_view_limits_and_bad_input(files, workspace):
    (workspace.root / "long.txt").write_text("x" * 5000 + "\n")
    (workspace.root / "blob.bin").write_bytes(b"\x00\x01" * 100)
    (workspace.root / "empty.txt").write_text("")
    assert "[line truncated]" in (await files.view({"path": "long.txt"}, CTX)).content
    assert "binary" in (await files.view({"path": "blob.bin"}, CTX)).content
    assert "empty" in (await files.view({"path": "empty.txt"}, CTX)).content
    assert "does not exist" in (await files.view({"path": "nope.txt"}, CTX)).content
    assert "directory" in (await files.view({"path": "."}, CTX)).content
    assert (await files.view({"path": "long.txt", "offset": 0}, CTX)).is_error
    assert (await files.view({"path": "long.txt", "offset": "3"}, CTX)).is_error
    assert "fewer than" in (await files.view({"path": "long.txt", "offset": 9}, CTX)).content


async def test_view_renders_notebooks_as_cells(files, workspace):
    import json

    notebook = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {"cell_type": "markdown", "id": "a", "metadata": {}, "source": ["# Sales\n", "notes"]},
            {
                "cell_type": "code",
                "id": "b",
                "metadata": {},
                "execution_count": 3,
                "source": "df = load()\ndf.head()",
                "outputs": [
                    {"output_type": "stream", "name": "stdout", "text": ["loaded\n"]},
                    {
                        "output_type": "execute_result",
                        "execution_count": 3,
                        "metadata": {},
                        "data": {"text/plain": "   price\n0  1.0", "text/html": "<table/>"},
                    },
                    {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBO"}},
                    {
                        # A finished %%crush answer: its plain text is only the status line.
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {
                            "text/plain": "[crush] done",
                            "text/markdown": "**crush**\n\nIt is",
                        },
                    },
                ],
            },
        ],
    }
    (workspace.root / "a.ipynb").write_text(json.dumps(notebook))
    result = await files.view({"path": "a.ipynb"}, CTX)
    header, *lines = result.content.splitlines()
    assert "shown as cells" in header
    assert [line.split("|", 1)[1] for line in lines] == [
        "# ── cell 1 · markdown ──",
        "# Sales",
        "notes",
        "# ── cell 2 · code · [3] ──",
        "df = load()",
        "df.head()",
        "# ── output: stream stdout ──",
        "loaded",
        "# ── output: execute_result (text/html omitted) ──",
        "   price",
        "0  1.0",
        "# ── output: display_data (image/png omitted) ──",
        "# ── output: display_data (text/plain omitted) ──",
        "**crush**",
        "",
        "It is",
    ]
    (workspace.root / "broken.ipynb").write_text("{not json")
    raw = await files.view({"path": "broken.ipynb"}, CTX)
    assert raw.content == "     1|{not json"


async def test_view_reads_overlong_lines_in_bounded_pieces(files, workspace):
    (workspace.root / "min.json").write_text("[" + "1," * 3_000_000 + "1]\nsecond line\n")
    result = await files.view({"path": "min.json"}, CTX)
    first, second = result.content.splitlines()
    assert first.endswith("[line truncated]") and len(first) < 2_100
    assert second == "     2|second line"


async def test_view_size_limit(workspace):
    (workspace.root / "big.txt").write_text("".join(f"row {i}\n" for i in range(100_000)))
    result = await FileTools(workspace, limit=5_000).view({"path": "big.txt"}, CTX)
    assert len(result.content) < 6_000
    assert "more lines follow" in result.content


async def test_write_creates_and_shows_a_diff(files, workspace):
    tool = files.write_tool()
    args = {"path": "out/new.txt", "content": "one\ntwo\n"}
    assert tool.permission_summary(args).startswith("--- /dev/null\n+++ b/out/new.txt")
    result = await tool.run(args, CTX)
    assert not result.is_error and result.content.startswith("Created out/new.txt")
    assert (workspace.root / "out" / "new.txt").read_text() == "one\ntwo\n"
    args = {"path": "out/new.txt", "content": "one\nthree\n"}
    summary = tool.permission_summary(args)
    assert "-two\n+three\n" in summary
    result = await tool.run(args, CTX)
    assert "-two\n+three\n" in result.content and "-two\n+three\n" in result.metadata["diff"]
    assert (await tool.run({"path": "out", "content": ""}, CTX)).is_error
    assert (await tool.run({"path": "x.txt"}, CTX)).is_error


async def test_write_through_an_inside_symlink_keeps_the_link(files, workspace):
    await files.write({"path": "link_in.txt", "content": "changed\n"}, CTX)
    assert (workspace.root / "link_in.txt").is_symlink()
    assert (workspace.root / "inner.txt").read_text() == "changed\n"


async def test_edit_exact_single_match(files, workspace):
    path = workspace.root / "m.py"
    path.write_text("a = 1\nb = 2\na = 1\n")
    tool = files.edit_tool()
    args = {"path": "m.py", "old_string": "b = 2", "new_string": "b = 3"}
    assert "-b = 2\n+b = 3\n" in tool.permission_summary(args)
    result = await tool.run(args, CTX)
    assert not result.is_error and "-b = 2\n+b = 3\n" in result.content
    assert path.read_text() == "a = 1\nb = 3\na = 1\n"

    twice = {"path": "m.py", "old_string": "a = 1", "new_string": "a = 0"}
    result = await tool.run(twice, CTX)
    assert result.is_error and "matches 2 times" in result.content
    assert "will fail" in tool.permission_summary(twice)
    result = await tool.run({**twice, "replace_all": True}, CTX)
    assert not result.is_error and path.read_text() == "a = 0\nb = 3\na = 0\n"

    missing = await tool.run({"path": "m.py", "old_string": "zzz", "new_string": "y"}, CTX)
    assert missing.is_error and "not found" in missing.content
    same = await tool.run({"path": "m.py", "old_string": "b", "new_string": "b"}, CTX)
    assert same.is_error and "identical" in same.content


async def test_edit_creates_new_files_and_handles_crlf(files, workspace):
    created = await files.edit({"path": "n.txt", "old_string": "", "new_string": "hi\n"}, CTX)
    assert not created.is_error and (workspace.root / "n.txt").read_text() == "hi\n"
    again = await files.edit({"path": "n.txt", "old_string": "", "new_string": "x"}, CTX)
    assert again.is_error and "already exists" in again.content
    (workspace.root / "w.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    result = await files.edit(
        {"path": "w.txt", "old_string": "one\ntwo", "new_string": "one\n2"}, CTX
    )
    assert not result.is_error, result.content
    assert (workspace.root / "w.txt").read_bytes() == b"one\r\n2\r\nthree\r\n"


# -- files: glob / grep / ls ------------------------------------------------------------


@pytest.fixture
def tree(workspace):
    root = workspace.root
    for rel in ["a.py", "pkg/b.py", "pkg/deep/c.py", "data/x.csv", "notes.md", "nb.ipynb"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\nimport os\nvalue = 1\n")
    for rel in [".hidden/h.py", "node_modules/m.py", "__pycache__/p.py"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("import os\n")
    (root / "bin.dat").write_bytes(b"import os\x00\x01")
    return root


def test_glob_patterns():
    assert GlobMatcher("*.py").matches("pkg/deep/c.py")
    assert not GlobMatcher("pkg/*.py").matches("pkg/deep/c.py")
    assert GlobMatcher("pkg/**/*.py").matches("pkg/b.py")
    assert GlobMatcher("pkg/**/*.py").matches("pkg/deep/c.py")
    assert GlobMatcher("*.{py,ipynb}").matches("nb.ipynb")
    assert GlobMatcher("data/[xy].csv").matches("data/x.csv")
    assert not GlobMatcher("data/[!xy].csv").matches("data/x.csv")


async def test_glob_tool(files, tree):
    result = await files.glob({"pattern": "*.py"}, CTX)
    assert set(result.content.splitlines()) == {"a.py", "pkg/b.py", "pkg/deep/c.py"}
    result = await files.glob({"pattern": "**/*.py", "path": "pkg"}, CTX)
    assert set(result.content.splitlines()) == {"pkg/b.py", "pkg/deep/c.py"}
    limited = await files.glob({"pattern": "*", "limit": 2}, CTX)
    assert "more not shown" in limited.content
    assert (await files.glob({"pattern": ""}, CTX)).is_error
    assert (await files.glob({"pattern": "../*"}, CTX)).is_error
    assert (await files.glob({"pattern": "*.zzz"}, CTX)).content.startswith("No files")


async def test_grep_tool(files, tree):
    result = await files.grep({"pattern": r"^import \w+", "include": "*.py"}, CTX)
    assert result.content.splitlines()[0] == "3 matches"
    assert "pkg/deep/c.py:\n  2: import os" in result.content
    assert "hidden" not in result.content and "node_modules" not in result.content
    everything = await files.grep({"pattern": "import"}, CTX)
    assert "bin.dat" not in everything.content
    limited = await files.grep({"pattern": "value", "limit": 2}, CTX)
    assert "2 of 3+ matches shown" in limited.content and "more matches" in limited.content
    one_file = await files.grep({"pattern": "VALUE", "path": "a.py", "ignore_case": True}, CTX)
    assert one_file.content == "1 matches\na.py:\n  3: value = 1"
    bad = await files.grep({"pattern": "(unclosed"}, CTX)
    assert bad.is_error and "invalid regular expression" in bad.content


async def test_ls_tool(files, tree):
    result = await files.ls({}, CTX)
    lines = result.content.splitlines()
    assert lines[0] == f"{tree}/"
    assert "  pkg/" in lines and "      c.py (36 B)" in lines
    assert not any("node_modules" in line or ".hidden" in line for line in lines)
    shallow = await files.ls({"depth": 1}, CTX)
    assert "  pkg/" in shallow.content and "b.py" not in shallow.content
    limited = await files.ls({"limit": 3}, CTX)
    assert "listing stopped at 3 entries" in limited.content
    ignored = await files.ls({"ignore": ["*.py"]}, CTX)
    assert ".py" not in ignored.content
    assert (await files.ls({"ignore": "*.py"}, CTX)).is_error
    assert (await files.ls({"path": "a.py"}, CTX)).is_error


# -- output helpers ---------------------------------------------------------------------


def test_truncate_keeps_head_and_tail():
    text = "".join(f"{i:05d}\n" for i in range(10_000))
    short = truncate(text, 1000)
    assert short.startswith("00000\n") and short.endswith("09999\n")
    assert "characters omitted" in short and len(short) < 1100
    assert truncate("small", 1000) == "small"


def test_capped_buffer_is_bounded():
    buffer = CappedBuffer(100)
    for i in range(10_000):
        buffer.write(f"{i}\n")
    value = buffer.getvalue()
    assert value.startswith("0\n1\n") and value.endswith("9999\n")
    assert "output truncated" in value and len(value) < 200
    small = CappedBuffer(100)
    small.write("abc")
    assert small.getvalue() == "abc"


def test_redaction_and_scrubbing():
    env = {"OPENAI_API_KEY": "sk-abcdefghijkl", "GH_TOKEN": "ghp_123456789", "HOME": "/root"}
    assert redact("key sk-abcdefghijkl and ghp_123456789", env) == "key [redacted] and [redacted]"
    assert scrubbed_environ(env) == {"HOME": "/root"}


# -- bash -------------------------------------------------------------------------------


def gone(pid: int) -> bool:
    group, state = process_group_state(pid)
    return group == -1 or state in ("Z", "X")


async def test_bash_runs_in_the_workspace(workspace):
    tool = BashTool(workspace.root)
    result = await tool.run({"command": "pwd; echo err >&2"}, CTX)
    assert result.content == f"{workspace.root}\nerr\nExit code 0."
    failed = await tool.run({"command": "exit 3"}, CTX)
    assert failed.is_error and failed.metadata["exit_code"] == 3


async def test_bash_bad_input(workspace):
    tool = BashTool(workspace.root)
    assert (await tool.run({"command": ""}, CTX)).is_error
    assert (await tool.run({"command": "true", "timeout": 0}, CTX)).is_error


async def test_bash_reports_a_missing_workspace(tmp_path):
    result = await BashTool(tmp_path / "gone").run({"command": "true"}, CTX)
    assert result.is_error and result.content.startswith("bash: could not start the command")


async def test_bash_hides_credentials(workspace, monkeypatch):
    monkeypatch.setenv("EXAMPLE_API_KEY", "sk-test-abcdef123456")
    secret_file = workspace.root / "env.txt"
    secret_file.write_text("EXAMPLE_API_KEY=sk-test-abcdef123456\n")
    tool = BashTool(workspace.root)
    result = await tool.run({"command": "echo [$EXAMPLE_API_KEY]; cat env.txt"}, CTX)
    assert result.content.startswith("[]\n")
    assert "sk-test" not in result.content and "[redacted]" in result.content


async def test_bash_output_is_truncated(workspace):
    result = await BashTool(workspace.root, limit=1000).run({"command": "seq 1 100000"}, CTX)
    assert "truncated" in result.content and len(result.content) < 1200
    assert result.content.startswith("1\n2\n") and "100000\nExit code 0." in result.content


async def test_bash_timeout_kills_the_process_group(workspace):
    tool = BashTool(workspace.root, kill_grace=0.5)
    command = "echo $$ > shell.pid; (trap '' TERM; sleep 60) & echo $! > child.pid; wait"
    result = await tool.run({"command": command, "timeout": 0.5}, CTX)
    assert result.is_error and result.metadata["timed_out"]
    assert "time limit of 0.5s" in result.content
    for name in ("shell.pid", "child.pid"):
        pid = int((workspace.root / name).read_text())
        assert gone(pid), (name, process_group_state(pid))


async def test_bash_cancel_kills_the_process_group(workspace):
    tool = BashTool(workspace.root, kill_grace=0.5)
    command = "sleep 60 & echo $! > child.pid; echo $$ > shell.pid; wait"
    task = asyncio.create_task(tool.run({"command": command}, CTX))
    pidfile = workspace.root / "shell.pid"
    await until(lambda: pidfile.exists() and pidfile.read_text().strip())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for name in ("shell.pid", "child.pid"):
        pid = int((workspace.root / name).read_text())
        assert gone(pid), (name, process_group_state(pid))


async def test_bash_background_jobs_do_not_hold_the_call(workspace):
    tool = BashTool(workspace.root)
    command = "sleep 60 & echo $! > child.pid; echo started"
    result = await tool.run({"command": command, "timeout": 30}, CTX)
    assert result.content == "started\nExit code 0."
    assert not result.metadata["timed_out"]
    assert gone(int((workspace.root / "child.pid").read_text()))


# -- default_tools ----------------------------------------------------------------------


def test_default_tools(shell, workspace):
    tools = default_tools(shell, workspace.root)
    # The agent tool comes with the agent that runs it (sub_agent=), made by the kernel.
    assert [t.name for t in tools] == [n for n in DEFAULT_TOOL_NAMES if n != "agent"]
    changing = {t.name for t in tools if t.changes_state}
    assert changing == {
        "python",
        "write",
        "edit",
        "bash",
        "insert_cell",
        "edit_cell",
        "run_cell",
        "fetch",
    }
    for tool in tools:
        assert tool.spec.parameters["type"] == "object"
        assert tool.spec.description
    subset = default_tools(shell, str(workspace.root), include=["view", "bash"])
    assert [t.name for t in subset] == ["view", "bash"]
    with pytest.raises(ValueError, match="unknown tool name"):
        default_tools(shell, workspace.root, include=["vim"])
    with pytest.raises(WorkspaceError):
        default_tools(shell, workspace.root / "missing")
    with pytest.raises(ValueError, match="python_timeout must be a positive number"):
        default_tools(shell, workspace.root, python_timeout=0)
    (python_tool,) = default_tools(shell, workspace.root, include=["python"], python_timeout=5)
    assert "default 5," in python_tool.spec.description


def test_default_tools_workspace_is_the_working_directory(shell, workspace, monkeypatch):
    monkeypatch.chdir(workspace.root)
    (view,) = default_tools(shell, include=["view"])
    result = asyncio.run(view.run({"path": "inner.txt"}, CTX))
    assert result.content == "     1|inside"


def test_permission_summaries_are_the_exact_payload(shell, workspace):
    tools = {t.name: t for t in default_tools(shell, workspace.root)}
    assert tools["python"].permission_summary({"code": "x = 1\n"}) == "x = 1\n"
    assert tools["bash"].permission_summary({"command": "ls -la"}) == "ls -la"
    assert tools["insert_cell"].permission_summary({"code": "plot()"}) == "plot()"
    assert '"path": "a"' in tools["view"].permission_summary({"path": "a"})


async def test_summaries_and_diffs_mask_credentials(shell, workspace, monkeypatch):
    monkeypatch.setenv("EXAMPLE_TOKEN", "tok-0123456789")
    tools = {t.name: t for t in default_tools(shell, workspace.root)}
    args = {"path": ".env", "content": "TOKEN=tok-0123456789\n"}
    assert tools["write"].permission_summary(args).endswith("+TOKEN=[redacted]\n")
    assert tools["bash"].permission_summary({"command": "use tok-0123456789"}) == ("use [redacted]")
    result = await tools["write"].run(args, CTX)
    assert "tok-0123456789" not in result.content + result.metadata["diff"]
    assert (workspace.root / ".env").read_text() == "TOKEN=tok-0123456789\n"


async def test_python_cancel_before_the_code_starts_never_runs_it(shell, ns, monkeypatch):
    from jupyter_crush.tools import python as python_module

    held = []
    real_start = python_module._Worker.start
    # Hold the thread back so the cancel lands before it reaches the user's code.
    monkeypatch.setattr(python_module._Worker, "start", lambda worker: held.append(worker))
    task = asyncio.create_task(python(shell).run({"code": "ran = 1"}, CTX))
    await until(lambda: held)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    real_start(held[0])
    held[0].thread.join(timeout=10)
    assert "ran" not in ns


# -- properties -------------------------------------------------------------------------

NAME_CHARS = st.sampled_from([*"ab.-_x1", "*", "?", "[ab]", "[!a]"])


@given(
    pattern=st.lists(NAME_CHARS, min_size=1, max_size=6).map("".join),
    name=st.text(alphabet="ab.-_x1", min_size=0, max_size=6),
)
def test_name_globs_agree_with_fnmatch(pattern, name):
    assert GlobMatcher(pattern).matches(f"dir/{name}") == fnmatch.fnmatchcase(name, pattern)


SEGMENTS = st.sampled_from(["a", "b", "..", ".", "link_out", "link_in.txt", "inner.txt"])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(SEGMENTS, min_size=1, max_size=6), absolute=st.booleans())
def test_resolve_never_leaves_the_workspace(workspace, parts, absolute):
    path = "/".join(parts)
    if absolute:
        path = f"{workspace.root}/{path}"
    try:
        resolved = workspace.resolve(path)
    except WorkspaceError:
        return
    assert resolved == workspace.root or resolved.is_relative_to(workspace.root)
    # symlinks are already resolved: nothing under the answer can point elsewhere
    assert str(resolved) == os.path.realpath(resolved)
