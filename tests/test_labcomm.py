"""The kernel end of the JupyterLab comm, driven the way the browser drives it: a real
ipykernel started by jupyter_client, comm messages sent from the client side."""

from __future__ import annotations

import os
import queue
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import start_new_kernel

pytestmark = pytest.mark.slow  # real kernels

REPO = Path(__file__).resolve().parents[1]
TARGET = "jupyter_crush"


class KernelDriver:
    """A client that also plays the browser's end of the ``jupyter_crush`` comm."""

    def __init__(self, kc: Any) -> None:
        self.kc = kc
        # Comm traffic seen on iopub, in arrival order: (msg_type, content).
        self.comm_log: list[tuple[str, dict[str, Any]]] = []
        self._outputs: dict[str, list[str]] = {}
        self._idle: set[str] = set()

    def _pump(self, timeout: float) -> None:
        try:
            msg = self.kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return
        kind = msg["msg_type"]
        parent = msg["parent_header"].get("msg_id", "")
        if kind in ("comm_open", "comm_msg", "comm_close"):
            self.comm_log.append((kind, msg["content"]))
        elif kind == "stream":
            self._outputs.setdefault(parent, []).append(msg["content"]["text"])
        elif kind == "error":
            self._outputs.setdefault(parent, []).append("\n".join(msg["content"]["traceback"]))
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            self._idle.add(parent)

    def start(self, code: str) -> str:
        return self.kc.execute(textwrap.dedent(code))

    def wait(self, msg_id: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while msg_id not in self._idle:
            assert time.monotonic() < deadline, "the kernel did not finish the cell"
            self._pump(0.2)
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        output = "".join(self._outputs.pop(msg_id, []))
        assert reply["content"]["status"] == "ok", output
        return output

    def run(self, code: str, timeout: float = 60) -> str:
        return self.wait(self.start(code), timeout)

    def comm_events(self, comm_id: str | None = None) -> list[dict[str, Any]]:
        """Data the kernel sent on comm ``comm_id`` (any jupyter_crush comm if None)."""
        return [
            content["data"]
            for kind, content in self.comm_log
            if kind in ("comm_open", "comm_msg")
            and (comm_id is None or content["comm_id"] == comm_id)
        ]

    def mark(self, comm_id: str) -> int:
        """How many events comm ``comm_id`` has had: pass as ``since`` to wait for newer ones."""
        return len(self.comm_events(comm_id))

    def wait_event(
        self, predicate: Any, comm_id: str | None = None, since: int = 0, timeout: float = 60
    ) -> dict:
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            events = self.comm_events(comm_id)
            for event in events[seen:]:
                if predicate(event):
                    return event
            seen = len(events)
            assert time.monotonic() < deadline, f"no such comm event; got {events}"
            self._pump(0.2)

    def _send(self, msg_type: str, content: dict, subshell_id: str | None) -> None:
        msg = self.kc.session.msg(msg_type, content)
        if subshell_id is not None:
            msg["header"]["subshell_id"] = subshell_id
        self.kc.shell_channel.send(msg)

    def comm_open(self, data: dict, subshell_id: str | None = None) -> str:
        comm_id = uuid.uuid4().hex
        self._send(
            "comm_open", {"comm_id": comm_id, "target_name": TARGET, "data": data}, subshell_id
        )
        return comm_id

    def comm_send(self, comm_id: str, data: dict, subshell_id: str | None = None) -> None:
        self._send("comm_msg", {"comm_id": comm_id, "data": data}, subshell_id)

    def create_subshell(self) -> str:
        msg = self.kc.session.msg("create_subshell_request", {})
        self.kc.control_channel.send(msg)
        while True:
            reply = self.kc.get_control_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return reply["content"]["subshell_id"]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cwd = tmp_path_factory.mktemp("kernel")
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(cwd), env=env)
    driver = KernelDriver(kc)
    driver.run(
        f"""
        import asyncio, pathlib
        from jupyter_crush import SessionAgent, SessionAgentCall, TranscriptStore
        from jupyter_crush.notebook import labcomm
        from jupyter_crush.testing import ScriptedModel

        store = TranscriptStore(pathlib.Path({str(cwd)!r}) / "store")
        agents = []  # the kernel's agent, once made: labcomm must cope with none yet
        labcomm.register(get_ipython(), lambda: agents[-1] if agents else None)

        def start(session_id, prompt):
            call = SessionAgentCall(
                session_id, prompt, accepted=agents[-1].begin_accepted(session_id)
            )
            return asyncio.get_running_loop().create_task(agents[-1].run(call))

        def finish_reasons(session_id):
            return [
                m.finish_reason.value for m in store.list_messages(session_id)
                if m.role.value == "assistant"
            ]
        """
    )
    yield driver
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def make_agent(kernel: KernelDriver, tokens: int = 400) -> None:
    # Slow enough that a run is still streaming when the cancel arrives; the gate makes
    # sure it has begun streaming first.
    kernel.run(
        f"""
        model = ScriptedModel(["word " * {tokens}] * 4, tokens_per_second=20)
        gate = model.gate(0, after_tokens=3)
        agents.append(SessionAgent(model, store))
        """
    )


