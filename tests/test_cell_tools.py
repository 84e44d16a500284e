"""edit_cell and run_cell against a page played in Python: the kernel's real comm channel
(notebook/labcomm.py), a comm whose other end answers as labextension/src/*.ts does."""

from __future__ import annotations

import asyncio
import base64
import io
import signal
from types import SimpleNamespace
from typing import Any

import pytest
from support.bounded import until, within

from jupyter_crush.core.tools import ToolContext
from jupyter_crush.notebook import interrupt, labcomm
from jupyter_crush.notebook import state as notebook_state
from jupyter_crush.tools import run_cell as run_cell_module
from jupyter_crush.tools.edit_cell import NO_FRONT_END as NO_PAGE_FOR_EDITS
from jupyter_crush.tools.edit_cell import EditCellTool
from jupyter_crush.tools.run_cell import NO_FRONT_END as NO_PAGE_FOR_RUNS
from jupyter_crush.tools.run_cell import RunCellTool

ORIGIN = {"jupyter_crush": {"session": "s1", "message": "m1", "model": "p:m", "tool_call": "c1"}}


class Changes:
    """The turn's change log (core/changes.py), keeping what it is told."""

    def __init__(self) -> None:
        self.edits: list[tuple[str, str, str]] = []
        self.code: list[str] = []

    def before_code(self, namespace: dict[str, Any], code: str) -> None:
        self.code.append(code)

    def file_changed(self, path: str, previous: bytes | None) -> None:
        pass

    def cell_inserted(self, cell_id: str) -> None:
        pass

    def cell_edited(self, cell_id: str, before: str, after: str) -> None:
        self.edits.append((cell_id, before, after))


class Page:
    """The extension's end of the comm: the notebook's cells, and what it was asked."""

    def __init__(self, cells: list[dict[str, Any]], silent: bool = False) -> None:
        self.cells = cells
        self.silent = silent
        self.requests: list[dict[str, Any]] = []
        self.waiting: dict[str, int] = {}  # edit id or cell id -> the request awaiting it
        self.kernel = SimpleNamespace(get_parent=lambda _channel: {})
        self.channel = labcomm._LabChannel(lambda: None)
        self.kernel._jupyter_crush_lab = self.channel
        self.comm = SimpleNamespace(comm_id="page", send=self._receive)
        self.comm.on_msg = lambda callback: None
        self.comm.on_close = lambda callback: None
        self.channel.on_open(self.comm, {"content": {}})

    def _receive(self, data: dict[str, Any]) -> None:
        if data.get("event") != "request":
            return
        self.requests.append(data)
        if self.silent:
            return
        op = data["op"]
        if op == "cells":
            self.answer(data["id"], {"path": "nb.ipynb", "dirty": False, "cells": self.cells})
        elif op in ("propose_edit", "run_cell"):
            self.answer(data["id"], {"pending": True})
            self.waiting[data.get("edit") or data["cell"]] = data["id"]
        elif op == "withdraw_edit":
            request_id = self.waiting.pop(data["edit"], None)
            if request_id is not None:
                self.answer(request_id, {"decision": "withdrawn"})

    def answer(self, request_id: int, reply: dict[str, Any]) -> None:
        # Sent under the channel's lock: the page's answer comes back later, as over a socket.
        message = {"content": {"data": {**reply, "action": "reply", "id": request_id}}}
        asyncio.get_running_loop().call_soon(self.channel._on_msg, self.comm, message)

    def decide(self, edit: str, reply: dict[str, Any]) -> None:
        request = next(r for r in self.requests if r.get("edit") == edit)
        if reply.get("decision") == "accepted":
            cell = next(c for c in self.cells if c["id"] == request["cell"])
            cell["source"] = request["after"]
            cell["metadata"] = {**cell.get("metadata", {}), **request["metadata"]}
        self.answer(self.waiting.pop(edit), reply)

    def ops(self) -> list[str]:
        return [r["op"] for r in self.requests]


def code_cell(cell_id: str, source: str) -> dict[str, Any]:
    return {"id": cell_id, "cell_type": "code", "source": source, "metadata": {}, "outputs": []}


def shell_for(page: Page | None) -> Any:
    kernel = page.kernel if page is not None else SimpleNamespace(get_parent=lambda _c: {})
    return SimpleNamespace(kernel=kernel, user_ns={})


def context(changes: Changes, stop: Any = lambda: None) -> ToolContext:
    return ToolContext("s1", "c1", stop, changes=changes)


@pytest.fixture
def page() -> Page:
    return Page([code_cell("a", "x = 1\ny = x + 1\n"), code_cell("b", "print(y)")])


