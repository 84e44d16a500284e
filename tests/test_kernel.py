"""%%crush in a real kernel: the cell returns at once, the kernel stays usable, and every way
of stopping a run (Stop click, %crush cancel, interrupt, shutdown) leaves a canceled turn in
the store."""

from __future__ import annotations

import time
from typing import Any

import pytest
from support.kernel_harness import SETUP, Kernel, scripted, view_ops

from jupyter_crush.store.transcript import TranscriptStore

pytestmark = pytest.mark.slow

# A run that streams 20 tokens, then holds (until `gate.release()`): it is still running
# whenever the test acts.
SLOW = scripted(400, 100, hold_after=20)
FAST = scripted(20, None)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    data = tmp_path_factory.mktemp("kernel")
    k = Kernel(data)
    k.run(SETUP)
    # These tests ask the same prompts again and again and need each one streamed live: an
    # unchanged prompt would replay its recorded turn (test_rerun*.py covers that).
    k.run('%config CrushConfig.replay = "off"')
    yield k
    k.shutdown()


def last_turn(kernel: Kernel, session: str = "crush.current_session_id") -> list:
    """(role, finish reason, finish message) of each message of a session."""
    return kernel.value(
        f"[(str(m.role), m.finish_reason and str(m.finish_reason), "
        f"m.finish.message if m.finish else '') for m in crush.store.list_messages({session})]"
    )


def wait_view(kernel: Kernel, timeout: float = 20.0) -> None:
    # Top-level await runs on the kernel's loop, so the run keeps streaming while we wait.
    kernel.run(
        f"import asyncio; await asyncio.wait_for(crush.last_view.wait(), {timeout})",
        timeout=timeout + 5,
    )


def test_cell_returns_while_the_run_streams(kernel):
    kernel.run(SLOW)
    result = kernel.execute("%%crush --new\nwrite a lot")
    assert result.reply["content"]["status"] == "ok"
    # The cell has returned, the run goes on: a trivial cell runs meanwhile.
    assert kernel.value("crush.agent.is_session_busy(crush.current_session_id)") is True
    assert kernel.value("21 * 2") == 42
    kernel.run("await gate.reached()")
    assert kernel.value("crush.last_view.phase") == "running"
    kernel.run("gate.release()")
    wait_view(kernel)
    turn = last_turn(kernel)
    assert [t[0] for t in turn] == ["user", "assistant"]
    assert turn[-1][1] == "end_turn"
    # The displayed widget is replaced by the static answer when the run ends, in the
    # prompt's own cell (ipykernel 7 keeps the parent header per task).
    update = kernel.wait_iopub(
        lambda m: (
            m["msg_type"] == "update_display_data"
            and m["parent_header"].get("msg_id") == result.msg_id
        )
    )
    assert "word word" in update["content"]["data"]["text/markdown"]
    assert "application/vnd.jupyter.widget-view+json" not in update["content"]["data"]


def test_display_has_markdown_fallback(kernel):
    kernel.run(FAST)
    result = kernel.execute("%%crush --new\nhello")
    display = next(m for m in result.outputs if m["msg_type"] == "display_data")
    data = display["content"]["data"]
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["text/markdown"].startswith("**crush**")
    assert "display_id" in display["content"]["transient"]
    wait_view(kernel)


def test_stop_click_cancels_and_persists(kernel):
    kernel.run(SLOW)
    kernel.run("%%crush --new\nwrite a lot")
    kernel.stop()
    wait_view(kernel)
    turn = last_turn(kernel)
    assert turn[-1][1] == "canceled"
    assert kernel.value("crush.last_view.phase") == "canceled"


def test_stop_click_sent_on_a_subshell(kernel):
    # JupyterLab sends comm messages on a subshell; the run view takes its clicks there
    # (the click handler runs on that subshell's thread).
    subshell = kernel.create_subshell()
    kernel.run(SLOW)
    kernel.run("%%crush --new\nwrite a lot")
    kernel.stop(subshell_id=subshell)
    wait_view(kernel)
    assert last_turn(kernel)[-1][1] == "canceled"


def stopping_shown(view: str) -> Any:
    """A predicate: the iopub message that tells ``view``'s page the run is stopping."""
    return lambda m: ["stop", "stopping"] in view_ops(m, view)


