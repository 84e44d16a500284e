"""Spending caps: a request that could take a session's or the day's spend past its cap is
never sent (the local OpenAI-compatible server sees nothing), the turn ends with the line
saying so, summaries and titles are held to the caps too, a model of unknown price is said
once, and the status line and ``%crush sessions`` show spend against the caps."""

from __future__ import annotations

import datetime
from types import SimpleNamespace

from support.bounded import until, within
from support.openai_chunks import openai_step
from support.replay_server import ReplayServer
from test_agent import Recorder
from test_delta_view_ops import make_view
from test_providers import settings_for

from jupyter_crush import FinishReason, Role, SessionAgent, SessionAgentCall
from jupyter_crush.agent.budget import SpendingCaps, day_start, output_limit, worst_case_cost
from jupyter_crush.core.events import Spending
from jupyter_crush.core.message import Message, TextPart
from jupyter_crush.providers import resolve_model
from jupyter_crush.testing import ScriptedModel

# gpt-4o: $2.50 per million input tokens, $10 per million output; its output limit as the
# context meter counts it is 4,096 tokens, so a short request could cost up to ~$0.041,
# shown rounded up to $0.05.
GPT_4O = "openai:gpt-4o"


def spent(store, session_id: str, cost: float, **fields) -> None:
    """A recorded answer of ``session_id`` that cost ``cost``."""
    store.add_message(
        Message(session_id, Role.ASSISTANT, [TextPart("earlier")], cost=cost, **fields)
    )


def capped_agent(store, url: str, caps: SpendingCaps, model: str = GPT_4O) -> SessionAgent:
    agent = SessionAgent(resolve_model(model, settings=settings_for(url)), store)
    agent.titles = False
    agent.budget.caps = lambda: caps
    return agent


async def test_the_session_cap_stops_the_turn_before_anything_is_sent(store):
    session = store.create_session()
    spent(store, session.id, 0.48)
    async with ReplayServer([openai_step(1, "Hello.")]) as server:
        agent = capped_agent(store, server.url, SpendingCaps(session=0.50))
        view, page, _ = make_view()
        call = SessionAgentCall(session.id, "Say hello.", observer=view)
        result = await within(agent.run(call))
        assert server.requests == []
        line = (
            "stopped: this session has spent $0.48 of its $0.50 cap and the next request could "
            "cost up to $0.05; raise it with %config CrushConfig.max_cost = 0.53"
        )
        assert (result.reason, result.message) == (FinishReason.ERROR, line)
        last = store.list_messages(session.id)[-1]
        assert (last.finish_reason, last.finish.message) == (FinishReason.ERROR, line)
        assert f"error: {line}" in view.status_text()
        assert f"error: {line}" in page.status
        assert "session $0.48 of $0.50 cap" in view.status_text()
        # Raised as the line says, the same prompt is sent.
        agent.budget.caps = lambda: SpendingCaps(session=0.53)
        result = await within(agent.run(SessionAgentCall(session.id, "Say hello.")))
        assert result.reason is FinishReason.END_TURN
        assert len(server.requests) == 1


async def test_a_sub_agents_spend_counts_in_its_parent_sessions_cap(store):
    parent = store.create_session()
    spent(store, parent.id, 0.30)
    child = store.create_session(parent=(parent.id, "call_agent"))
    spent(store, child.id, 0.18)
    async with ReplayServer([openai_step(1, "Found it.")]) as server:
        agent = capped_agent(store, server.url, SpendingCaps(session=0.50))
        for session_id in (parent.id, child.id):
            result = await within(agent.run(SessionAgentCall(session_id, "Where is it?")))
            assert result.message.startswith(
                "stopped: this session has spent $0.48 of its $0.50 cap"
            )
        assert server.requests == []


async def test_the_day_cap_counts_every_session_since_local_midnight(store, monkeypatch):
    before_midnight = SimpleNamespace(time=lambda: day_start() - 3600)
    with monkeypatch.context() as yesterday:
        yesterday.setattr("jupyter_crush.core.message.time", before_midnight)
        older = store.create_session()
        spent(store, older.id, 3.00)  # yesterday: not today's
    spent(store, older.id, 1.00)
    session = store.create_session()
    spent(store, session.id, 2.98)
    async with ReplayServer([openai_step(1, "Hello.")]) as server:
        agent = capped_agent(store, server.url, SpendingCaps(session=100.0, day=4.00))
        result = await within(agent.run(SessionAgentCall(session.id, "Say hello.")))
        assert server.requests == []
    assert result.message == (
        "stopped: today's sessions have spent $3.98 of the $4.00 daily cap and the next "
        "request could cost up to $0.05; raise it with %config CrushConfig.max_cost_per_day "
        "= 4.03"
    )


async def test_a_summary_request_is_held_to_the_cap(store):
    session = store.create_session()
    for text in ("first task", "second task"):
        store.add_message(Message(session.id, Role.USER, [TextPart(text)]))
        spent(store, session.id, 0.24)
    async with ReplayServer([openai_step(1, "## Task\nsummary")]) as server:
        agent = capped_agent(store, server.url, SpendingCaps(session=0.50))
        call = SessionAgentCall(session.id, "compact", compact=True)
        result = await within(agent.run(call))
        assert server.requests == []
    assert result.reason is FinishReason.ERROR
    assert result.message.startswith("stopped: this session has spent $0.48 of its $0.50 cap")
    assert not [m for m in store.list_messages(session.id) if m.role is Role.SUMMARY]