def edit_tool(page: Page | None) -> EditCellTool:
    return EditCellTool(shell_for(page), lambda ctx: ORIGIN)


# -- edit_cell -------------------------------------------------------------------------------


async def test_an_accepted_edit_is_shown_as_a_diff_then_lands_with_its_origin(page):
    changes = Changes()
    call = asyncio.ensure_future(
        edit_tool(page).run(
            {"cell_id": "a", "search": "x + 1", "replace": "x * 2"}, context(changes)
        )
    )
    await until(lambda: "c1" in page.waiting)
    proposed = page.requests[-1]
    assert proposed["op"] == "propose_edit" and proposed["cell"] == "a"
    assert proposed["before"] == "x = 1\ny = x + 1\n"
    assert proposed["after"] == "x = 1\ny = x * 2\n"
    assert proposed["metadata"] == ORIGIN
    assert not call.done()  # nothing is decided, nothing changed, until the user decides
    assert page.cells[0]["source"] == "x = 1\ny = x + 1\n"
    page.decide("c1", {"decision": "accepted"})
    result = await within(call)
    assert not result.is_error
    assert "accepted" in result.content
    assert result.metadata["decision"] == "accepted"
    assert changes.edits == [("a", "x = 1\ny = x + 1\n", "x = 1\ny = x * 2\n")]


async def test_a_rejected_edit_tells_the_model_the_users_words_and_changes_nothing(page):
    changes = Changes()
    call = asyncio.ensure_future(
        edit_tool(page).run({"cell_id": "b", "source": "print(y * 10)"}, context(changes))
    )
    await until(lambda: "c1" in page.waiting)
    page.decide("c1", {"decision": "rejected", "reason": "keep the plain print"})
    result = await within(call)
    assert "rejected" in result.content
    assert '"keep the plain print"' in result.content
    assert page.cells[1]["source"] == "print(y)"
    assert changes.edits == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"cell_id": "zz", "source": "1"}, "edit_cell: no cell has id 'zz'"),
        ({"cell_id": "a", "search": "nowhere", "replace": "1"}, "'search' does not occur"),
        ({"cell_id": "a", "search": "x", "replace": "z"}, "'search' occurs 2 times"),
        ({"cell_id": "b", "source": "print(y)"}, "the new source is the cell's source already"),
    ],
)
async def test_an_edit_the_cell_cannot_take_is_one_line_and_nothing_is_proposed(
    page, args, expected
):
    result = await within(edit_tool(page).run(args, context(Changes())))
    assert result.is_error
    assert expected in result.content
    assert "\n" not in result.content
    assert "nothing changed" in result.content
    assert page.ops() == ["cells"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"source": "1"}, "'cell_id' must be a cell's id"),
        ({"cell_id": "a"}, "give either 'source'"),
        ({"cell_id": "a", "source": "1", "search": "x", "replace": "y"}, "give either 'source'"),
        ({"cell_id": "a", "search": "x"}, "'search' and 'replace' go together"),
        ({"cell_id": "a", "search": "", "replace": "y"}, "'search' must not be empty"),
    ],
)
async def test_bad_arguments_are_one_line_and_ask_the_page_nothing(page, args, expected):
    result = await within(edit_tool(page).run(args, context(Changes())))
    assert result.is_error and expected in result.content and "\n" not in result.content
    assert page.requests == []


async def test_without_a_page_the_edit_is_refused_in_one_line(monkeypatch):
    result = await within(edit_tool(None).run({"cell_id": "a", "source": "1"}, context(Changes())))
    assert result.content == NO_PAGE_FOR_EDITS and result.is_error
    # A page that does not answer (an older extension, a page still loading) is no page.
    monkeypatch.setattr("jupyter_crush.tools.notebook.LIVE_TIMEOUT", 0.05)
    silent = Page([code_cell("a", "x")], silent=True)
    result = await within(
        edit_tool(silent).run({"cell_id": "a", "source": "1"}, context(Changes()))
    )
    assert result.content == NO_PAGE_FOR_EDITS


async def test_a_stop_while_the_edit_waits_withdraws_it_and_the_cell_keeps_its_source(page):
    changes = Changes()
    call = asyncio.ensure_future(
        edit_tool(page).run({"cell_id": "a", "source": "y = 0\n"}, context(changes))
    )
    await until(lambda: "c1" in page.waiting)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(call)
    assert page.ops() == ["cells", "propose_edit", "withdraw_edit"]
    assert page.requests[-1]["edit"] == "c1"
    assert page.cells[0]["source"] == "x = 1\ny = x + 1\n"
    assert changes.edits == []


