"""Session titles from a model, made beside the first answer; %crush rename."""

from __future__ import annotations

import asyncio

from IPython.utils.capture import capture_output
from support.bounded import until, within
from test_magics import run

from jupyter_crush import FinishReason, SessionAgent, SessionAgentCall
from jupyter_crush.agent.titles import MAX_TITLE_CHARS, clean_title, prompt_title
from jupyter_crush.core.events import Delta
from jupyter_crush.core.model import ModelError
from jupyter_crush.testing import Reply, ScriptedModel

PROMPT = "Why did the sales in March drop so much compared to February?\nUse df_sales."
ANSWER = " ".join(f"w{n}" for n in range(40))


class TitleWatcher:
    """Records the session's title at each streamed token."""

    def __init__(self, store, session_id) -> None:
        self.store, self.session_id = store, session_id
        self.titles: list[str] = []

    def on_event(self, event) -> None:
        if isinstance(event, Delta):
            self.titles.append(self.store.get_session(self.session_id).title)


def agent_with_titles(store, title_replies, title_rate=None, **answer):
    model = ScriptedModel([ANSWER, "second answer"], **answer)
    agent = SessionAgent(model, store)
    agent.title_model = ScriptedModel(
        title_replies, name="small-model", tokens_per_second=title_rate
    )
    return agent, model


async def test_the_title_arrives_while_the_answer_streams(store):
    session = store.create_session(title=prompt_title(PROMPT))
    # The answer takes ~200 ms, the title ~80 ms: it lands while the answer streams.
    agent, _ = agent_with_titles(
        store, ['"Sales drop in March."'], title_rate=50, tokens_per_second=200
    )
    watcher = TitleWatcher(store, session.id)
    result = await within(agent.run(SessionAgentCall(session.id, PROMPT, observer=watcher)))
    assert result.reason is FinishReason.END_TURN
    assert watcher.titles[0] == prompt_title(PROMPT)  # the first token did not wait for it
    assert "Sales drop in March" in watcher.titles  # arrived mid-answer
    assert store.get_session(session.id).title == "Sales drop in March"
    request = agent.title_model.requests[0]
    assert "Why did the sales in March drop" in request.messages[0].text
    assert request.tools == []


async def test_the_title_request_starts_after_the_answers_first_token(store):
    session = store.create_session(title=prompt_title(PROMPT))
    agent, model = agent_with_titles(store, ["Sales drop"])
    gate = model.gate(step=0, after_tokens=0)  # the answer's request is out, no token yet
    running = asyncio.create_task(agent.run(SessionAgentCall(session.id, PROMPT)))
    await within(gate.reached())
    await asyncio.sleep(0.05)
    assert agent.title_model.requests == []  # nothing of the title's before the first token
    gate.release()
    assert (await within(running)).reason is FinishReason.END_TURN
    await until(lambda: not agent.titler.running(session.id))
    assert len(agent.title_model.requests) == 1
    assert store.get_session(session.id).title == "Sales drop"


async def test_a_held_title_request_never_holds_the_answer(store):
    session = store.create_session(title=prompt_title(PROMPT))
    agent, _ = agent_with_titles(store, ["Sales drop"])
    gate = agent.title_model.gate(step=0, after_tokens=0)
    result = await within(agent.run(SessionAgentCall(session.id, PROMPT)))
    assert result.reason is FinishReason.END_TURN and gate.is_reached
    assert store.get_session(session.id).title == prompt_title(PROMPT)
    gate.release()
    await until(lambda: not agent.titler.running(session.id))
    assert store.get_session(session.id).title == "Sales drop"


async def test_a_failing_title_request_keeps_the_prompts_title(store):
    session = store.create_session(title=prompt_title(PROMPT))
    agent, _ = agent_with_titles(store, [Reply(error=ModelError("overloaded", status_code=529))])
    await within(agent.run(SessionAgentCall(session.id, PROMPT)))
    await until(lambda: not agent.titler.running(session.id))
    assert store.get_session(session.id).title == prompt_title(PROMPT)


