"""Stopping crush runs from a real JupyterLab 4 / Notebook 7 page in headless Chromium.

Each test writes a notebook whose agent streams a long scripted answer slowly, runs its
cells the way a person does (select, Shift+Enter), stops the run one way (the widget's Stop
button, the toolbar command, the shortcut, the status bar) and then asks the kernel's
transcript store, from a cell, how the turn ended. Only ``.jp-OutputArea-output`` is read
for cell results (the inputs contain the same words). Screenshots land in
test-artifacts/browser/.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from lab_harness import ARTIFACTS, LabServer

from jupyter_crush import Role, TranscriptStore

pytestmark = [pytest.mark.slow, pytest.mark.browser]

STOP_COMMAND = "jupyter-crush:stop-all"

# 5000 tokens at 20/s: the answer is still streaming whatever the test does meanwhile,
# on however loaded a machine; every test stops it long before its end.
SETUP = """\
%load_ext jupyter_crush
from jupyter_crush.magics import current
from jupyter_crush.testing import ScriptedModel
crush = current()
crush.use_model(ScriptedModel(["word " * 5000] * 10, tokens_per_second=20))
print("setup done")"""

PROMPT = "%%crush --new\nwrite a long answer"
QUEUED_PROMPT = "%%crush\nand then another one"
TRIVIAL = "print(6 * 7)"
FINISH_REASONS = """\
print("session:", crush.current_session_id, "finish:", *[
    m.finish_reason for m in crush.store.list_messages(crush.current_session_id)
    if m.role == "assistant"
])"""


def _is_info_reply(frame: str | bytes) -> bool:
    data = frame if isinstance(frame, bytes) else frame.encode()
    return b'"kernel_info_reply"' in data


class Notebook:
    """One notebook page, driven through the DOM and the keyboard."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.session_id = ""  # the kernel's current session, as finish_reasons last saw it

    def open(self, url: str, cells: int) -> None:
        # A cell run before the page has its kernel session is silently dropped, and the
        # toolbar says "idle" from the start; the page's own kernel_info_reply is the
        # moment it can run cells. Frames are watched from the socket's first event on.
        replies: list[bool] = []

        def watch(socket: Any) -> None:
            if "/api/kernels/" in socket.url:
                socket.on("framereceived", lambda frame: replies.append(_is_info_reply(frame)))

        self.page.on("websocket", watch)
        self.page.goto(url)
        self.cells.nth(cells - 1).wait_for()
        deadline = time.monotonic() + 90
        while not any(replies):
            assert time.monotonic() < deadline, "the page never connected to its kernel"
            self.page.wait_for_timeout(100)
        self.page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for()

    @property
    def cells(self) -> Any:
        return self.page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell")

    def run(self, index: int) -> None:
        """Select cell ``index`` in command mode and run it with Shift+Enter."""
        self.cells.nth(index).locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Escape")
        self.page.keyboard.press("Shift+Enter")

    def output(self, index: int) -> Any:
        return self.cells.nth(index).locator(".jp-OutputArea-output")

    def wait_output(self, index: int, pattern: str, timeout: float = 60_000) -> str:
        """Wait until cell ``index``'s output matches ``pattern``; return the output text."""
        regex = re.compile(pattern)
        self.output(index).filter(has_text=regex).first.wait_for(timeout=timeout)
        return self.output_text(index)

    def output_text(self, index: int) -> str:
        return "\n".join(self.output(index).all_inner_texts())

    def streamed_words(self, index: int) -> int:
        return self.output_text(index).count("word")

    def wait_streaming(self, index: int) -> None:
        """Wait until the crush cell shows a running answer with some words in it."""
        self.wait_output(index, r"running")
        self.wait_output(index, r"word word word")

    def finish_reasons(self, index: int) -> list[str]:
        """Run the FINISH_REASONS cell at ``index``: how the session's turns ended."""
        self.run(index)
        text = self.wait_output(index, r"finish:")
        self.session_id = text.split("session:", 1)[1].split()[0]
        return text.split("finish:", 1)[1].split()

    def screenshot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def stored_finish_reasons(lab_server: LabServer, session_id: str) -> list[str]:
    """The same, read from the store's files by this process rather than the kernel."""
    store = TranscriptStore(lab_server.root / ".crush")
    try:
        return [
            str(m.finish_reason)
            for m in store.list_messages(session_id)
            if m.role == Role.ASSISTANT
        ]
    finally:
        store.close()