async def test_a_stop_that_covers_the_call_before_the_diff_shows_proposes_nothing(page):
    def stopped() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await within(
            edit_tool(page).run({"cell_id": "a", "source": "1"}, context(Changes(), stopped))
        )
    assert page.ops() == ["cells"]


async def test_a_page_that_closes_while_the_edit_waits_leaves_the_cell_unchanged(page):
    call = asyncio.ensure_future(
        edit_tool(page).run({"cell_id": "a", "source": "1"}, context(Changes()))
    )
    await until(lambda: "c1" in page.waiting)
    page.channel._forget("page")
    result = await within(call)
    assert result.is_error
    assert result.content == f"edit_cell: {labcomm.PAGE_CLOSED}; nothing changed"


# -- run_cell --------------------------------------------------------------------------------


def png() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), "red").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


async def test_run_cell_returns_text_the_traceback_and_images(page):
    changes = Changes()
    shell = shell_for(page)
    call = asyncio.ensure_future(RunCellTool(shell).run({"cell_id": "b"}, context(changes)))
    await until(lambda: "b" in page.waiting)
    assert page.requests[-1] == {**page.requests[-1], "op": "run_cell", "source": "print(y)"}
    assert changes.code == ["print(y)"]  # told before the cell ran
    outputs = [
        {"output_type": "stream", "name": "stdout", "text": "partial\n"},
        {"output_type": "display_data", "data": {"image/png": png(), "text/plain": "<Figure>"}},
        {
            "output_type": "error",
            "ename": "NameError",
            "evalue": "name 'y' is not defined",
            "traceback": ["\x1b[0;31mNameError\x1b[0m", "----> 1 print(y)"],
        },
    ]
    page.answer(page.waiting.pop("b"), {"ok": False, "execution_count": 7, "outputs": outputs})
    result = await within(call)
    assert result.is_error  # the cell raised
    assert result.content.startswith("Cell b ran as [7], and raised an error:")
    assert "partial" in result.content
    assert "NameError: name 'y' is not defined" in result.content
    assert "----> 1 print(y)" in result.content and "\x1b" not in result.content
    assert [(i.media_type, i.width, i.height) for i in result.images] == [("image/png", 8, 6)]
    assert result.metadata == {"cell_id": "b", "execution_count": 7, "error": True}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"cell_id": "zz"}, "run_cell: no cell has id 'zz'"),
        ({"cell_id": ""}, "run_cell: 'cell_id' must be a cell's id"),
    ],
)
async def test_run_cell_bad_input_is_one_line_and_runs_nothing(page, args, expected):
    changes = Changes()
    result = await within(RunCellTool(shell_for(page)).run(args, context(changes)))
    assert result.is_error and expected in result.content and "\n" not in result.content
    assert "run_cell" not in page.ops() and changes.code == []


async def test_run_cell_without_a_page_says_so_in_one_line():
    result = await within(RunCellTool(shell_for(None)).run({"cell_id": "a"}, context(Changes())))
    assert result.content == NO_PAGE_FOR_RUNS and result.is_error


async def test_run_cell_refuses_the_prompts_cell_and_a_prompt_that_waits_for_it(page):
    shell = shell_for(page)
    page.kernel.get_parent = lambda _channel: {"metadata": {"cellId": "p"}}
    result = await within(RunCellTool(shell).run({"cell_id": "p"}, context(Changes())))
    assert "is the prompt you are answering" in result.content
    # The prompt's cell still executing waits for this answer: its shell runs nothing else.
    shell._jupyter_crush_cells = SimpleNamespace(executing_cell="p")
    result = await within(RunCellTool(shell).run({"cell_id": "a"}, context(Changes())))
    assert "the prompt's cell waits for this answer" in result.content
    assert page.requests == []


def test_a_stop_interrupts_the_running_cell_as_the_kernels_interrupt_does(monkeypatch):
    signals: list[int] = []
    monkeypatch.setattr(interrupt.os, "kill", lambda _pid, sig: signals.append(sig))
    monkeypatch.setattr(run_cell_module, "STOP_POLL", 0.001)
    shell = SimpleNamespace(_jupyter_crush_cells=SimpleNamespace(executing_cell="other"))
    stopped = False

    def stop_if_covered() -> None:
        if stopped:
            raise asyncio.CancelledError

    watch = run_cell_module.StopWatch(shell, "b", stop_if_covered)
    stopped = True
    # Another cell runs: ours is still queued behind it, and the interrupt waits for it.
    asyncio.run(asyncio.sleep(0.05))
    assert signals == []
    shell._jupyter_crush_cells.executing_cell = "b"
    asyncio.run(until(lambda: watch.interrupted))
    assert signals == [signal.SIGINT]
    # Crush's post-run hook reads it as this run's Stop, not the user's ■, once.
    assert interrupt.take_cell_interrupt(shell)
    assert not interrupt.take_cell_interrupt(shell)