async def test_a_cancel_of_the_session_cancels_its_title_request(store):
    session = store.create_session(title=prompt_title(PROMPT))
    agent, model = agent_with_titles(store, ["Never stored"])
    title_gate = agent.title_model.gate(step=0, after_tokens=1)
    answer_gate = model.gate(step=0, after_tokens=1)
    running = asyncio.create_task(agent.run(SessionAgentCall(session.id, PROMPT)))
    await within(title_gate.reached())
    await within(answer_gate.reached())
    agent.cancel(session.id)
    answer_gate.release()
    assert (await within(running)).reason is FinishReason.CANCELED
    await until(lambda: not agent.titler.running(session.id))
    title_gate.release()
    assert store.get_session(session.id).title == prompt_title(PROMPT)


async def test_titler_cancel_all_cancels_every_title_request(store):
    """What the kernel's shutdown calls: no title request outlives it."""
    sessions = [store.create_session(title=prompt_title(PROMPT)) for _ in range(2)]
    agent, _ = agent_with_titles(store, ["Never stored", "Never stored"])
    gates = [agent.title_model.gate(step=n, after_tokens=1) for n in range(2)]
    for session, gate in zip(sessions, gates, strict=True):
        await within(agent.run(SessionAgentCall(session.id, PROMPT)))
        await within(gate.reached())
    agent.titler.cancel_all()
    await until(lambda: not any(agent.titler.running(s.id) for s in sessions))
    for gate in gates:
        gate.release()
    await asyncio.sleep(0)
    assert [store.get_session(s.id).title for s in sessions] == [prompt_title(PROMPT)] * 2


async def test_a_stored_title_reaches_every_listener_even_past_a_failing_one(store, caplog):
    session = store.create_session(title=prompt_title(PROMPT))
    agent, _ = agent_with_titles(store, ["Sales drop in March"])
    heard = []

    def broken(session_id, title):
        raise RuntimeError("view gone")

    agent.titler.listeners += [broken, lambda *titled: heard.append(titled)]
    await within(agent.run(SessionAgentCall(session.id, PROMPT)))
    await until(lambda: not agent.titler.running(session.id))
    assert heard == [(session.id, "Sales drop in March")]
    assert "title listener failed" in [record.getMessage() for record in caplog.records]


async def test_only_a_first_prompt_with_the_prompts_own_title_is_titled(store):
    named = store.create_session(title="analysis")
    agent, _ = agent_with_titles(store, ["A title"])
    await within(agent.run(SessionAgentCall(named.id, PROMPT)))
    fresh = store.create_session(title=prompt_title("first"))
    await within(agent.run(SessionAgentCall(fresh.id, "first")))
    await until(lambda: not agent.titler.running(fresh.id))
    assert store.get_session(named.id).title == "analysis"  # the user's name stays
    (asked,) = agent.title_model.requests  # the named session asked for none
    assert asked.messages[0].session_id == fresh.id
    assert store.get_session(fresh.id).title == "A title"


async def test_titles_off_or_a_scripted_session_model_asks_for_none(store):
    session = store.create_session(title=prompt_title(PROMPT))
    agent = SessionAgent(ScriptedModel([ANSWER]), store)  # no title model: its own is scripted
    await within(agent.run(SessionAgentCall(session.id, PROMPT)))
    assert len(agent.model.requests) == 1
    assert store.get_session(session.id).title == prompt_title(PROMPT)


async def test_a_reasoning_models_thinking_never_becomes_the_title(store):
    session = store.create_session(title=prompt_title(PROMPT))
    thought = "<think>\nThe user asks why March sales fell.\n</think>\n\nSales drop in March"
    agent, _ = agent_with_titles(store, [thought])
    await within(agent.run(SessionAgentCall(session.id, PROMPT)))
    await until(lambda: not agent.titler.running(session.id))
    assert store.get_session(session.id).title == "Sales drop in March"


def test_a_models_answer_becomes_a_short_clean_title():
    assert clean_title('**"Sales drop in March."**\nExtra line') == "Sales drop in March"
    assert clean_title("The user wants a title.\n</think>\nSales drop") == "Sales drop"
    long = clean_title("An extremely long title that goes on and on about many details")
    assert len(long) <= MAX_TITLE_CHARS and long.endswith("…")
    assert clean_title("\n\n") == ""


def test_rename_sets_a_title_and_sessions_lists_it(ip, crush):
    run(ip, "%%crush\nfirst question")
    session_id = crush.current_session_id
    run(ip, f"%crush rename {session_id[:8]} Revenue deep dive")
    assert crush.store.get_session(session_id).title == "Revenue deep dive"
    with capture_output() as captured:
        run(ip, "%crush sessions")
    assert "Revenue deep dive" in captured.stdout