def start_streaming_run(page: Any, lab_server: LabServer, url: Any, extra: list[str]) -> Notebook:
    """Open a notebook with SETUP, PROMPT and ``extra`` cells; run the first two."""
    name = lab_server.write_notebook([SETUP, PROMPT, *extra])
    notebook = Notebook(page)
    notebook.open(url(name), cells=2 + len(extra))
    notebook.run(0)
    notebook.wait_output(0, r"setup done")
    notebook.run(1)
    notebook.wait_streaming(1)
    return notebook


def test_stop_button_cancels_while_other_cells_still_run(page, lab_server):
    notebook = start_streaming_run(page, lab_server, lab_server.lab_url, [TRIVIAL, FINISH_REASONS])

    # The kernel is free while the agent streams: an ordinary cell runs and the answer
    # keeps growing afterwards.
    words = notebook.streamed_words(1)
    notebook.run(2)
    assert notebook.wait_output(2, r"42").strip() == "42"
    page.wait_for_function(
        f"""() => {{
            const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[1];
            const text = [...cell.querySelectorAll('.jp-OutputArea-output')]
                .map(e => e.innerText).join('\\n');
            return (text.match(/word/g) || []).length > {words};
        }}"""
    )
    assert "running" in notebook.output_text(1)
    notebook.screenshot("stop-button-streaming")

    notebook.output(1).get_by_role("button", name="Stop").click()
    notebook.wait_output(1, r"canceled")
    assert notebook.finish_reasons(3) == ["canceled"]
    # On disk, not only in the kernel's memory.
    assert stored_finish_reasons(lab_server, notebook.session_id) == ["canceled"]


SLEEPER = 'import time\ntime.sleep(8)\nprint("slept")'


@pytest.mark.parametrize("front_end", ["lab", "notebook7"])
def test_stop_button_lands_while_another_cell_sleeps(page, lab_server, front_end):
    url = lab_server.lab_url if front_end == "lab" else lab_server.notebook7_url
    notebook = start_streaming_run(page, lab_server, url, [SLEEPER, FINISH_REASONS])
    notebook.run(2)
    notebook.cells.nth(2).locator(".jp-InputPrompt", has_text="*").wait_for()

    clicked = time.monotonic()
    notebook.output(1).get_by_role("button", name="Stop").click()
    # The page sends the click on a kernel subshell; the kernel takes it there, not
    # behind the sleeping cell: the run is marked while that cell still runs.
    notebook.output(1).get_by_role("button", name="Stopping…").wait_for()
    shown = time.monotonic() - clicked
    assert "slept" not in notebook.output_text(2)
    print(f"{front_end}: Stop shown as Stopping… {shown * 1000:.0f} ms after the click")
    notebook.screenshot(f"stop-while-busy-{front_end}")

    # The stream stops at the loop's first tick after the sleep; the sleeping cell is
    # not interrupted.
    notebook.wait_output(2, r"slept")
    notebook.wait_output(1, r"canceled")
    assert notebook.finish_reasons(3) == ["canceled"]
    assert stored_finish_reasons(lab_server, notebook.session_id) == ["canceled"]


def test_toolbar_command_and_status_bar(page, lab_server):
    notebook = start_streaming_run(page, lab_server, lab_server.lab_url, [FINISH_REASONS])

    status = page.locator(".jp-crush-StatusItem")
    status.filter(has_text="Crush: 1 running, 0 queued").wait_for()
    notebook.screenshot("toolbar-before-stop")

    page.locator(f'.jp-NotebookPanel-toolbar [data-command="{STOP_COMMAND}"]').click()
    notebook.wait_output(1, r"canceled")
    status.filter(has_text="Crush: idle").wait_for()
    assert notebook.finish_reasons(2) == ["canceled"]


