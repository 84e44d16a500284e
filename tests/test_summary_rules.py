"""The automatic summary, one rule per test: what the observer hears when a summary is stored,
what the summary request carries, and why a summary that cannot be used falls back to cutting
old turns (said in the note the run widget shows)."""

from __future__ import annotations

from test_agent import Recorder, echo_tool
from test_compaction import (
    ANSWER,
    FIRST,
    SUMMARY,
    WINDOW,
    agent_for,
    is_summary_request,
    run_prompts,
)

from jupyter_crush import FinishReason, Role, SessionAgent
from jupyter_crush.agent.compaction import ContextPolicy
from jupyter_crush.core.events import Compacted, ContextUsed, Summarizing
from jupyter_crush.core.model import ModelError, StreamFinish
from jupyter_crush.core.tokens import ContextWindow
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall

PROMPTS = [FIRST, "second", "third", "fourth"]


async def fifth_prompt_events(store, agent) -> tuple[list, str]:
    session = store.create_session()
    await run_prompts(agent, session.id, PROMPTS)
    recorder = Recorder()
    await run_prompts(agent, session.id, ["fifth"], recorder)
    return recorder.events, session.id


async def test_a_stored_summary_is_announced_with_it_and_the_meter_drops_at_once(store):
    agent, _ = agent_for(store, [ANSWER] * 4 + [SUMMARY, "answered"])
    events, session_id = await fifth_prompt_events(store, agent)
    (summary,) = [m for m in store.list_messages(session_id) if m.role is Role.SUMMARY]
    at = next(i for i, e in enumerate(events) if isinstance(e, Compacted))
    assert events[at] == Compacted(events[at].summary, "")  # stored, nothing to explain
    assert events[at].summary.id == summary.id
    before = next(e for e in events if isinstance(e, ContextUsed))
    after = events[at - 1]  # the meter of the request the summary made, before the answer
    assert isinstance(after, ContextUsed)
    assert after.meter.limits == ContextWindow(WINDOW, WINDOW // 2)
    assert 0 < after.meter.used < before.meter.used and not after.meter.near_limit


async def test_the_summary_request_offers_the_turns_tools(store):
    echo = echo_tool()
    model = ScriptedModel(
        [Reply(tool_calls=[ToolCall("echo", {"text": "x"})]), ANSWER, *[ANSWER] * 3, SUMMARY, "ok"]
    )
    context = ContextPolicy(context_window=WINDOW)
    agent = SessionAgent(model, store, system_prompt="SYSTEM", tools=[echo], context=context)
    await fifth_prompt_events(store, agent)
    ask, summary = model.requests[-3], model.requests[-2]
    assert is_summary_request(summary) and not is_summary_request(ask)
    assert [t.name for t in summary.tools] == [t.name for t in ask.tools] == ["echo"]


class EndsWithoutFinish(ScriptedModel):
    """A provider whose summary stream stops without saying how it ended."""

    async def stream(self, messages, *, system=None, tools=()):
        summarizing = len(self.requests) == 4
        async for event in super().stream(messages, system=system, tools=tools):
            if not (summarizing and isinstance(event, StreamFinish)):
                yield event


async def fallback_note(store, model: ScriptedModel) -> str:
    context = ContextPolicy(context_window=WINDOW)
    agent = SessionAgent(model, store, system_prompt="SYSTEM", context=context)
    events, session_id = await fifth_prompt_events(store, agent)
    assert [type(e) for e in events if isinstance(e, Summarizing | Compacted)] == [
        Summarizing,
        Compacted,
    ]
    (note,) = [e for e in events if isinstance(e, Compacted)]
    assert note.summary is None
    assert not [m for m in store.list_messages(session_id) if m.role is Role.SUMMARY]
    assert store.list_messages(session_id)[-1].finish_reason is FinishReason.END_TURN
    return note.note.split(": ", 1)[1]  # after "N old messages left out to fit"


async def test_a_summary_stream_without_a_finish_falls_back_saying_so(store):
    model = EndsWithoutFinish([ANSWER] * 4 + [SUMMARY, "answered"])
    assert await fallback_note(store, model) == "the summary stream ended without a finish"


async def test_a_summary_cut_short_falls_back_saying_how_it_ended(store):
    cut_short = Reply(SUMMARY, finish=FinishReason.MAX_TOKENS)
    model = ScriptedModel([ANSWER] * 4 + [cut_short, "answered"])
    assert await fallback_note(store, model) == "the summary ended with max_tokens"


async def test_a_failed_summary_request_falls_back_naming_the_providers_error(store):
    error = ModelError("overloaded", status_code=529)
    model = ScriptedModel([ANSWER] * 4 + [Reply(error=error), "answered"])
    note = await fallback_note(store, model)
    assert note.startswith("the summary request failed (") and "overloaded" in note