def stopping_hint_shown(m: dict) -> bool:
    """The status line of a waiting cell's run, which also points at the interrupt."""
    return any(
        op == "status" and "or interrupt the kernel" in value["tail"] for op, value in view_ops(m)
    )


def test_stop_click_lands_while_another_cell_blocks(kernel):
    # JupyterLab sends widget comm messages on a subshell of their comm target; the click
    # must be taken there, not queued on the main shell behind a cell that sleeps.
    subshell = kernel.create_subshell()
    kernel.run(scripted(400, 50))  # 8 s of streaming, frozen whenever the loop is held
    kernel.run("%%crush --new\nwrite a lot")
    kernel.run(
        "import asyncio\n"
        "while len(crush.last_view.answer_markdown.split()) < 5: await asyncio.sleep(0.01)"
    )
    view = kernel.run_view()
    # From its first line on, this cell holds the main thread and with it the loop.
    sleeper = kernel.kc.execute(
        "import time\nstreamed = len(crush.last_view.answer_markdown.split())\ntime.sleep(3)"
    )
    kernel.wait_iopub(
        lambda m: (
            m["parent_header"].get("msg_id") == sleeper
            and m["msg_type"] == "status"
            and m["content"]["execution_state"] == "busy"
        )
    )
    sent = kernel.stop(subshell_id=subshell)
    # The cancel is recorded and the page is told while the cell still sleeps: before the
    # cell's idle, and well within its 3 s. (This fails if ipykernel drops the private
    # BaseComm._reply_subshell_for that take_clicks_where_sent re-routes.)
    stopping = kernel.wait_iopub(stopping_shown(view), timeout=20)
    shown = time.perf_counter() - sent
    idle = kernel.wait_iopub(
        lambda m: (
            m["parent_header"].get("msg_id") == sleeper
            and m["msg_type"] == "status"
            and m["content"]["execution_state"] == "idle"
        ),
        timeout=20,
    )
    assert kernel.iopub.index(stopping) < kernel.iopub.index(idle)
    assert shown < 1.5, f"the Stop click waited {shown:.2f} s for the sleeping cell"
    assert kernel.value("crush.last_view.stop_requested") is True
    wait_view(kernel)
    assert last_turn(kernel)[-1][1] == "canceled"
    # The stream stopped at the loop's first tick after the cell: not one token was read
    # after the click, and the canceled turn keeps everything read before it.
    kept = kernel.value("len(crush.store.list_messages(crush.current_session_id)[-1].text.split())")
    assert kept == kernel.value("streamed") >= 5


def test_stop_click_ends_a_waiting_cell(kernel):
    # A --wait cell holds the main shell until its answer is complete; JupyterLab's click
    # arrives on a subshell and stops the run, and with it the wait.
    subshell = kernel.create_subshell()
    kernel.run(scripted(400, 50))  # 8 s of streaming
    waiting = kernel.kc.execute("%%crush --new --wait\nwrite a lot")
    kernel.wait_iopub(stopping_hint_shown, timeout=20)
    sent = kernel.stop(subshell_id=subshell)
    idle = kernel.wait_iopub(
        lambda m: (
            m["parent_header"].get("msg_id") == waiting
            and m["msg_type"] == "status"
            and m["content"]["execution_state"] == "idle"
        ),
        timeout=20,
    )
    assert idle is not None and time.perf_counter() - sent < 4, "the cell waited for the answer"
    assert last_turn(kernel)[-1][1] == "canceled"


def test_cancel_magic_from_another_cell(kernel):
    kernel.run(SLOW)
    kernel.run("%%crush --new\nwrite a lot")
    kernel.run("%crush cancel")
    wait_view(kernel)
    assert last_turn(kernel)[-1][1] == "canceled"


def test_interrupt_while_idle_cancels(kernel):
    kernel.run(SLOW)
    kernel.run("%%crush --new\nwrite a lot")
    kernel.interrupt()
    wait_view(kernel)
    assert last_turn(kernel)[-1][1] == "canceled"
    # The kernel itself is unharmed and the next prompt runs normally.
    kernel.run(FAST)
    kernel.run("%%crush\nagain")
    wait_view(kernel)
    assert last_turn(kernel)[-1][1] == "end_turn"


