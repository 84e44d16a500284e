"""An agent turn in a process to be killed with SIGKILL: ``python turn_writer.py STORE POINT``.

It prints the session id, runs a turn up to POINT, prints ``reached``, then blocks its event
loop, so no timer of the store writes anything after that line: the killer checks that what
the turn had promised by then is on disk. The store holds streamed updates back for an hour,
so only the writes the agent forces (or flushes) reach the disk.

POINT is one of
  canceled   a streaming turn is canceled and ``run`` has returned its canceled result
  shutdown   a streaming turn and a queued prompt are recorded by ``SessionAgent.shutdown``
  tool-done  a tool call has returned and the next call of the step is running
"""

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jupyter_crush import SessionAgent, SessionAgentCall, TranscriptStore
from jupyter_crush.core.model import ToolSpec
from jupyter_crush.core.tools import Tool, ToolResult
from jupyter_crush.testing import Reply, ScriptedModel, ToolCall

HOLD_BACK = 3600.0  # seconds a streamed update may wait in memory
ANSWER = "one two three four five"


async def echo(arguments, context):
    return ToolResult(f"echo: {arguments['text']}")


async def hold(arguments, context):
    reached()


def reached() -> None:
    print("reached", flush=True)
    time.sleep(HOLD_BACK)  # blocks the loop: nothing more is written until the kill


async def main(path: str, point: str) -> None:
    store = TranscriptStore(path, flush_interval=HOLD_BACK)
    session = store.create_session()
    print(session.id, flush=True)
    tools = [
        Tool(ToolSpec("echo", "Echo.", {"type": "object"}), echo),
        Tool(ToolSpec("hold", "Hold.", {"type": "object"}), hold),
    ]
    calls = [ToolCall("echo", {"text": "ping"}), ToolCall("hold")]
    model = ScriptedModel([Reply(tool_calls=calls) if point == "tool-done" else ANSWER, ANSWER])
    agent = SessionAgent(model, store, tools=tools)
    if point == "tool-done":
        await agent.run(SessionAgentCall(session.id, "count"))  # the hold tool reports
    gate = model.gate(step=0, after_tokens=3)
    run = asyncio.create_task(agent.run(SessionAgentCall(session.id, "count")))
    await gate.reached()
    if point == "canceled":
        agent.cancel(session.id)
        await run
    else:
        await agent.run(SessionAgentCall(session.id, "queued"))
        agent.shutdown()
    reached()


asyncio.run(main(sys.argv[1], sys.argv[2]))