async def test_a_title_request_past_the_cap_is_not_sent(store):
    # gpt-4o-mini ($0.15 / $0.60 per million) answers within a cent; a gpt-4o title could
    # cost ~$0.04.
    async with ReplayServer([openai_step(1, "Hello."), openai_step(2, "Greeting")]) as server:
        agent = capped_agent(store, server.url, SpendingCaps(session=0.01), "openai:gpt-4o-mini")
        agent.titles = True
        agent.title_model = resolve_model(GPT_4O, settings=settings_for(server.url))
        session = store.create_session(title="Say hello.")
        result = await within(agent.run(SessionAgentCall(session.id, "Say hello.")))
        await until(lambda: not agent.titler.running(session.id))
        assert result.reason is FinishReason.END_TURN
        assert len(server.requests) == 1  # the answer's; not the title's
    assert store.get_session(session.id).title == "Say hello."


async def test_a_model_of_unknown_price_is_said_once_and_its_requests_go_on(store):
    agent = SessionAgent(ScriptedModel(["one", "two"]), store)
    agent.budget.caps = lambda: SpendingCaps(session=0.01)
    session = store.create_session()
    notes = []
    for prompt in ("first", "second"):
        recorder = Recorder()
        result = await within(agent.run(SessionAgentCall(session.id, prompt, observer=recorder)))
        assert result.reason is FinishReason.END_TURN
        notes.append([e.note for e in recorder.events if isinstance(e, Spending)])
    assert notes == [
        [
            "the price of scripted:scripted-model is unknown, so the spending cap cannot hold its "
            "requests"
        ],
        [""],
    ]


async def test_without_caps_nothing_is_checked_or_shown(store):
    recorder = Recorder()
    agent = SessionAgent(ScriptedModel(["one"]), store)
    session = store.create_session()
    await within(agent.run(SessionAgentCall(session.id, "hi", observer=recorder)))
    assert not [e for e in recorder.events if isinstance(e, Spending)]


def test_the_worst_case_is_the_input_estimate_plus_the_output_limit():
    model = resolve_model(GPT_4O, settings=settings_for("http://127.0.0.1:9"))
    request = [Message("s", Role.USER, [TextPart("x" * 3996)])]  # 999 + 4 tokens, 1 for "[]"
    assert worst_case_cost(model, request, None, ()) == (1004 * 2.5 + 4096 * 10) / 1e6


def test_a_thinking_budget_counts_in_the_output_limit():
    model = resolve_model(
        "anthropic:claude-sonnet-4-20250514",
        settings=settings_for("http://127.0.0.1:9", thinking_budget=10_000),
    )
    assert output_limit(model) == 14_096  # what the request asks for: the budget and 4,096


def test_the_status_line_shows_spend_against_the_caps():
    view = budget_view()
    view.on_event(Spending(0.12, 0.50, 1.2, 5.0))
    assert "session $0.12 of $0.50 cap · today $1.20 of $5.00 cap" in view.status_text()
    view.finish(FinishReason.END_TURN, cost=0.03)  # counted on top of the spend before it
    assert "session $0.15 of $0.50 cap · today $1.23 of $5.00 cap" in view.status_text()
    note = "the price of compat:local is unknown, so the spending cap cannot hold its requests"
    view = budget_view()
    view.on_event(Spending(0.0, 0.0, 0.004, 5.0, note))
    assert view.status_text().endswith(f"today $0.0040 of $5.00 cap · {note}")


def budget_view():
    from jupyter_crush.view.base import RunLabels
    from jupyter_crush.view.widgets import WidgetsRunView

    return WidgetsRunView(RunLabels("s", "openai:gpt-4o"), on_stop=lambda: None)


def test_sessions_lists_spend_against_the_caps(ip, capsys):
    from jupyter_crush.magics import current

    crush = current()
    session = crush.store.create_session(title="analysis")
    spent(crush.store, session.id, 0.48)
    ip.run_line_magic("crush", "sessions")
    assert "cap" not in capsys.readouterr().out
    ip.run_line_magic("config", "CrushConfig.max_cost = 0.5")
    ip.run_line_magic("config", "CrushConfig.max_cost_per_day = 5")
    ip.run_line_magic("crush", "sessions")
    lines = capsys.readouterr().out.splitlines()
    (listed,) = [line for line in lines if "analysis" in line]
    assert listed.endswith("  $0.48 of $0.50 cap")
    assert lines[-1] == "today: $0.48 of the $5.00 daily cap"
    assert crush.spending_caps() == SpendingCaps(0.5, 5.0)


def test_day_start_is_the_last_local_midnight():
    start = datetime.datetime.fromtimestamp(day_start())
    assert start.date() == datetime.date.today() and start.time() == datetime.time()
    assert day_start(day_start() + 3600) == day_start()


def test_a_cell_past_the_cap_shows_the_line_and_sends_nothing(ip):
    from support.replay_server import serving

    from jupyter_crush.magics import current

    with serving([openai_step(1, "Hello.")]) as server:
        for setting in (
            "api_keys = {'openai': 'sk-budget-test-key'}",
            f"base_urls = {{'openai': '{server.url}/v1'}}",
            "model = 'openai:gpt-4o'",
            "titles = False",
            "max_cost = 0.01",
        ):
            ip.run_line_magic("config", f"CrushConfig.{setting}")
        ip.run_cell("%%crush --new -s capped\nSay hello.")
        assert server.requests == []
    line = "stopped: this session has spent $0.00 of its $0.01 cap and the next request could"
    view = current().last_view
    assert f"error: {line}" in view.status_text()
    last = current().store.list_messages(current().current_session_id)[-1]
    assert last.finish.message.startswith(line)