def test_interrupt_during_a_cell_cancels_runs_too(kernel):
    kernel.run(SLOW)
    kernel.run("%%crush --new\nwrite a lot")
    msg_id = kernel.kc.execute("import time\nfor _ in range(100): time.sleep(0.1)")
    kernel.wait_iopub(
        lambda m: (
            m["parent_header"].get("msg_id") == msg_id
            and m["msg_type"] == "status"
            and m["content"]["execution_state"] == "busy"
        )
    )
    time.sleep(0.3)
    kernel.interrupt()
    kernel.wait_iopub(
        lambda m: (
            m["parent_header"].get("msg_id") == msg_id
            and m["msg_type"] == "status"
            and m["content"]["execution_state"] == "idle"
        )
    )
    wait_view(kernel)
    assert last_turn(kernel)[-1][1] == "canceled"


def test_two_sessions_at_once(kernel):
    kernel.run(scripted(100, 100))
    kernel.run("%%crush --new -s first\nwrite a lot")
    kernel.run("first = crush.last_view")
    kernel.run("%%crush --new -s second\nwrite a lot")
    busy = kernel.value(
        "[crush.agent.is_session_busy(s.id) for s in crush.store.list_sessions() "
        "if s.title in ('first', 'second')]"
    )
    assert busy == [True, True]
    kernel.run("import asyncio; await asyncio.gather(first.wait(), crush.last_view.wait())")
    for title in ("first", "second"):
        assert last_turn(kernel, f"crush.find_session({title!r}).id")[-1][1] == "end_turn"


def test_queued_prompt_runs_after_the_first(kernel):
    kernel.run(scripted(100, 200))
    kernel.run("%%crush --new -s queue\nfirst prompt")
    kernel.run("first = crush.last_view")
    second = kernel.execute("%%crush -s queue\nsecond prompt")
    # Both widgets say so: the new one is queued, the running one has a prompt behind it.
    assert kernel.value("crush.last_view.phase") == "queued"
    assert "queued (position 1)" in kernel.value("crush.last_view.status_text()")
    assert "running, 1 queued behind" in kernel.value("first.status_text()")
    kernel.run("import asyncio; await asyncio.gather(first.wait(), crush.last_view.wait())")
    turn = kernel.value(
        "[(str(m.role), m.text[:20], m.finish_reason and str(m.finish_reason)) "
        "for m in crush.store.list_messages(crush.find_session('queue').id)]"
    )
    assert [t[0] for t in turn] == ["user", "assistant", "user", "assistant"]
    assert turn[0][1] == "first prompt" and turn[2][1] == "second prompt"
    assert turn[1][2] == turn[3][2] == "end_turn"
    # The queued prompt ran on the first prompt's task, yet its final display lands in its
    # own cell: the update carries the second cell's parent header.
    (shown,) = [m for m in second.outputs if m["msg_type"] == "display_data"]
    display_id = shown["content"]["transient"]["display_id"]
    update = kernel.wait_iopub(
        lambda m: (
            m["msg_type"] == "update_display_data"
            and m["content"]["transient"]["display_id"] == display_id
        )
    )
    assert update["parent_header"]["msg_id"] == second.msg_id


def test_bad_input_is_one_line(kernel):
    for cell, needle in [
        ("%%crush --bogus\nhi", "unrecognized arguments"),
        ("%%crush\n   ", "prompt is empty"),
        ("%%crush -m nosuch:model\nhi", "unknown provider"),
        ("%%crush -m openai:gpt-4o\nhi", "OPENAI_API_KEY"),
        ("%crush use " + "0" * 32, "No session"),
        ("%crush frobnicate", "Unknown command"),
    ]:
        before = kernel.value("len(crush.store.list_sessions())")
        result = kernel.execute(cell)
        reply = result.reply["content"]
        assert reply["status"] == "error"
        assert reply["ename"] == "UsageError"
        assert reply["traceback"] == []
        stderr = [m["content"]["text"] for m in result.outputs if m["msg_type"] == "stream"]
        assert len(stderr) == 1 and needle in stderr[0]
        assert stderr[0].count("\n") == 1, stderr[0]
        assert kernel.value("len(crush.store.list_sessions())") == before