def test_shortcut_stops_the_run(page, lab_server):
    notebook = start_streaming_run(page, lab_server, lab_server.lab_url, [FINISH_REASONS])

    # Command mode on the notebook, as after running a cell.
    notebook.cells.nth(1).locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")
    page.keyboard.press("Control+Alt+Period")
    notebook.wait_output(1, r"canceled")
    assert notebook.finish_reasons(2) == ["canceled"]


def test_status_bar_click_stops_the_run_and_its_queue(page, lab_server):
    notebook = start_streaming_run(
        page, lab_server, lab_server.lab_url, [QUEUED_PROMPT, FINISH_REASONS]
    )
    notebook.run(2)
    notebook.wait_output(2, r"queued")
    status = page.locator(".jp-crush-StatusItem")
    status.filter(has_text="Crush: 1 running, 1 queued").wait_for()
    notebook.screenshot("status-bar-queued")

    status.click()
    notebook.wait_output(1, r"canceled")
    notebook.wait_output(2, r"canceled")
    status.filter(has_text="Crush: idle").wait_for()
    # The queued prompt is kept as a canceled turn too.
    assert notebook.finish_reasons(3) == ["canceled", "canceled"]
    assert stored_finish_reasons(lab_server, notebook.session_id) == ["canceled", "canceled"]


def test_command_palette_lists_the_command_once_crush_is_loaded(page, lab_server):
    name = lab_server.write_notebook(['%load_ext jupyter_crush\nprint("loaded")'])
    notebook = Notebook(page)
    notebook.open(lab_server.lab_url(name), cells=1)
    button = f'.jp-NotebookPanel-toolbar [data-command="{STOP_COMMAND}"]'
    # Greyed out while the kernel has no crush: nothing to stop there.
    page.locator(f'{button}[aria-disabled="true"]').wait_for()
    assert not page.locator(".jp-crush-StatusItem").is_visible()
    notebook.run(0)
    notebook.wait_output(0, r"loaded")
    page.locator(".jp-crush-StatusItem", has_text="Crush: idle").wait_for()
    page.locator(f'{button}[aria-disabled="false"]').wait_for()

    notebook.cells.nth(0).locator(".jp-InputPrompt").click()
    page.keyboard.press("Control+Shift+C")
    page.locator(".lm-CommandPalette-input").fill("crush")
    item = page.locator(".lm-CommandPalette-item", has_text="Crush: stop running agents")
    item.wait_for()
    # The palette shows the shortcut next to the command.
    assert "Alt" in item.inner_text()


def test_notebook7_toolbar_and_shortcut(page, lab_server):
    notebook = start_streaming_run(
        page, lab_server, lab_server.notebook7_url, [PROMPT, FINISH_REASONS]
    )
    page.locator(f'.jp-NotebookPanel-toolbar [data-command="{STOP_COMMAND}"]').click()
    notebook.wait_output(1, r"canceled")
    notebook.screenshot("notebook7-toolbar")

    # A second run in a new session, stopped with the shortcut while typing in a cell.
    notebook.run(2)
    notebook.wait_streaming(2)
    notebook.cells.nth(3).locator(".cm-content").click()
    page.locator(".jp-Notebook.jp-mod-editMode").wait_for()
    page.keyboard.press("Control+Alt+Period")
    notebook.wait_output(2, r"canceled")
    assert notebook.finish_reasons(3) == ["canceled"]


def test_status_follows_a_kernel_restart(page, lab_server):
    name = lab_server.write_notebook(['%load_ext jupyter_crush\nprint("loaded")'])
    notebook = Notebook(page)
    notebook.open(lab_server.lab_url(name), cells=1)
    notebook.run(0)
    notebook.wait_output(0, r"loaded")
    status = page.locator(".jp-crush-StatusItem")
    status.filter(has_text="Crush: idle").wait_for()

    # A restarted kernel has no crush until it is loaded again: the item goes away...
    notebook.cells.nth(0).locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")
    page.keyboard.press("0")
    page.keyboard.press("0")
    page.locator(".jp-Dialog .jp-mod-accept").click()
    status.wait_for(state="hidden")
    # ...and comes back when the kernel says hello after %load_ext.
    notebook.run(0)
    status.filter(has_text="Crush: idle").wait_for()