def test_a_cell_that_ends_before_any_stop_is_not_interrupted(monkeypatch):
    signals: list[int] = []
    monkeypatch.setattr(interrupt.os, "kill", lambda _pid, sig: signals.append(sig))
    shell = SimpleNamespace(_jupyter_crush_cells=SimpleNamespace(executing_cell="b"))
    watch = run_cell_module.StopWatch(shell, "b", lambda: None)
    watch.finish()
    shell._jupyter_crush_cells.executing_cell = ""
    assert not interrupt.interrupt_cell(shell, "b")
    assert signals == [] and not watch.interrupted
    assert notebook_state.get(shell) is shell._jupyter_crush_cells


async def test_both_tools_are_registered_and_ask_before_they_run():
    from jupyter_crush.core.tools import Decision, PermissionRequest
    from jupyter_crush.tools import DEFAULT_TOOL_NAMES, default_tools
    from jupyter_crush.tools.permissions import NO_BROKER_REASON, PermissionPolicy

    shell = shell_for(None)
    tools = {t.name: t for t in default_tools(shell, include=["edit_cell", "run_cell"])}
    assert {"edit_cell", "run_cell"} <= set(DEFAULT_TOOL_NAMES) and set(tools) == {
        "edit_cell",
        "run_cell",
    }
    assert all(tool.changes_state for tool in tools.values())
    policy = PermissionPolicy(tools=tools.values())
    for name in tools:
        decision = await policy.ask(PermissionRequest("s1", f"call-{name}", name, {"cell_id": "a"}))
        assert (
            decision is Decision.DENY and policy.denial_reason(f"call-{name}") == NO_BROKER_REASON
        )
    summary = tools["edit_cell"].permission_summary(
        {"cell_id": "a", "search": "x + 1", "replace": "x * 2"}
    )
    assert summary.startswith("cell a: replace\n") and "-x + 1\n+x * 2" in summary
    assert tools["run_cell"].permission_summary({"cell_id": "a"}) == "run cell a"


async def test_a_stop_that_covers_the_call_before_the_cell_runs_runs_nothing(page):
    def stopped() -> None:
        raise asyncio.CancelledError

    changes = Changes()
    with pytest.raises(asyncio.CancelledError):
        await within(RunCellTool(shell_for(page)).run({"cell_id": "b"}, context(changes, stopped)))
    assert page.ops() == ["cells"] and changes.code == []


def test_the_stop_watch_outlives_the_wait_only_after_a_stop():
    shell = SimpleNamespace(_jupyter_crush_cells=SimpleNamespace(executing_cell=""))

    def stopped() -> None:
        raise asyncio.CancelledError

    # The wait ended for another reason (the kernel shutting down): nothing to interrupt.
    quiet = run_cell_module.StopWatch(shell, "b", lambda: None)
    quiet.finish_unless_stopped()
    assert quiet._finished.is_set()
    # After a Stop, the cell may still be queued: the watch goes on, to interrupt it.
    watching = run_cell_module.StopWatch(shell, "b", stopped)
    watching.finish_unless_stopped()
    assert not watching._finished.is_set()
    watching.finish()


# -- a code block's Insert below, as the run view takes it -------------------------------


async def test_an_insert_click_hands_the_blocks_code_to_the_kernels_inserter():
    from jupyter_crush.view.base import RunLabels
    from jupyter_crush.view.delta import DeltaRunView

    view = DeltaRunView(
        RunLabels("analysis", "scripted:model"),
        on_stop=lambda: None,
        session_id="s1",
        loop=asyncio.get_running_loop(),
    )
    inserted: list[str] = []
    view.code_blocks.inserter = inserted.append
    for content in (
        {"event": "click", "target": "insert", "code": "df.plot()"},
        {"event": "click", "target": "insert", "code": "   "},  # nothing to insert
        {"event": "click", "target": "insert", "code": ["df.plot()"]},  # not code
        {"event": "click", "target": "stop-not", "code": "x = 1"},
    ):
        view._on_message(view.widget, content, [])
    assert inserted == ["df.plot()"]
    view.close()