def test_shutdown_persists_the_canceled_turn(tmp_path):
    k = Kernel(tmp_path)
    try:
        k.run(SETUP)
        k.run(SLOW)
        k.run("%%crush --new\nwrite a lot")
        k.run("await gate.reached()")  # 20 tokens have streamed; the run holds there
        session_id = k.value("crush.current_session_id")
        assert k.value("crush.agent.is_session_busy(crush.current_session_id)") is True
    finally:
        k.shutdown()
    store = TranscriptStore(tmp_path)
    try:
        messages = store.list_messages(session_id)
    finally:
        store.close()
    summary = [(str(m.role), m.finish_reason, m.finish and m.finish.message) for m in messages]
    assert [s[0] for s in summary] == ["user", "assistant"], summary
    assert messages[-1].finish_reason == "canceled", summary
    assert messages[-1].text.split() == ["word"] * 20  # what streamed before shutdown is kept


TOOL_SCRIPT = (
    "from jupyter_crush.testing import Reply, ToolCall\n"
    "crush.use_model(ScriptedModel([Reply(text='Let me compute.', tool_calls=[ToolCall("
    "'python', {'code': 'print(6 * 7)'})]), 'The answer is 42.']))"
)


def test_permission_prompt_allow_runs_the_tool(kernel):
    kernel.iopub.clear()
    kernel.run(TOOL_SCRIPT)
    kernel.run("%%crush --new\ncompute 6*7")
    ask = kernel.wait_ask()
    assert (ask["tool"], ask["what"]) == ("python", "print(6 * 7)")
    assert kernel.value("crush.last_view.waiting_permission") is True
    kernel.decide(ask["id"], "allow")
    wait_view(kernel)
    turn = kernel.value(
        "[(str(m.role), [r.content for r in m.tool_results], m.finish_reason and "
        "str(m.finish_reason)) for m in crush.store.list_messages(crush.current_session_id)]"
    )
    assert [t[0] for t in turn] == ["user", "assistant", "tool", "assistant"]
    assert "42" in turn[2][1][0]
    assert turn[-1][2] == "end_turn"


def test_permission_prompt_deny_ends_the_turn(kernel):
    kernel.iopub.clear()
    kernel.run(TOOL_SCRIPT)
    kernel.run("%%crush --new\ncompute 6*7")
    kernel.decide(kernel.wait_ask()["id"], "deny")
    wait_view(kernel)
    turn = last_turn(kernel)
    assert turn[-1][1] == "canceled"
    assert "Permission denied for python" in turn[-1][2]


def test_yolo_skips_the_prompt(kernel):
    kernel.run(TOOL_SCRIPT)
    kernel.run("%%crush --new --yolo\ncompute 6*7")
    wait_view(kernel)
    assert last_turn(kernel)[-1][1] == "end_turn"


def test_headless_run_waits_and_denies_tools(kernel):
    # nbclient sends allow_stdin=False: the cell blocks until the answer is complete, and a
    # permission prompt nobody can answer is denied instead of hanging the run.
    kernel.run(TOOL_SCRIPT)
    result = kernel.execute("%%crush --new\ncompute 6*7", allow_stdin=False)
    assert result.reply["content"]["status"] == "ok"
    assert kernel.value("crush.last_view.is_finished") is True
    turn = last_turn(kernel)
    assert turn[-1][1] == "canceled"
    assert "Permission denied" in turn[-1][2]


def test_interrupt_while_a_wait_cell_blocks_cancels_the_run(kernel):
    kernel.run(SLOW)
    msg_id = kernel.kc.execute("%%crush --new --wait\nwrite a lot")
    kernel.wait_iopub(
        lambda m: m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "display_data"
    )
    time.sleep(0.3)
    kernel.interrupt()
    reply = kernel._shell_reply(msg_id, time.monotonic() + 20)
    assert reply["content"]["status"] == "ok"  # the cell ends normally, showing the cancel
    # A blocking cell keeps its Stop button (JupyterLab's clicks land on a subshell) and
    # also points at the interrupt, which works with any front end.
    assert kernel.value("crush.last_view._stop_hint") == "or interrupt the kernel (■)"
    assert kernel.value("crush.last_view.phase") == "canceled"
    assert last_turn(kernel)[-1][1] == "canceled"


