"""PermissionPolicy: what is allowed without asking, what is remembered, what a cancel leaves."""

from __future__ import annotations

import asyncio

import pytest

from jupyter_crush.core.tools import Decision, PermissionRequest
from jupyter_crush.tools import default_tools
from jupyter_crush.tools.permissions import HEADLESS_REASON, NO_BROKER_REASON, PermissionPolicy


class FakeBroker:
    """A UI broker whose answers the test gives, one per prompt."""

    def __init__(self, *answers: Decision | str) -> None:
        self.answers = list(answers)
        self.asked: list[PermissionRequest] = []
        self.open_prompts: set[str] = set()
        self.canceled: list[PermissionRequest] = []
        self.prompt_shown = asyncio.Event()
        self.release = asyncio.Event()
        self.hold = False

    async def ask(self, request: PermissionRequest) -> Decision:
        self.asked.append(request)
        self.open_prompts.add(request.tool_call_id)
        self.prompt_shown.set()
        try:
            if self.hold:
                await self.release.wait()
            return self.answers.pop(0)
        finally:
            self.open_prompts.discard(request.tool_call_id)

    def cancel(self, request: PermissionRequest) -> None:
        self.canceled.append(request)


def req(tool: str = "bash", session: str = "s1", call: str = "c1", **arguments):
    return PermissionRequest(session, call, tool, arguments or {"command": "ls"})


async def test_yolo_allows_without_asking():
    broker = FakeBroker()
    policy = PermissionPolicy(broker, yolo=True)
    assert await policy.ask(req()) is Decision.ALLOW
    assert broker.asked == []
    assert policy.records[-1].source == "yolo"


async def test_allowed_tools_skip_the_prompt_only_for_those_tools():
    broker = FakeBroker(Decision.DENY)
    policy = PermissionPolicy(broker, allowed_tools=["python", "edit"])
    assert await policy.ask(req("python")) is Decision.ALLOW
    assert await policy.ask(req("edit")) is Decision.ALLOW
    assert broker.asked == []
    assert await policy.ask(req("bash")) is Decision.DENY
    assert [r.tool_name for r in broker.asked] == ["bash"]


async def test_allow_for_session_is_remembered_per_session_and_tool():
    broker = FakeBroker(Decision.ALLOW_SESSION, Decision.ALLOW, Decision.ALLOW, Decision.DENY)
    policy = PermissionPolicy(broker)
    assert await policy.ask(req("bash", "s1", "c1")) is Decision.ALLOW_SESSION
    assert await policy.ask(req("bash", "s1", "c2")) is Decision.ALLOW  # remembered
    assert len(broker.asked) == 1
    assert policy.records[-1].source == "session"
    assert await policy.ask(req("bash", "s2", "c3")) is Decision.ALLOW  # other session asks
    assert await policy.ask(req("python", "s1", "c4")) is Decision.ALLOW  # other tool asks
    assert len(broker.asked) == 3
    policy.forget("s1")
    assert not policy.allowed_for_session("s1", "bash")
    assert await policy.ask(req("bash", "s1", "c5")) is Decision.DENY
    assert len(broker.asked) == 4


async def test_a_plain_allow_is_not_remembered():
    broker = FakeBroker(Decision.ALLOW, Decision.DENY)
    policy = PermissionPolicy(broker)
    assert await policy.ask(req(call="c1")) is Decision.ALLOW
    assert await policy.ask(req(call="c2")) is Decision.DENY
    assert policy.denial_reason("c2") == "denied by the user"
    assert policy.denial_reason("c1") is None


async def test_headless_denies_at_once_with_the_reason_recorded():
    broker = FakeBroker(Decision.ALLOW)
    policy = PermissionPolicy(broker, headless=True)
    assert await policy.ask(req(call="c9")) is Decision.DENY
    assert broker.asked == []
    assert policy.denial_reason("c9") == HEADLESS_REASON
    record = policy.records[-1]
    assert (record.decision, record.source, record.reason) == (
        Decision.DENY,
        "headless",
        HEADLESS_REASON,
    )
    # yolo and allowed_tools still apply in a headless run
    assert await PermissionPolicy(broker, headless=True, yolo=True).ask(req()) is Decision.ALLOW
    allowed = PermissionPolicy(broker, headless=True, allowed_tools=["bash"])
    assert await allowed.ask(req()) is Decision.ALLOW


