"""The delta run view in a real JupyterLab 4 and Notebook 7: a long code answer streams
into the page and ends identical to the stored text, Stop during it, a reloaded page
re-syncs mid-stream, and a saved notebook reopened without its kernel shows the static
answer."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from lab_harness import LabServer
from test_lab import FINISH_REASONS, Notebook

from jupyter_crush import Role, TranscriptStore

pytestmark = [pytest.mark.slow, pytest.mark.browser]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

# Characters that break a naive renderer: HTML, entities, quotes, backticks, tabs, unicode.
CODE = "".join(
    f"def f_{i}(x):\n\treturn x < {i} and x & 1 or \"<b>{i}</b>\" + '`{i}`'  # ü &amp; {i}\n"
    for i in range(300)
)
INTRO = "Here is the **whole** module, as asked:"
OUTRO = "That is all of it."
LONG = f"{INTRO}\n\n```python\n{CODE}```\n\n{OUTRO}"
# The live view's answer once LONG has streamed: each rendered block's tag and text.
WHOLE = [["P", "Here is the whole module, as asked:"], ["PRE", CODE], ["P", OUTRO]]

PROMPT = "%%crush --new --fresh\nwrite the module"
RELEASE = 'gate.release()\nprint("released")'

READ_ANSWER = """(output) => [...output.querySelectorAll('.crush-answer .crush-block > *')]
    .map((e) => [e.tagName, e.tagName === 'PRE' ? e.textContent : e.innerText])"""


def setup_cell(rate: int, gate_at: str) -> str:
    """The model streams LONG at ``rate`` tokens/s and holds once ``gate_at`` streamed."""
    return f"""\
%load_ext jupyter_crush
from jupyter_crush.magics import current
from jupyter_crush.testing import ScriptedModel, tokenize
crush = current()
LONG = {LONG!r}
TOKENS = len(tokenize(LONG))
model = ScriptedModel([LONG], tokens_per_second={rate})
gate = model.gate(step=0, after_tokens={gate_at})
crush.use_model(model)
print("setup done")"""


def open_notebook(page: Any, lab_server: LabServer, url: Any, cells: list[str]) -> tuple:
    name = lab_server.write_notebook(cells)
    notebook = Notebook(page)
    notebook.open(url(name), cells=len(cells))
    notebook.run(0)
    notebook.wait_output(0, r"setup done")
    return notebook, name


def live_answer(notebook: Notebook, index: int) -> list[list[str]]:
    return notebook.output(index).first.evaluate(READ_ANSWER)


def wait_answer(notebook: Notebook, index: int, expected: list[list[str]]) -> None:
    deadline = time.monotonic() + 60
    while (shown := live_answer(notebook, index)) != expected:
        assert time.monotonic() < deadline, f"the view shows {shown!r}"
        notebook.page.wait_for_timeout(100)


def save(notebook: Notebook, lab_server: LabServer, name: str, cell: int) -> list[dict]:
    """Save with Ctrl+S; the cell's outputs as written to disk."""
    path = lab_server.root / name
    before = path.stat().st_mtime_ns
    notebook.cells.nth(cell).locator(".jp-InputPrompt").click()
    notebook.page.keyboard.press("Escape")
    notebook.page.keyboard.press("Control+s")
    deadline = time.monotonic() + 30
    while path.stat().st_mtime_ns == before:
        assert time.monotonic() < deadline, "the notebook was not saved"
        time.sleep(0.2)
    return json.loads(path.read_text())["cells"][cell]["outputs"]


def shutdown_kernels(page: Any) -> None:
    """Shut every kernel down through the server's REST API, as the page's own calls do."""
    page.evaluate(
        """async () => {
            const xsrf = (document.cookie.match(/_xsrf=([^;]+)/) || [])[1] || '';
            const headers = { 'X-XSRFToken': decodeURIComponent(xsrf) };
            const kernels = await (await fetch('/api/kernels')).json();
            for (const k of kernels) {
                await fetch(`/api/kernels/${k.id}`, { method: 'DELETE', headers });
            }
        }"""
    )


def stored_answer(lab_server: LabServer, session_id: str) -> str:
    store = TranscriptStore(lab_server.root / ".crush")
    try:
        (answer,) = [m for m in store.list_messages(session_id) if m.role == Role.ASSISTANT]
        return answer.text
    finally:
        store.close()