def test_register_says_hello_and_answers_status_before_any_agent(kernel):
    # The hello comm is opened and closed at once: pages open their own comm then.
    hello = [c for kind, c in kernel.comm_log if kind == "comm_open"]
    assert [(c["target_name"], c["data"]) for c in hello] == [(TARGET, {"event": "hello"})]
    closed = [c["comm_id"] for kind, c in kernel.comm_log if kind == "comm_close"]
    assert closed == [hello[0]["comm_id"]]

    comm_id = kernel.comm_open({"action": "status"})
    event = kernel.wait_event(lambda e: e.get("event") == "status", comm_id)
    assert event == {"event": "status", "running": 0, "queued": 0}

    kernel.comm_send(comm_id, {"action": "launch"})
    error = kernel.wait_event(lambda e: e.get("event") == "error", comm_id)
    assert "'launch'" in error["message"] and "cancel_all" in error["message"]


def test_cancel_all_over_the_comm_stops_a_streaming_run_and_its_queue(kernel):
    comm_id = kernel.comm_open({"action": "status"})
    kernel.wait_event(lambda e: e.get("event") == "status", comm_id)
    make_agent(kernel)
    kernel.run(
        """
        session = store.create_session(title="lab")
        first = start(session.id, "one")
        second = start(session.id, "two")
        await gate.reached()
        gate.release()
        """
    )
    # The status is pushed, not polled: the agent made in a cell is followed from then on.
    kernel.wait_event(lambda e: e.get("running") == 1 and e.get("queued") == 1, comm_id)

    since = kernel.mark(comm_id)
    kernel.comm_send(comm_id, {"action": "cancel_all"})
    kernel.wait_event(lambda e: e.get("running") == 0 and e.get("queued") == 0, comm_id, since)

    out = kernel.run(
        """
        await asyncio.gather(first, second)
        print(finish_reasons(session.id), len(model.requests))
        """
    )
    # The streaming turn and the queued prompt it dropped are both kept as canceled.
    assert out.split() == ["['canceled',", "'canceled']", "1"]


def test_cancel_all_on_a_subshell_lands_while_a_cell_blocks_the_loop(kernel):
    make_agent(kernel)
    subshell = kernel.create_subshell()
    comm_id = kernel.comm_open({"action": "status"}, subshell_id=subshell)
    kernel.wait_event(lambda e: e.get("event") == "status", comm_id)
    kernel.run(
        """
        session = store.create_session(title="blocked")
        run = start(session.id, "one")
        await gate.reached()
        gate.release()
        """
    )
    kernel.wait_event(lambda e: e.get("running") == 1, comm_id)

    flag = Path(kernel.run("import tempfile; print(tempfile.mkdtemp())").strip()) / "go"
    blocking = kernel.start(
        f"""
        import os, time
        while not os.path.exists({str(flag)!r}):
            time.sleep(0.05)
        """
    )
    # The main thread is stuck in that cell; the subshell thread still answers.
    since = kernel.mark(comm_id)
    kernel.comm_send(comm_id, {"action": "cancel_all"}, subshell_id=subshell)
    kernel.wait_event(lambda e: e.get("event") == "status", comm_id, since)
    assert blocking not in kernel._idle, "the blocking cell ended before the test released it"
    flag.touch()
    kernel.wait(blocking)

    kernel.wait_event(lambda e: e.get("running") == 0, comm_id, since)
    out = kernel.run(
        """
        await run
        print(finish_reasons(session.id))
        """
    )
    assert out.strip() == "['canceled']"


def test_closed_comms_get_no_more_events(kernel):
    comm_id = kernel.comm_open({"action": "status"})
    kernel.wait_event(lambda e: e.get("event") == "status", comm_id)
    kernel._send("comm_close", {"comm_id": comm_id, "data": {}}, None)
    other = kernel.comm_open({"action": "status"})
    kernel.wait_event(lambda e: e.get("event") == "status", other)
    before = kernel.mark(comm_id)
    since = kernel.mark(other)
    kernel.comm_send(other, {"action": "status"})
    kernel.wait_event(lambda e: e.get("event") == "status", other, since)
    kernel.run("pass")
    assert len(kernel.comm_events(comm_id)) == before


def test_request_is_answered_by_the_page_and_falls_back_when_it_is_silent(kernel):
    subshell = kernel.create_subshell()
    comm_id = kernel.comm_open({"action": "status"}, subshell)
    kernel.wait_event(lambda e: e.get("event") == "status", comm_id)
    since = kernel.mark(comm_id)
    asked = kernel.start(
        """
        reply = await labcomm.request(get_ipython(), {"op": "cells"}, timeout=30)
        print(reply)
        """
    )
    request = kernel.wait_event(lambda e: e.get("event") == "request", comm_id, since)
    assert request["op"] == "cells"
    # The page answers on its subshell, as JupyterLab does, while the cell still awaits.
    kernel.comm_send(
        comm_id, {"action": "reply", "id": request["id"], "cells": [], "path": "a.ipynb"}, subshell
    )
    assert kernel.wait(asked).strip() == (
        f"{{'action': 'reply', 'id': {request['id']}, 'cells': [], 'path': 'a.ipynb'}}"
    )
    # A page that never answers leaves the caller to its fallback once the timeout passes.
    started = time.monotonic()
    out = kernel.run('print(await labcomm.request(get_ipython(), {"op": "cells"}, timeout=0.5))')
    assert out.strip() == "None" and time.monotonic() - started < 10
