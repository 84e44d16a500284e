"""The agent tool in a real kernel against a local OpenAI-compatible server: the sub-agent's
section streams into the run view over the comm, and a Stop click during the child's stream
ends both turns canceled with no request after it."""

from __future__ import annotations

import pytest
from support.kernel_harness import Kernel, view_ops
from support.openai_chunks import openai_step
from support.replay_server import serving
from test_agent_tool import TASK

pytestmark = pytest.mark.slow

SESSIONS = (
    "[(s.id, s.parent_session_id, [str(m.finish_reason) for m in "
    "crush.store.list_messages(s.id) if m.finish_reason]) for s in crush.store.list_sessions()]"
)


def test_a_sub_agent_streams_into_the_view_and_a_stop_ends_both(tmp_path):
    stalling = openai_step(6, "Still reading the file, and then")
    stalling.fault, stalling.fault_after = "stall", 3
    steps = [
        openai_step(1, tool=("agent", {"prompt": TASK})),
        openai_step(2, tool=("view", {"path": "data.csv"})),
        openai_step(3, "Columns a and b."),
        openai_step(4, "data.csv has columns a and b."),
        openai_step(5, tool=("agent", {"prompt": TASK})),
        stalling,
        openai_step(7, "never"),
    ]
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    with serving(steps) as server:
        kernel = Kernel(
            tmp_path, env={"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{server.url}/v1"}
        )
        try:
            kernel.run("%load_ext jupyter_crush\nfrom jupyter_crush.magics import current")
            kernel.run("crush = current()\n%config CrushConfig.titles = False")
            kernel.run("%%crush --new\nwhat is in data.csv?")
            kernel.run("import asyncio; await asyncio.wait_for(crush.last_view.wait(), 20)", 25)
            kernel.drain()
            view = kernel.run_view()
            ops = [op for m in kernel.iopub for op in view_ops(m, view)]
            assert kernel.value("crush.last_view.phase") == "done"
            assert len(server.requests) == 4

            kernel.iopub.clear()
            kernel.run("%%crush --new\nand again?")
            kernel.wait_iopub(lambda m: any(op == "child+" for op, _ in view_ops(m)), 20)
            kernel.stop(kernel.create_subshell())
            kernel.run("import asyncio; await asyncio.wait_for(crush.last_view.wait(), 20)", 25)
            stopped = kernel.value("crush.last_view.phase")
            sessions = kernel.value(SESSIONS)
            kernel.drain()
            stop_ops = [op for m in kernel.iopub for op in view_ops(m, kernel.run_view())]
        finally:
            kernel.shutdown()
        requests = len(server.requests)
    # The finished run: the section opened in the agent call's row, the child's text and its
    # view call streamed into it, the row headed by the task and the child's state.
    assert [value for op, value in ops if op == "child"] == ["call_test1"]
    text = "".join(value[1] for op, value in ops if op == "child+")
    assert text == "Columns a and b."
    child_rows = [value[1] for op, value in ops if op == "child tool"]
    assert (child_rows[-1]["name"], child_rows[-1]["state"]) == ("view", "ok")
    heads = [(v["label"], v["state"]) for op, v in ops if op == "tool" and v["name"] == "agent"]
    assert heads[-1][0] == TASK.splitlines()[0]
    assert heads[-1][1].startswith("sub-agent done")
    # The stopped run: both turns canceled, and the server asked nothing after the Stop.
    assert stopped == "canceled"
    assert requests == 6
    stopped_parent = [s for s in sessions if s[2] and s[2][-1] == "canceled" and not s[1]]
    stopped_child = [s for s in sessions if s[1] and s[2][-1] == "canceled"]
    assert len(stopped_parent) == 1 and len(stopped_child) == 1
    assert stopped_child[0][1] == stopped_parent[0][0]
    heads = [v["state"] for op, v in stop_ops if op == "tool" and v["name"] == "agent"]
    assert heads[-1].startswith("sub-agent canceled")