@pytest.mark.parametrize("front_end", ["lab", "notebook7"])
def test_a_long_code_answer_streams_whole_and_the_reopened_notebook_shows_it(
    page, lab_server, front_end
):
    url = lab_server.lab_url if front_end == "lab" else lab_server.notebook7_url
    # Held before its finish: the live view is read once everything has streamed.
    cells = [setup_cell(2000, "TOKENS"), PROMPT, RELEASE, FINISH_REASONS]
    notebook, name = open_notebook(page, lab_server, url, cells)
    notebook.run(1)
    wait_answer(notebook, 1, WHOLE)  # the code block byte for byte, < & " ` \t ü included
    notebook.screenshot(f"delta-long-code-{front_end}")
    notebook.run(2)
    notebook.wait_output(2, "released")
    notebook.wait_output(1, r"· done ·")
    assert notebook.finish_reasons(3) == ["end_turn"]
    assert stored_answer(lab_server, notebook.session_id) == LONG
    # The static answer replaced the view: the notebook's own Markdown renderer shows it.
    assert notebook.output(1).locator("pre").first.inner_text().rstrip("\n") == CODE.rstrip("\n")

    (shown,) = [
        o for o in save(notebook, lab_server, name, 1) if o["output_type"] == "display_data"
    ]
    assert WIDGET_VIEW not in shown["data"]
    assert "".join(shown["data"]["text/markdown"]).endswith(LONG)

    # Reopened with its kernel gone: no widget state, the saved static answer.
    shutdown_kernels(page)
    page.goto(url(name))
    reopened = Notebook(page)
    code = reopened.output(1).locator("pre").first
    code.wait_for()
    assert code.inner_text().rstrip("\n") == CODE.rstrip("\n")
    assert "done" in reopened.output_text(1)


def test_stop_during_a_long_code_answer(page, lab_server):
    cells = [setup_cell(150, "10**9"), PROMPT, FINISH_REASONS]
    notebook, _ = open_notebook(page, lab_server, lab_server.lab_url, cells)
    notebook.run(1)
    notebook.output(1).locator(".crush-live pre").wait_for()  # inside the code block
    page.wait_for_function(
        "() => document.querySelector('.crush-live pre').textContent.split('\\n').length > 20"
    )
    # The button says so in the click's own handler, before the kernel can answer (which,
    # here, is fast enough to replace the whole view with the static answer at once).
    shown = (
        notebook.output(1)
        .get_by_role("button", name="Stop")
        .evaluate("(button) => { button.click(); return [button.textContent, button.disabled]; }")
    )
    assert shown == ["Stopping…", True]
    notebook.wait_output(1, r"· canceled")
    assert notebook.finish_reasons(2) == ["canceled"]
    kept = stored_answer(lab_server, notebook.session_id)
    assert LONG.startswith(kept) and "def f_10(" in kept and kept != LONG
    # The static answer shows exactly what was kept: the open code block as streamed.
    static = notebook.output(1).locator("pre").first.inner_text()
    assert static.rstrip("\n") == kept.split("```python\n", 1)[1].rstrip("\n")


def test_a_page_reloaded_mid_stream_resyncs_the_view(page, lab_server):
    half = "TOKENS // 2"
    cells = [
        setup_cell(2000, half) + "\nend = model.gate(step=0, after_tokens=TOKENS)",
        PROMPT,
        RELEASE,
        "end.release()\nawait crush.last_view.wait()\n"
        'print("ended", crush.last_view.phase, crush.last_view.answer_markdown == LONG)',
    ]
    notebook, name = open_notebook(page, lab_server, lab_server.lab_url, cells)
    notebook.run(1)
    page.wait_for_function("() => document.querySelectorAll('.crush-live pre').length === 1")
    # The growing code block is held in chunks of whole lines (each laid out on its own).
    page.wait_for_function(
        f"() => document.querySelector('.crush-live pre').textContent.length > {len(CODE) // 3}"
    )
    notebook.page.wait_for_timeout(500)  # the gate: half of it streamed
    pre, chunks = page.evaluate(
        """() => [document.querySelector('.crush-live pre').textContent,
            [...document.querySelectorAll('.crush-live .crush-lines')].map((e) => e.textContent)]"""
    )
    assert len(chunks) >= 2 and "".join(chunks) == pre and CODE.startswith(pre)
    assert all(c.endswith("\n") and len(c) >= 4096 for c in chunks[:-1])
    # The page keeps the live view's output when saved; reloaded, it restores the widget
    # model from the kernel, and the view asks the kernel for everything shown so far.
    save(notebook, lab_server, name, 1)
    page.reload()
    notebook = Notebook(page)
    notebook.cells.nth(3).wait_for()
    notebook.output(1).locator(".crush-live pre").wait_for()
    partial = live_answer(notebook, 1)
    assert partial[0] == WHOLE[0]
    assert partial[1][0] == "PRE" and CODE.startswith(partial[1][1]) and partial[1][1]
    assert "running" in notebook.output_text(1)
    notebook.run(2)  # the rest streams into the re-synced view
    wait_answer(notebook, 1, WHOLE)
    notebook.screenshot("delta-reloaded")
    notebook.run(3)
    # The run ends in the kernel. (The page reloaded lost the output's display id, so the
    # static answer cannot replace this view; the saved notebook keeps its fallback.)
    notebook.wait_output(3, "ended done True")