async def test_headless_can_be_a_live_check():
    state = {"headless": True}
    broker = FakeBroker(Decision.ALLOW)
    policy = PermissionPolicy(broker, headless=lambda: state["headless"])
    assert await policy.ask(req()) is Decision.DENY
    state["headless"] = False
    assert await policy.ask(req()) is Decision.ALLOW


async def test_no_front_end_denies():
    policy = PermissionPolicy(None)
    assert await policy.ask(req(call="c1")) is Decision.DENY
    assert policy.denial_reason("c1") == NO_BROKER_REASON


async def test_an_unrecognized_answer_is_a_deny():
    policy = PermissionPolicy(FakeBroker("maybe"))
    assert await policy.ask(req(call="c1")) is Decision.DENY
    assert "unrecognized" in policy.denial_reason("c1")
    assert await PermissionPolicy(FakeBroker("allow")).ask(req()) is Decision.ALLOW


async def test_cancel_while_the_prompt_is_open():
    broker = FakeBroker(Decision.ALLOW)
    broker.hold = True
    policy = PermissionPolicy(broker)
    task = asyncio.create_task(policy.ask(req(call="c1")))
    await broker.prompt_shown.wait()
    assert broker.open_prompts == {"c1"}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert broker.open_prompts == set()  # the broker's own cleanup ran
    assert [r.tool_call_id for r in broker.canceled] == ["c1"]  # and the optional hook
    record = policy.records[-1]
    assert (record.decision, record.source) == (None, "canceled")
    assert policy.denial_reason("c1") is None
    # Nothing was remembered and the next prompt works normally.
    broker.hold = False
    assert await policy.ask(req(call="c2")) is Decision.ALLOW


async def test_cancel_hook_is_optional_and_cannot_mask_the_cancel():
    class Plain:
        async def ask(self, request):
            await asyncio.Event().wait()

    class Broken(Plain):
        def cancel(self, request):
            raise RuntimeError("ui gone")

    for broker in (Plain(), Broken()):
        task = asyncio.create_task(PermissionPolicy(broker).ask(req()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_prompt_shows_the_exact_code_command_or_diff(tmp_path):
    (tmp_path / "f.py").write_text("a = 1\n")
    tools = default_tools(None, tmp_path, include=["bash", "edit", "write"])
    broker = FakeBroker(Decision.ALLOW, Decision.ALLOW, Decision.ALLOW)
    policy = PermissionPolicy(broker, tools=tools)
    await policy.ask(req("bash", command="rm -rf build && make"))
    await policy.ask(
        PermissionRequest(
            "s1", "c2", "edit", {"path": "f.py", "old_string": "a = 1", "new_string": "a = 2"}
        )
    )
    await policy.ask(PermissionRequest("s1", "c3", "write", {"path": "f.py"}))
    bash, edit, write = broker.asked
    assert bash.summary == "rm -rf build && make"
    assert edit.summary == "--- a/f.py\n+++ b/f.py\n@@ -1 +1 @@\n-a = 1\n+a = 2\n"
    assert write.summary.startswith("write (will fail): 'content' must be a string")
    # a summary the caller already set is kept
    assert (
        policy.with_summary(
            PermissionRequest("s1", "c4", "bash", {"command": "x"}, summary="given")
        ).summary
        == "given"
    )


def test_allowed_tools_must_be_names():
    with pytest.raises(TypeError, match="list of tool names"):
        PermissionPolicy(None, allowed_tools="bash")
    with pytest.raises(TypeError, match="tool names"):
        PermissionPolicy(None, allowed_tools=["bash", 3])
