"""A transcript store filled by real agent runs, for the tests of its query surfaces.

Session "NaN analysis": a turn with reasoning, a tool call and its result, then an answer;
then a turn canceled while streaming. Session "Rate limits": a turn the model failed.
Session "Straße": a plain turn with non-ASCII text.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from jupyter_crush import SessionAgent, SessionAgentCall, TranscriptStore
from jupyter_crush.core.message import Usage
from jupyter_crush.core.model import ModelError, ToolSpec
from jupyter_crush.core.tools import Tool, ToolResult
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall

QUESTION = 'Why does df have NaNs in column "price"?'
REASONING = "Inspect the Price column before answering."
ANSWER = "Three rows have NaN prices: the merge with ```stock``` dropped them."
TOOL_OUTPUT = "price: 3 NaN of 10 rows\n```\nNaN NaN NaN\n```"  # a fence inside
CANCELED_PROMPT = "Plot the prices per day"
CANCELED_PARTIAL = "Plotting the"
ERROR_PROMPT = "Summarize the quarterly report"
ERROR_MESSAGE = "openai HTTP 429: Rate limit reached"
UMLAUT_PROMPT = "Which STRASSE has the most shops?"
UMLAUT_ANSWER = "The Hauptstraße in Zürich."


@dataclass
class Transcripts:
    path: Path
    analysis: str  # session ids
    errors: str
    umlaut: str


def _inspect_tool() -> Tool:
    async def run(arguments, context):
        return ToolResult(TOOL_OUTPUT)

    spec = ToolSpec(
        "inspect", "Describe a variable.", {"type": "object", "properties": {"name": {}}}
    )
    return Tool(spec, run)


async def _fill(store: TranscriptStore) -> Transcripts:
    analysis = store.create_session("NaN analysis").id
    model = ScriptedModel(
        [
            Reply(reasoning=REASONING, tool_calls=[ToolCall("inspect", {"name": "df"})]),
            Reply(text=ANSWER, usage=Usage(120, 30), cost=0.0021),
            "Plotting the prices now, one line per day.",
        ]
    )
    agent = SessionAgent(model, store, tools=[_inspect_tool()])
    await agent.run(SessionAgentCall(analysis, QUESTION))
    gate = model.gate(step=2, after_tokens=2)
    run = asyncio.create_task(agent.run(SessionAgentCall(analysis, CANCELED_PROMPT)))
    await gate.reached()
    agent.cancel(analysis)
    await run

    errors = store.create_session("Rate limits").id
    error = ModelError("Rate limit reached", status_code=429, provider="openai")
    failing = SessionAgent(ScriptedModel([Reply(text="Partial summ", error=error)]), store)
    await failing.run(SessionAgentCall(errors, ERROR_PROMPT))

    umlaut = store.create_session("Straße").id
    plain = SessionAgent(ScriptedModel([UMLAUT_ANSWER]), store)
    await plain.run(SessionAgentCall(umlaut, UMLAUT_PROMPT))
    return Transcripts(store.path, analysis, errors, umlaut)


def make_transcripts(path: Path) -> Transcripts:
    """Run the agent into a fresh store at ``path`` (closed on return)."""
    with TranscriptStore(path) as store:
        return asyncio.run(_fill(store))
