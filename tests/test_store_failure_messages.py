"""What a turn says when the transcript store failed: exactly what was and was not saved."""

from __future__ import annotations

from types import SimpleNamespace

from support.bounded import within
from test_compaction import FIRST, SUMMARY, agent_for, run_prompts

from jupyter_crush import FinishReason, SessionAgent, SessionAgentCall
from jupyter_crush.core.events import Delta
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall

FAILED = "the transcript store failed ([Errno 28] No space left on device)"


def fail(monkeypatch, store, method: str, error: Exception | None = None) -> None:
    def failing(*args, **kwargs):
        raise error or OSError(28, "No space left on device")

    monkeypatch.setattr(store, method, failing)


async def test_a_failed_flush_after_an_answer_names_the_streamed_updates(store, monkeypatch):
    session = store.create_session()
    fail(monkeypatch, store, "flush")
    agent = SessionAgent(ScriptedModel(["the answer"]), store)
    result = await within(agent.run(SessionAgentCall(session.id, "hi")))
    assert result.reason is FinishReason.ERROR
    assert result.message == (
        f"Answered; {FAILED}; saved: the prompt, the answer; not saved: the latest streamed updates"
    )


async def test_failed_tool_results_are_named(store, monkeypatch):
    session = store.create_session()
    agent = SessionAgent(ScriptedModel([Reply(tool_calls=[ToolCall("echo")])]), store)

    def fail_after_the_step(event):
        if isinstance(event, Delta) and event.message.finish_reason is FinishReason.TOOL_USE:
            fail(monkeypatch, store, "add_message")

    observer = SimpleNamespace(on_event=fail_after_the_step)
    call = SessionAgentCall(session.id, "go", observer=observer)
    result = await within(agent.run(call))
    assert result.reason is FinishReason.ERROR
    assert (
        result.message
        == (  # the failure itself ended the turn
            f"T{FAILED[1:]}; saved: the prompt, the answer; "
            "not saved: the tool results, the finish record"
        )
    )


async def test_a_finish_without_words_is_named_by_its_reason(store, monkeypatch):
    session = store.create_session()
    fail(monkeypatch, store, "flush")
    model = ScriptedModel([Reply(text="filtered", finish=FinishReason.CONTENT_FILTER)])
    result = await within(SessionAgent(model, store).run(SessionAgentCall(session.id, "hi")))
    assert result.message.startswith(f"content_filter; {FAILED}; ")


async def test_a_summary_the_store_failed_to_flush_is_named_the_summary(store, monkeypatch):
    session = store.create_session()
    agent, _ = agent_for(store, ["short answer", "another", SUMMARY])
    await run_prompts(agent, session.id, [FIRST, "second"])
    fail(monkeypatch, store, "flush")
    result = await within(agent.run(SessionAgentCall(session.id, "(compact)", compact=True)))
    assert result.reason is FinishReason.ERROR
    assert result.message == (
        f"Answered; {FAILED}; saved: the summary, the finish record; "
        "not saved: the latest streamed updates"
    )


async def test_a_store_error_without_words_is_named_by_its_type(store, monkeypatch):
    session = store.create_session()
    fail(monkeypatch, store, "flush", OSError())
    agent = SessionAgent(ScriptedModel(["the answer"]), store)
    result = await within(agent.run(SessionAgentCall(session.id, "hi")))
    assert result.message == (
        "Answered; the transcript store failed (OSError); saved: the prompt, the answer; "
        "not saved: the latest streamed updates"
    )
