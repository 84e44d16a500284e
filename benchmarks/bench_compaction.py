"""Long sessions: what titles and summaries cost.

1. First-token latency of a session's first prompt with and without a title request
   running beside it (the title model streams at the same pace as the answer).
2. The time and tokens of a summary on a ~150k-token session (a 180k window, so it is
   past the reserve), against the same session cut without a summary; the agent's own
   overhead, with a scripted model answering at once.

    .venv/bin/python benchmarks/bench_compaction.py
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from jupyter_crush import SessionAgent, SessionAgentCall, TranscriptStore
from jupyter_crush.agent import Delta
from jupyter_crush.compaction import SUMMARY_REQUEST, ContextPolicy
from jupyter_crush.context_window import estimate_message
from jupyter_crush.message import Usage
from jupyter_crush.testing import Reply, ScriptedModel
from jupyter_crush.titles import prompt_title

RUNS = 30
PROMPT = "Why did the sales in March drop so much compared to February?"


class FirstToken:
    def __init__(self) -> None:
        self.at: float | None = None

    def on_event(self, event) -> None:
        if isinstance(event, Delta) and self.at is None and event.message.text:
            self.at = time.perf_counter()


async def first_token(store: TranscriptStore, titles: bool) -> float:
    answer = ScriptedModel([" ".join(["word"] * 50)], tokens_per_second=500)
    agent = SessionAgent(answer, store)
    if titles:
        agent.title_model = ScriptedModel(["Sales drop in March"], tokens_per_second=500)
    session = store.create_session(title=prompt_title(PROMPT))
    watcher = FirstToken()
    start = time.perf_counter()
    await agent.run(SessionAgentCall(session.id, PROMPT, observer=watcher))
    assert watcher.at is not None
    return (watcher.at - start) * 1000


async def summary_cost(store: TranscriptStore, auto: bool) -> tuple[float, int, int]:
    """Seconds of the fifth prompt's turn, tokens sent for the summary, tokens of its answer."""
    turn_text = "row value " * 15_000  # ~37k tokens a turn: four turns make ~150k
    replies = [Reply(text=turn_text, usage=Usage(37_500 * n, 37_500)) for n in range(4)]
    replies += [Reply(text="Summary: " + "finding " * 300), "answered"]
    model = ScriptedModel(replies)
    policy = ContextPolicy(auto_compact=auto, context_window=180_000)
    agent = SessionAgent(model, store, context=policy)
    session = store.create_session()
    for n in range(4):
        await agent.run(SessionAgentCall(session.id, f"step {n}"))
    start = time.perf_counter()
    await agent.run(SessionAgentCall(session.id, "step 4"))
    elapsed = time.perf_counter() - start
    asked = [r for r in model.requests if r.messages[-1].text == SUMMARY_REQUEST]
    sent = sum(estimate_message(m) for m in asked[0].messages) if asked else 0
    last = sum(estimate_message(m) for m in model.requests[-1].messages)
    return elapsed, sent, last


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = TranscriptStore(Path(tmp) / "store")
        for titles in (False, True):  # warm up both paths
            await first_token(store, titles)
        samples: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(RUNS):
            for titles in (False, True):  # alternate, so load falls on both alike
                samples[titles].append(await first_token(store, titles))
        for titles, values in samples.items():
            print(
                f"first token, titles {'on ' if titles else 'off'}: median "
                f"{statistics.median(values):.2f} ms, p90 "
                f"{sorted(values)[int(len(values) * 0.9)]:.2f} ms ({RUNS} runs)"
            )
        for auto in (True, False):
            elapsed, sent, last = await summary_cost(store, auto)
            what = "summary" if auto else "cut (auto_compact off)"
            print(
                f"150k-token session, {what}: turn {elapsed * 1000:.0f} ms of agent time; "
                f"summary request ~{sent:,} tokens; next request ~{last:,} tokens"
            )
        store.close()


if __name__ == "__main__":
    asyncio.run(main())
