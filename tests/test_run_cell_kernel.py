"""run_cell and edit_cell in a real kernel, the page played over the extension's comm the way
the lab extension plays it: the cell runs as an ordinary execute_request on the main shell
while the agent's task waits on the kernel's loop for the page's answer (no deadlock), a Stop
interrupts the running cell as ■ does without stopping the kernel's other runs, and a Stop
while an edit waits for review withdraws it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from support.kernel_harness import SETUP, Kernel

pytestmark = pytest.mark.slow  # real kernels

MODEL = """
from jupyter_crush.testing import Reply, ToolCall
model = ScriptedModel(by_prompt={
    "raise": [Reply(tool_calls=[ToolCall("run_cell", {"cell_id": "c-raise"})]), "Seen."],
    "sleep": [Reply(tool_calls=[ToolCall("run_cell", {"cell_id": "c-sleep"})]), "Never."],
    "other": ["word " * 400],
    "edit": [Reply(tool_calls=[ToolCall("edit_cell", {"cell_id": "c-edit", "source": "x = 2"})]),
             "Never."],
}, tokens_per_second=20)
crush.use_model(model)
"""


class Page:
    """The extension's end of the ``jupyter_crush`` comm, on a subshell as JupyterLab's."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.subshell = kernel.create_subshell()
        self.comm_id = uuid.uuid4().hex
        self._send(
            "comm_open",
            {"comm_id": self.comm_id, "target_name": "jupyter_crush", "data": {}},
        )

    def _send(self, msg_type: str, content: dict[str, Any], subshell: bool = True) -> str:
        msg = self.kernel.kc.session.msg(msg_type, content)
        if subshell:
            msg["header"]["subshell_id"] = self.subshell
        self.kernel.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def request(self, op: str, timeout: float = 30) -> dict[str, Any]:
        """The kernel's next request ``op`` on this comm."""
        msg = self.kernel.wait_iopub(
            lambda m: (
                m["msg_type"] == "comm_msg"
                and m["content"]["comm_id"] == self.comm_id
                and m["content"]["data"].get("op") == op
            ),
            timeout,
        )
        return msg["content"]["data"]

    def answer(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        data = {**reply, "action": "reply", "id": request["id"]}
        self._send("comm_msg", {"comm_id": self.comm_id, "data": data})

    def run_cell(self, cell_id: str, source: str) -> str:
        """Run the cell as the page does: an execute_request on the main shell."""
        content = {
            "code": source,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        }
        msg = self.kernel.kc.session.msg("execute_request", content, metadata={"cellId": cell_id})
        self.kernel.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]


def cells(cell_id: str, source: str) -> dict[str, Any]:
    cell = {"id": cell_id, "cell_type": "code", "source": source, "metadata": {}, "outputs": []}
    return {"path": "nb.ipynb", "dirty": False, "cells": [cell]}


def execution(kernel: Kernel, msg_id: str, timeout: float = 60) -> list[dict[str, Any]]:
    """The iopub messages of execution ``msg_id``, once it is idle."""
    kernel.wait_iopub(
        lambda m: (
            m["parent_header"].get("msg_id") == msg_id
            and m["msg_type"] == "status"
            and m["content"]["execution_state"] == "idle"
        ),
        timeout,
    )
    return [m for m in kernel.iopub if m["parent_header"].get("msg_id") == msg_id]


def nbformat_outputs(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    outputs = []
    for msg in messages:
        content = msg["content"]
        if msg["msg_type"] == "stream":
            outputs.append(
                {"output_type": "stream", "name": content["name"], "text": content["text"]}
            )
        elif msg["msg_type"] == "error":
            outputs.append({"output_type": "error", **content})
    return outputs


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    kernel = Kernel(tmp_path_factory.mktemp("run-cell"))
    kernel.run(SETUP + MODEL)
    yield kernel
    kernel.shutdown()


def test_run_cell_runs_on_the_kernel_the_agent_waits_on_and_reads_the_traceback(kernel):
    page = Page(kernel)
    kernel.run("%%crush --yolo --fresh -s raiser\nraise please")
    source = "print('before')\n1 / 0"
    page.answer(page.request("cells"), cells("c-raise", source))
    asked = page.request("run_cell")
    assert (asked["cell"], asked["source"]) == ("c-raise", source)
    page.answer(asked, {"pending": True})
    # The agent's task is waiting for the page; the cell runs meanwhile, on the main shell.
    messages = execution(kernel, page.run_cell("c-raise", source))
    count = next(m for m in messages if m["msg_type"] == "execute_input")["content"][
        "execution_count"
    ]
    reply = {"ok": False, "execution_count": count, "outputs": nbformat_outputs(messages)}
    page.answer(asked, reply)
    told = kernel.run(
        "await crush.last_view.wait()\n"
        "print(model.requests[1].messages[-1].tool_results[0].content)"
    )
    assert told.startswith(f"Cell c-raise ran as [{count}], and raised an error:")
    assert "before" in told and "ZeroDivisionError: division by zero" in told
    assert "1 / 0" in told  # the traceback, with the cell's line


def test_a_stop_interrupts_the_running_cell_and_only_its_own_run(kernel):
    page = Page(kernel)
    kernel.run("%%crush --fresh -s other\nother words")
    kernel.run("%%crush --yolo --fresh -s sleeper\nsleep please")
    source = "import time\ntime.sleep(60)\nprint('not reached')"
    page.answer(page.request("cells"), cells("c-sleep", source))
    asked = page.request("run_cell")
    page.answer(asked, {"pending": True})
    running = page.run_cell("c-sleep", source)
    kernel.wait_iopub(
        lambda m: m["parent_header"].get("msg_id") == running and m["msg_type"] == "execute_input"
    )
    # The sleeper's Stop button, clicked on the page's subshell while the cell holds the
    # main thread and the loop.
    kernel.stop(page.subshell)
    messages = execution(kernel, running)
    errors = [m["content"]["ename"] for m in messages if m["msg_type"] == "error"]
    assert errors == ["KeyboardInterrupt"]
    assert [m for m in messages if m["msg_type"] == "stream"] == []  # 'not reached' never ran
    status = kernel.run(
        "await crush.last_view.wait()\n"
        "print(crush.last_view.phase)\n"
        "print(sorted(crush.store.get_session(s).title for s in crush.agent.status().running))"
    ).split("\n")
    # The sleeper's turn is canceled; the other session's answer is still streaming: the
    # interrupt was the sleeper's Stop, not the user's ■, which would stop every run.
    assert status[:2] == ["canceled", "['other']"]
    kernel.run("%crush cancel --all")


def test_a_stop_while_an_edit_waits_for_review_withdraws_it(kernel):
    page = Page(kernel)
    kernel.run("%%crush --yolo --fresh -s editor\nedit please")
    page.answer(page.request("cells"), cells("c-edit", "x = 1"))
    proposed = page.request("propose_edit")
    assert (proposed["cell"], proposed["before"], proposed["after"]) == ("c-edit", "x = 1", "x = 2")
    page.answer(proposed, {"pending": True})  # the diff is shown; the user has not decided
    asked = kernel.value("len(model.requests)")
    kernel.stop(page.subshell)
    withdrawn = page.request("withdraw_edit")
    assert withdrawn["edit"] == proposed["edit"]
    told = kernel.run(
        "await crush.last_view.wait()\nprint(crush.last_view.phase)\nprint(len(model.requests))"
    ).split()
    assert told == ["canceled", str(asked)]  # the model was not asked again after the Stop