def test_format_code_fills_the_next_cell(kernel):
    kernel.run(
        "crush.use_model(ScriptedModel(['Try:\\n```python\\nprint(6 * 7)\\n```\\n']))",
    )
    result = kernel.execute("%%crush --new -f code\nwrite code")
    payload = result.reply["content"]["payload"]
    assert payload == [{"source": "set_next_input", "text": "print(6 * 7)", "replace": False}]


def test_extension_and_config_from_the_command_line(tmp_path):
    # The same traits ipython_config.py sets: c.InteractiveShellApp.extensions, c.CrushConfig.
    k = Kernel(
        tmp_path,
        extra_arguments=[
            "--InteractiveShellApp.extensions=jupyter_crush",
            "--CrushConfig.max_steps=3",
            "--CrushConfig.model=replay:openai-simple",
        ],
    )
    try:
        assert k.value("'crush' in get_ipython().magics_manager.magics['cell']") is True
        k.run("from jupyter_crush.magics import current\ncrush = current()")
        assert k.value("crush.config.max_steps") == 3
        k.run("%%crush\nhello")
        k.run("await crush.last_view.wait()")
        assert k.value("crush.last_view.phase") == "done"
        assert k.value("crush.store.list_messages(crush.current_session_id)[-1].text") == "Olá!"
    finally:
        k.shutdown()


def test_wait_never_returns_at_once_even_headless(kernel):
    kernel.run(SLOW)
    kernel.run('%config CrushConfig.wait = "never"')
    try:
        result = kernel.execute("%%crush --new\nwrite a lot", allow_stdin=False)
        assert result.reply["content"]["status"] == "ok"
        assert kernel.value("crush.last_view.is_finished") is False
        kernel.run("%crush cancel")
        wait_view(kernel)
    finally:
        kernel.run('%config CrushConfig.wait = "auto"')
    assert last_turn(kernel)[-1][1] == "canceled"


def test_restart_persists_running_and_queued_turns(tmp_path):
    k = Kernel(tmp_path)
    try:
        k.run(SETUP)
        k.run(SLOW)
        k.run("%%crush --new -s restart\nwrite a lot")
        k.run("%%crush -s restart\nand more")
        session_id = k.value("crush.current_session_id")
        assert k.value("crush.agent.queued_prompts(crush.current_session_id)") == 1
        k.km.restart_kernel(now=False)
        k.kc.wait_for_ready(timeout=60)
        k.run(SETUP)
        turns = k.value(
            f"[(str(m.role), m.finish_reason and str(m.finish_reason)) "
            f"for m in crush.store.list_messages({session_id!r})]"
        )
    finally:
        k.shutdown()
    # Both prompts are kept, each as a canceled turn: the running one and the queued one.
    assert turns == [
        ["user", None],
        ["assistant", "canceled"],
        ["user", None],
        ["assistant", "canceled"],
    ]


def test_with_an_api_key_the_default_model_is_the_real_provider(tmp_path, openai_server):
    # What quickstart.sh does with OPENAI_API_KEY set, against a local OpenAI-compatible
    # server (OPENAI_BASE_URL) instead of api.openai.com.
    k = Kernel(
        tmp_path,
        env={
            "OPENAI_API_KEY": "sk-test-not-a-real-key",
            "OPENAI_BASE_URL": f"{openai_server.url}/v1",
        },
    )
    try:
        k.run(SETUP)
        # The server holds one recorded answer: no title request beside it.
        k.run("%config CrushConfig.titles = False")
        assert k.run("%crush model").splitlines()[0] == "openai:gpt-4o"
        k.run("%%crush\nSay hi in Portuguese")
        k.run("await crush.last_view.wait()")
        assert k.value("crush.last_view.phase") == "done", k.value("crush.last_view.status_text()")
        assert "replay" not in k.value("crush.last_view.status_text()")
        stored = k.value(
            "[(str(m.role), m.provider, m.text) "
            "for m in crush.store.list_messages(crush.current_session_id)]"
        )
        store_bytes = b"".join(p.read_bytes() for p in tmp_path.rglob("*.jsonl"))
    finally:
        k.shutdown()
    assert stored == [["user", "", "Say hi in Portuguese"], ["assistant", "openai", "Olá!"]]
    (request,) = openai_server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test-not-a-real-key"
    assert b"sk-test-not-a-real-key" not in store_bytes  # the key never reaches the store
