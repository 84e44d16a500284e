"""The notebook tool and ``%crush fix`` in a real kernel, with a ScriptedModel whose
requests the test reads back: the kernel knows its notebook from ``JPY_SESSION_NAME`` (as
Jupyter Server sets it), cells carry their ids as JupyterLab and nbclient send them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.kernel_harness import SETUP, Kernel, scripted

pytestmark = pytest.mark.slow

CELLS = [
    (
        "load",
        "import pandas as pd\nsales = pd.DataFrame({'city': ['Lyon', 'Nice'], 'price': [3.5, 4]})",
    ),
    ("look", "sales.describe()"),
    ("ask", "%%crush --wait\nWhat is in my notebook?"),
]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kernel")
    notebook = folder / "sales.ipynb"
    cells = [
        {
            "cell_type": "code",
            "id": cell_id,
            "metadata": {},
            "source": source,
            "execution_count": None,
            "outputs": [],
        }
        for cell_id, source in CELLS
    ]
    cells[1]["outputs"] = [
        {
            "output_type": "error",
            "ename": "NameError",
            "evalue": "name 'sales' is not defined",
            "traceback": ["\x1b[31mNameError\x1b[0m: name 'sales' is not defined"],
        }
    ]
    notebook.write_text(
        json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    # The kernel runs in the notebook's folder (which also holds the store), as under Jupyter.
    k = Kernel(folder, env={"JPY_SESSION_NAME": str(notebook)})
    k.run(SETUP)
    yield k, notebook
    k.shutdown()


def request_texts(kernel: Kernel, step: int) -> list[str]:
    """The texts (and tool results) of the messages the model got in request ``step``."""
    return kernel.value(
        f"[m.text + ''.join(r.content for r in m.tool_results) "
        f"for m in model.requests[{step}].messages]"
    )


def test_notebook_tool_answers_from_the_notebook_on_disk(kernel):
    k, notebook = kernel
    k.run(
        "from jupyter_crush.testing import Reply, ToolCall\n"
        "model = ScriptedModel([Reply(tool_calls=[ToolCall('notebook', {})]), 'Two cells.'])\n"
        "crush.use_model(model)"
    )
    for cell_id, source in CELLS[:2]:
        k.execute(source, cell_id=cell_id)
    result = k.execute(CELLS[2][1], cell_id="ask")
    assert not result.errors
    answer = request_texts(k, 1)[-1]
    assert answer.startswith(f"Notebook (file on disk: {notebook}), ")
    assert "## cell 0 id=load code [ ]\nimport pandas as pd" in answer
    # Cells run in the kernel but absent from the file (the test's setup) follow it, typed
    # as they were run.
    assert "## cell 3 code [1] (kernel history)\n\n%load_ext jupyter_crush" in answer
    assert "[error] NameError: name 'sales' is not defined" in answer  # the saved output
    assert (
        "## cell 2 id=ask code [ ] (executing now; the prompt you are answering)\n"
        "%%crush --wait\nWhat is in my notebook?"
    ) in answer
    # The tool is read-only: no permission was asked for it.
    assert (
        k.value(
            "[m.finish_reason for m in crush.store.list_messages(crush.current_session_id)"
            " if str(m.role) == 'assistant'][-1]"
        )
        == "end_turn"
    )


def test_fix_after_a_real_name_error(kernel):
    k, _ = kernel
    k.run("model = ScriptedModel(['Use `sales`, defined above.']); crush.use_model(model)")
    failed = k.execute("total = sale['price'].sum()", cell_id="typo")
    assert failed.errors[0]["ename"] == "NameError"
    result = k.execute("%crush fix --wait", cell_id="fix")
    assert not result.errors
    prompt = request_texts(k, 0)[-1]
    assert prompt.startswith("Fix the error in my notebook")
    assert (
        "Failing cell (In [" in prompt and "cell id typo):\ntotal = sale['price'].sum()" in prompt
    )
    assert "Exception: NameError: name 'sale' is not defined" in prompt
    assert "----> 1 total = sale['price'].sum()" in prompt
    assert k.value("crush.last_view.phase") == "done"


def test_fix_with_code_format_after_a_key_error_in_pandas(kernel):
    k, _ = kernel
    k.run(
        "model = ScriptedModel(['The column is `price`.\\n\\n```python\\n"
        'mean = sales["price"].mean()\\n```\'])\n'
        "crush.use_model(model)"
    )
    failed = k.execute("mean = sales['prize'].mean()", cell_id="column")
    assert failed.errors[0]["ename"] == "KeyError"
    result = k.execute("%crush fix -f code the column names are lowercase", cell_id="fix2")
    prompt = request_texts(k, 0)[-1]
    assert "Exception: KeyError: 'prize'" in prompt
    assert "pandas" in prompt  # the traceback goes through pandas' own frames
    assert prompt.count("mean = sales['prize'].mean()") >= 2  # the cell and its traceback line
    assert "the column names are lowercase" in prompt
    # No page with the extension: the corrected cell arrives through IPython's payload.
    assert result.reply["content"]["payload"] == [
        {"source": "set_next_input", "text": 'mean = sales["price"].mean()', "replace": False}
    ]


def test_no_recent_error_is_one_line_and_no_request(tmp_path):
    k = Kernel(tmp_path)
    try:
        k.run(SETUP + "model = ScriptedModel(['unused']); crush.use_model(model)")
        out = k.run("%crush fix")
        assert out == "No recent error to fix: run the failing cell, then %crush fix.\n"
        assert k.value("len(model.requests)") == 0
    finally:
        k.shutdown()


def test_notebook_path_that_cannot_be_found_is_a_tool_error(kernel):
    k, notebook = kernel
    k.run(
        "model = ScriptedModel([Reply(tool_calls=[ToolCall('notebook', {'path': 'gone.ipynb'})]),"
        " 'Sorry.'])\ncrush.use_model(model)"
    )
    k.execute("%%crush --wait\nread gone.ipynb", cell_id="gone")
    result = request_texts(k, 1)[-1]
    missing = Path(notebook).parent / "gone.ipynb"
    assert result == f"notebook: notebook {missing} not found; give a path to an existing .ipynb"
    assert k.value("crush.last_view.phase") == "done"  # the turn went on


def test_fix_queues_behind_a_running_prompt_and_stop_keeps_it(kernel):
    k, _ = kernel
    k.run(scripted(400, 100, hold_after=20))  # the first prompt streams, then holds
    k.run("%%crush --new -s busy\nwrite a lot")
    k.run("first = crush.last_view")
    k.execute("1 / 0", cell_id="zero")
    k.execute("%crush fix", cell_id="fix-queued")
    assert k.value("crush.last_view.phase") == "queued"
    k.run("%crush cancel")
    k.run("import asyncio; await asyncio.gather(first.wait(), crush.last_view.wait())")
    turns = k.value(
        "[(str(m.role), m.text[:26], m.finish_reason and str(m.finish_reason)) "
        "for m in crush.store.list_messages(crush.find_session('busy').id)]"
    )
    # Both turns are kept as canceled, the fix prompt with its attachment, never sent.
    assert [t[2] for t in turns if t[0] == "assistant"] == ["canceled", "canceled"]
    assert turns[2][:2] == ["user", "Fix the error in my notebo"]
    assert k.value("len(model.requests)") == 1
