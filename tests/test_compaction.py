"""Long sessions: summaries near the context window, the fallback cut, %crush compact."""

from __future__ import annotations

import asyncio
import json

import pytest
from support.bounded import until, within
from test_agent import Recorder, echo_tool

from jupyter_crush import FinishReason, Role, SessionAgent, SessionAgentCall
from jupyter_crush.agent.compaction import (
    NOTHING_TO_SUMMARIZE,
    SUMMARY_INTRO,
    SUMMARY_REQUEST,
    ContextPolicy,
    RequestShaper,
    request_view,
    summary_request,
)
from jupyter_crush.core.events import Compacted, ContextUsed, Summarizing
from jupyter_crush.core.message import (
    Message,
    SummaryOfPart,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from jupyter_crush.core.model import ModelError
from jupyter_crush.core.tokens import ContextWindow, Meter, request_tokens
from jupyter_crush.providers.history import conversation
from jupyter_crush.providers.windows import model_window
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall

#: A window of 2,000 tokens: output 1,000 (half the window), reserve 1,000, budget 1,000.
WINDOW = 2000
ANSWER = "word " * 300  # ~300 tokens as the scripted model counts, ~375 as we estimate
FIRST = "TASK: find why sales dropped in March; answer in French."
SUMMARY = "The user wants the March sales drop explained, in French. Tables were loaded."


def agent_for(store, replies, **policy) -> tuple[SessionAgent, ScriptedModel]:
    model = ScriptedModel(replies)
    context = ContextPolicy(context_window=WINDOW, **policy)
    return SessionAgent(model, store, system_prompt="SYSTEM", context=context), model


def is_summary_request(request) -> bool:
    return request.messages[-1].text == summary_request(WINDOW // 10)  # the longest taken


async def run_prompts(agent, session_id, prompts, observer=None):
    results = []
    for prompt in prompts:
        call = SessionAgentCall(session_id, prompt, observer=observer)
        results.append(await within(agent.run(call)))
    return results


async def test_a_session_past_its_window_summarizes_once_and_keeps_first_and_newest(store):
    session = store.create_session()
    agent, model = agent_for(store, [ANSWER] * 4 + [SUMMARY, ANSWER, ANSWER])
    recorder = Recorder()
    prompts = [FIRST, "second", "third", "fourth", "fifth", "sixth"]
    results = await run_prompts(agent, session.id, prompts, recorder)
    assert all(r.reason is FinishReason.END_TURN for r in results)

    summaries = [i for i, r in enumerate(model.requests) if is_summary_request(r)]
    assert summaries == [4]  # once, before the fifth prompt's answer
    ask, after, last = model.requests[3], model.requests[4], model.requests[5]
    # The summary request is the previous request plus the new prompt and the question:
    # same system prompt, same tools, same leading messages, so a prompt cache serves it.
    assert [m.id for m in after.messages[: len(ask.messages)]] == [m.id for m in ask.messages]
    assert [m.text for m in after.messages[len(ask.messages) : -1]] == [ANSWER, "fifth"]
    assert (after.system, after.tools) == (ask.system, ask.tools)
    # The answer's request: the first instruction verbatim, the summary, the newest turn.
    sent = [m.text for m in last.messages]
    assert sent[0] == FIRST
    assert sent[1] == SUMMARY_INTRO + SUMMARY and len(sent) == 3 and sent[2] == "fifth"
    assert last.system == "SYSTEM"
    # The next turn goes on from there, without another summary.
    sixth = [m.text for m in model.requests[6].messages]
    assert sixth[:3] == sent and sixth[-1] == "sixth"

    stored = store.list_messages(session.id)
    assert [m.text for m in stored if m.role is Role.USER] == prompts  # nothing lost
    assert sum(1 for m in stored if m.role is Role.ASSISTANT) == 6
    (summary,) = [m for m in stored if m.role is Role.SUMMARY]
    assert summary.text == SUMMARY and summary.usage.output_tokens > 0
    (of,) = [p for p in summary.parts if isinstance(p, SummaryOfPart)]
    assert (of.covered, of.trigger) == (8, "auto")
    assert store.get_message(session.id, of.first_kept).text == "fifth"

    kinds = [type(e) for e in recorder.events if isinstance(e, Summarizing | Compacted)]
    assert kinds == [Summarizing, Compacted]
    meters = [e.meter for e in recorder.events if isinstance(e, ContextUsed)]
    assert meters[0].limits == ContextWindow(WINDOW, WINDOW // 2)
    assert any(m.near_limit for m in meters) and not meters[-1].near_limit


async def test_the_summary_question_asks_for_a_briefing_within_the_longest_summary_taken(store):
    session = store.create_session()
    agent, model = agent_for(store, [ANSWER] * 4 + [SUMMARY, ANSWER])
    await run_prompts(agent, session.id, [FIRST, "second", "third", "fourth", "fifth"])
    (ask,) = [r for r in model.requests if is_summary_request(r)]
    question = ask.messages[-1]
    assert question.role is Role.USER
    assert question.text.startswith("Stop here: do not answer or continue the task")
    assert "do not call tools" in question.text  # the request offers them: same prefix
    headings = [line for line in question.text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Task",
        "## Progress",
        "## Notebook and files",
        "## What worked, what failed",
        "## Decisions",
        "## Next steps",
    ]
    # The longest summary taken is a tenth of the window (200 tokens here): asked in words.
    assert question.text.endswith(
        "Be complete, in at most 100 words. Answer with the summary only."
    )
    assert "in at most 12,000 words" in summary_request(200_000 // 10)


async def test_a_second_summary_is_asked_with_the_first_in_its_request(store):
    session = store.create_session()
    again = "The sales drop comes from the north region; the French report is half done."
    agent, model = agent_for(store, [ANSWER] * 4 + [SUMMARY] + [ANSWER] * 4 + [again, ANSWER])
    prompts = [FIRST, "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth"]
    await run_prompts(agent, session.id, prompts)
    _, second_ask = [r for r in model.requests if is_summary_request(r)]
    # The second summary request is the request as sent since the first: the first
    # instruction, the first summary (which the question says to fold in), the newer turns.
    sent = [m.text for m in second_ask.messages]
    assert sent[:2] == [FIRST, SUMMARY_INTRO + SUMMARY]
    assert "including any earlier summary" in sent[-1]
    last = [m.text for m in model.requests[-1].messages]
    assert last[:2] == [FIRST, SUMMARY_INTRO + again] and SUMMARY_INTRO + SUMMARY not in last
    assert last[-1] == "ninth"
    stored = store.list_messages(session.id)
    assert [m.text for m in stored if m.role is Role.SUMMARY] == [SUMMARY, again]
    assert [m.text for m in stored if m.role is Role.USER] == prompts


async def test_the_count_is_the_providers_plus_an_estimate_of_what_came_after(store):
    reported = Message("s", Role.ASSISTANT, [TextPart("ok")], usage=Usage(900, 100, 50, 0))
    after = Message("s", Role.USER, [TextPart("x" * 400)])
    assert request_tokens([reported, after], "S" * 4000, []) == 900 + 100 + 50 + 100 + 4
    # An answer counted before the latest summary was counted on a longer request.
    assert request_tokens([reported, after], "", [], since=reported.created_at + 1) < 300


async def test_a_summary_never_separates_a_tool_call_from_its_result(store):
    session = store.create_session()
    calls = [Reply(text=ANSWER, tool_calls=[ToolCall("echo", {"text": str(n)})]) for n in range(4)]
    agent, model = agent_for(store, [*calls, SUMMARY, "done"])
    agent.tools["echo"] = echo_tool()
    result = await within(agent.run(SessionAgentCall(session.id, FIRST)))
    assert result.reason is FinishReason.END_TURN
    assert sum(is_summary_request(r) for r in model.requests) == 1
    sent = model.requests[-1].messages
    assert sent[0].text == FIRST and SUMMARY in sent[1].text
    assert sent[2].role is Role.ASSISTANT  # the kept turns start at a step, not a result
    calls = {c.id for m in sent for c in m.tool_calls}
    assert calls == {r.tool_call_id for m in sent for r in m.tool_results}


async def test_stop_during_the_summary_cancels_the_turn_and_changes_nothing(store):
    session = store.create_session()
    agent, model = agent_for(store, [ANSWER] * 4 + [SUMMARY, SUMMARY, "fine"])
    await run_prompts(agent, session.id, [FIRST, "second", "third", "fourth"])
    before = store.list_messages(session.id)
    gate = model.gate(step=4, after_tokens=2)
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "fifth")))
    await within(gate.reached())
    agent.cancel(session.id)
    gate.release()
    result = await within(run)
    assert result.reason is FinishReason.CANCELED
    after = store.list_messages(session.id)
    assert not [m for m in after if m.role is Role.SUMMARY]
    assert [m.id for m in after[: len(before)]] == [m.id for m in before]
    assert [(m.role, m.text) for m in after[len(before) :]] == [
        (Role.USER, "fifth"),
        (Role.ASSISTANT, ""),
    ]
    assert after[-1].finish_reason is FinishReason.CANCELED
    # Still usable: the next prompt summarizes and answers.
    again = await within(agent.run(SessionAgentCall(session.id, "again")))
    assert again.reason is FinishReason.END_TURN
    assert model.requests[-1].messages[-1].text == "again"


async def check_fallback(store, summary_reply, why: str) -> None:
    session = store.create_session()
    agent, model = agent_for(store, [ANSWER] * 4 + [summary_reply, "answered"])
    recorder = Recorder()
    await run_prompts(agent, session.id, [FIRST, "second", "third", "fourth"])
    (result,) = await run_prompts(agent, session.id, ["fifth"], recorder)
    assert result.reason is FinishReason.END_TURN
    sent = model.requests[-1].messages
    assert sent[0].text == FIRST and "left out to fit" in sent[1].text
    assert sent[-1].text == "fifth"
    (note,) = [e for e in recorder.events if isinstance(e, Compacted)]
    assert note.summary is None and why in note.note
    assert not [m for m in store.list_messages(session.id) if m.role is Role.SUMMARY]


async def test_a_failing_summary_falls_back_to_cutting_old_turns(store):
    await check_fallback(store, Reply(error=ModelError("overloaded", status_code=529)), "failed")


async def test_an_empty_summary_falls_back_to_cutting_old_turns(store):
    await check_fallback(store, Reply(text=""), "empty")


async def test_an_overlong_summary_falls_back_to_cutting_old_turns(store):
    await check_fallback(store, Reply(text="long " * 400), "longer than")


async def test_auto_compact_off_cuts_old_turns_without_asking(store):
    session = store.create_session()
    agent, model = agent_for(store, [ANSWER] * 5, auto_compact=False)
    await run_prompts(agent, session.id, [FIRST, "second", "third", "fourth", "fifth"])
    assert not any(is_summary_request(r) for r in model.requests)
    assert model.requests[-1].messages[0].text == FIRST
    assert "left out to fit" in model.requests[-1].messages[1].text


async def test_compact_on_an_idle_session_summarizes_it_now(store):
    session = store.create_session()
    agent, model = agent_for(store, ["short answer", "another", SUMMARY])
    await run_prompts(agent, session.id, [FIRST, "second"])
    compact = SessionAgentCall(session.id, "(compact)", compact=True)
    assert (await within(agent.run(compact))).reason is FinishReason.END_TURN
    assert is_summary_request(model.requests[2])
    stored = store.list_messages(session.id)
    assert [m.text for m in stored if m.role is Role.USER] == [FIRST, "second"]
    (summary,) = [m for m in stored if m.role is Role.SUMMARY]
    assert [p.trigger for p in summary.parts if isinstance(p, SummaryOfPart)] == ["manual"]


async def test_compact_summarizes_every_turn_but_the_newest_and_the_next_request_sends_that(
    store,
):
    session = store.create_session()
    answers = ["answer one", "answer two", "answer three", SUMMARY, "answer four"]
    agent, model = agent_for(store, answers)
    await run_prompts(agent, session.id, [FIRST, "second", "third"])
    compact = SessionAgentCall(session.id, "(compact)", compact=True)
    assert (await within(agent.run(compact))).reason is FinishReason.END_TURN
    # Asked with every turn in it (the previous request plus the question)...
    asked = [m.text for m in model.requests[3].messages]
    assert asked[:-1] == [FIRST, "answer one", "second", "answer two", "third", "answer three"]
    (summary,) = [m for m in store.list_messages(session.id) if m.role is Role.SUMMARY]
    (of,) = [p for p in summary.parts if isinstance(p, SummaryOfPart)]
    assert (of.covered, store.get_message(session.id, of.first_kept).text) == (4, "third")
    # ...and from then on the summary stands for all but the newest turn.
    await run_prompts(agent, session.id, ["fourth"])
    sent = [m.text for m in conversation(model.requests[4].messages)]  # as a provider sends
    assert sent == [FIRST, SUMMARY_INTRO + SUMMARY, "third", "answer three", "fourth"]


async def test_compact_of_a_single_turn_says_there_is_nothing_to_summarize_and_asks_nothing(
    store,
):
    session = store.create_session()
    agent, model = agent_for(store, ["short answer"])
    await run_prompts(agent, session.id, [FIRST])
    for _ in range(2):  # and again with nothing new since
        recorder = Recorder()
        compact = SessionAgentCall(session.id, "(compact)", compact=True, observer=recorder)
        assert (await within(agent.run(compact))).reason is FinishReason.END_TURN
        notes = [e for e in recorder.events if isinstance(e, Compacted | Summarizing)]
        assert notes == [Compacted(None, NOTHING_TO_SUMMARIZE)]
    assert len(model.requests) == 1  # the first prompt's answer only
    assert not [m for m in store.list_messages(session.id) if m.role is Role.SUMMARY]


async def test_compact_of_an_empty_session_asks_nothing(store):
    session = store.create_session()
    agent, model = agent_for(store, [])
    recorder = Recorder()
    compact = SessionAgentCall(session.id, "(compact)", compact=True, observer=recorder)
    assert (await within(agent.run(compact))).reason is FinishReason.END_TURN
    assert model.requests == []
    assert Compacted(None, NOTHING_TO_SUMMARIZE) in recorder.events


async def test_compact_after_a_summary_summarizes_only_when_a_turn_was_added_since(store):
    session = store.create_session()
    again = "Sales fell in the north; the report is half written."
    agent, model = agent_for(store, ["a1", "a2", SUMMARY, "a3", again])
    await run_prompts(agent, session.id, [FIRST, "second"])
    compact = SessionAgentCall(session.id, "(compact)", compact=True)
    await within(agent.run(compact))
    await within(agent.run(compact))  # nothing since the summary: no request
    assert len(model.requests) == 3
    await run_prompts(agent, session.id, ["third"])
    await within(agent.run(compact))
    asked = [m.text for m in conversation(model.requests[4].messages)]
    assert asked[:-1] == [FIRST, SUMMARY_INTRO + SUMMARY, "second", "a2", "third", "a3"]
    summaries = [m for m in store.list_messages(session.id) if m.role is Role.SUMMARY]
    assert [m.text for m in summaries] == [SUMMARY, again]
    (of,) = [p for p in summaries[-1].parts if isinstance(p, SummaryOfPart)]
    assert store.get_message(session.id, of.first_kept).text == "third"


async def test_compact_keeps_a_running_turn_whole_with_the_prompts_folded_into_it():
    # A compaction folded into a running turn: the turn began at "second" and a queued
    # prompt joined it after its tool results; the summary covers only the turn before.
    def said(role, text):
        return Message("s", role, [TextPart(text)])

    calls = Message("s", Role.ASSISTANT, [ToolCallPart("c1", "echo", "{}", finished=True)])
    results = Message("s", Role.TOOL, [ToolResultPart("c1", "echo", "ok")])
    history = [
        said(Role.USER, FIRST),
        said(Role.ASSISTANT, "answer one"),
        said(Role.USER, "second"),
        calls,
        results,
        said(Role.USER, "and also this"),
    ]
    stored = []
    shaper = RequestShaper(
        ScriptedModel([SUMMARY]),
        "SYSTEM",
        [],
        ContextPolicy(context_window=WINDOW),
        stored.append,
        lambda event: None,
        lambda: None,
    )
    summary = await within(shaper.compact(history))
    (of,) = [p for p in summary.parts if isinstance(p, SummaryOfPart)]
    assert (of.first_kept, of.covered) == (history[2].id, 2)
    sent = [m.text for m in request_view(history)]
    assert sent == [FIRST, SUMMARY_INTRO + SUMMARY, "second", "", "", "and also this"]


async def test_compact_on_a_busy_session_waits_like_a_prompt(store):
    session = store.create_session()
    agent, model = agent_for(store, ["first answer", "second answer", SUMMARY])
    await run_prompts(agent, session.id, [FIRST])
    gate = model.gate(step=1, after_tokens=1)
    running = asyncio.create_task(agent.run(SessionAgentCall(session.id, "second")))
    await within(gate.reached())
    recorder = Recorder()
    queued = await within(
        agent.run(SessionAgentCall(session.id, "(compact)", compact=True, observer=recorder))
    )
    assert queued is None  # queued behind the running prompt
    gate.release()
    await within(running)
    await until(lambda: recorder.finished)
    assert recorder.finished[0].reason is FinishReason.END_TURN
    assert is_summary_request(model.requests[2])
    assert [m.role for m in store.list_messages(session.id)][-1] is not Role.USER


def test_windows_come_from_the_override_the_price_table_or_nowhere():
    from jupyter_crush.providers import ProviderSettings, resolve_model

    settings = ProviderSettings(api_keys={"anthropic": "k", "openai": "k"}, crush_config=False)
    sonnet = resolve_model("anthropic:claude-sonnet-4-20250514", settings=settings)
    assert model_window(sonnet) == ContextWindow(200_000, 4096)
    assert model_window(sonnet).reserve == 40_000  # 20% of the window beats the output limit
    assert model_window(resolve_model("openai:gpt-4o", settings=settings)).window == 128_000
    assert model_window(sonnet, 50_000).window == 50_000
    assert model_window(ScriptedModel()) is None
    assert str(Meter(41_200, ContextWindow(200_000, 4096))) == "41k / 200k"


def test_a_crush_json_model_entry_gives_window_and_output(tmp_path):
    import json

    from jupyter_crush.providers import ProviderSettings, resolve_model

    path = tmp_path / "crush.json"
    entry = {"id": "local-7b", "context_window": 32_768, "default_max_tokens": 2048}
    provider = {"type": "openai-compat", "base_url": "http://127.0.0.1:1/v1", "models": [entry]}
    path.write_text(json.dumps({"providers": {"mine": {**provider, "api_key": "x"}}}))
    settings = ProviderSettings(crush_config=str(path), trust_project_config=True)
    model = resolve_model("mine:local-7b", settings=settings)
    assert model_window(model) == ContextWindow(32_768, 2048)


def test_compact_command_and_the_meter_in_sessions(ip):
    from IPython.utils.capture import capture_output
    from test_magics import run

    from jupyter_crush.magics import current

    crush = current()
    crush.use_model(ScriptedModel(["first answer", "second answer", SUMMARY]))
    run(ip, "%%crush\n" + FIRST)
    run(ip, "%%crush\nsecond")
    run(ip, "%crush compact")
    stored = crush.store.list_messages(crush.current_session_id)
    assert [m.text for m in stored if m.role is Role.SUMMARY] == [SUMMARY]
    run(ip, f"%config CrushConfig.context_window = {WINDOW}")
    with capture_output() as captured:
        run(ip, "%crush history")
        run(ip, "%crush sessions")
    assert f"summary\n  {SUMMARY}" in captured.stdout
    assert " / 2k" in captured.stdout


def test_compact_command_on_a_single_turn_prints_one_line_and_asks_nothing(ip):
    from IPython.utils.capture import capture_output
    from test_magics import run

    from jupyter_crush.magics import current

    crush = current()
    model = ScriptedModel(["first answer"])
    crush.use_model(model)
    run(ip, "%%crush\n" + FIRST)
    with capture_output() as captured:
        run(ip, "%crush compact")
    assert len(model.requests) == 1
    last = captured.outputs[-1].data["text/plain"]
    assert NOTHING_TO_SUMMARIZE in last and "\n" not in last.strip()


def test_the_sessions_frame_carries_the_meter_of_percent_crush_sessions(ip):
    from IPython.utils.capture import capture_output
    from test_magics import run

    import jupyter_crush as crush_api
    from jupyter_crush.magics import current

    crush = current()
    crush.use_model(ScriptedModel([ANSWER] * 4 + ["short"]))
    for prompt in (FIRST, "second", "third", "fourth"):
        run(ip, "%%crush -s long\n" + prompt)
    run(ip, "%%crush -s short\nhello")
    before = crush_api.sessions()
    assert before.context_tokens.isna().all()  # no window known: nothing to measure against
    run(ip, f"%config CrushConfig.context_window = {WINDOW}")
    with capture_output() as captured:
        run(ip, "%crush sessions")
    frame = crush_api.sessions().set_index("title")
    assert list(frame.context_window) == [WINDOW, WINDOW]
    assert frame.near_limit.to_dict() == {"short": False, "long": True}
    long, short = frame.loc["long"], frame.loc["short"]
    assert long.context_tokens > 1000 > short.context_tokens  # the budget is 1,000
    shown = {
        t: next(x for x in captured.stdout.splitlines() if f"  {t}  " in x) for t in frame.index
    }
    limits = ContextWindow(WINDOW, WINDOW // 2)
    assert shown["long"].endswith(f"  {Meter(long.context_tokens, limits)} (near the limit)")
    assert shown["short"].endswith(f"  {Meter(short.context_tokens, limits)}")


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_real_sdks_summarize_a_session_past_a_small_window(store, protocol):
    from support.replay_server import ReplayServer, Step
    from test_providers import protocol_model, simple_body

    first, second = "A" * 2400 + " first task", "B" * 2400 + " second"
    async with ReplayServer([Step(simple_body(protocol)) for _ in range(3)]) as server:
        model = protocol_model(protocol, server.url)
        policy = ContextPolicy(context_window=1000)  # budget 500 tokens: each prompt is ~600
        agent = SessionAgent(model, store, context=policy)
        session = store.create_session()
        for prompt in (first, second):
            result = await within(agent.run(SessionAgentCall(session.id, prompt)))
            assert result.reason is FinishReason.END_TURN
        bodies = [json.dumps(seen.json(), ensure_ascii=False) for seen in server.requests]
    assert len(bodies) == 3
    assert SUMMARY_REQUEST[:40] in bodies[1]  # the summary request, through the real SDK
    (summary,) = [m for m in store.list_messages(session.id) if m.role is Role.SUMMARY]
    assert summary.text and summary.text[-15:] in bodies[2]  # the summary is sent
    assert first in bodies[2] and second in bodies[2]  # first instruction and newest turn
    users = [m.text for m in store.list_messages(session.id) if m.role is Role.USER]
    assert users == [first, second]
