"""Per-token overhead of the agent + transcript store while a reply streams.

    .venv/bin/python benchmarks/bench_agent.py [--quick]

Three numbers per token, from one run:
- the scripted model alone (the floor: an async generator yielding tokens);
- the agent + our store streaming the same reply (what a user pays);
- the stock approach for contrast: writing the growing message to stock TinyDB
  (JSONStorage) on every token, the way a naive streaming agent would.
Then the same reply paced at 5,000 tokens/s, where the number that matters is the CPU
time the agent spends per token (the loop is otherwise idle).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from goals import measured
from tinydb import Query, TinyDB

from jupyter_crush import SessionAgent, SessionAgentCall, TranscriptStore
from jupyter_crush.testing import ScriptedModel

TOKENS = 5000
TEXT = " ".join(f"w{i}" for i in range(TOKENS))


async def model_alone() -> float:
    model = ScriptedModel([TEXT])
    start = time.perf_counter()
    async for _ in model.stream([]):
        pass
    return time.perf_counter() - start


async def agent_and_store(directory: str, tokens_per_second: float | None) -> tuple[float, float]:
    Path(directory).mkdir(parents=True, exist_ok=True)
    store = TranscriptStore(Path(directory) / "store")
    session = store.create_session("bench")
    agent = SessionAgent(ScriptedModel([TEXT], tokens_per_second=tokens_per_second), store)
    wall, cpu = time.perf_counter(), time.process_time()
    result = await agent.run(SessionAgentCall(session.id, "go"))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert result is not None and result.text == TEXT
    store.close()
    return wall, cpu


def stock_tinydb_per_token(directory: str, tokens: int) -> float:
    db = TinyDB(Path(directory) / "stock.json")
    doc_id = db.insert({"role": "assistant", "text": ""})
    text, start = "", time.perf_counter()
    for i in range(tokens):
        text += f" w{i}"
        db.update({"text": text}, doc_ids=[doc_id])
    elapsed = time.perf_counter() - start
    assert db.get(Query().role == "assistant")["text"] == text
    db.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two repetitions instead of five")
    repeats = 2 if parser.parse_args().quick else 5
    floor = statistics.median(asyncio.run(model_alone()) for _ in range(repeats))
    with tempfile.TemporaryDirectory() as directory:
        fast = [asyncio.run(agent_and_store(f"{directory}/{i}", None))[0] for i in range(repeats)]
        paced_wall, paced_cpu = asyncio.run(agent_and_store(f"{directory}/paced", 5000))
        stock_tokens = 1000
        stock = stock_tinydb_per_token(directory, stock_tokens)
    agent_us = statistics.median(fast) / TOKENS * 1e6
    floor_us = floor / TOKENS * 1e6
    print(f"reply of {TOKENS} tokens")
    print(f"  scripted model alone            {floor_us:8.1f} us/token")
    print(f"  agent + store (unpaced)         {agent_us:8.1f} us/token")
    print(f"  overhead of agent + store       {agent_us - floor_us:8.1f} us/token")
    measured("agent.overhead_us", agent_us - floor_us)
    print(
        f"  stock TinyDB write per token    {stock / stock_tokens * 1e6:8.1f} us/token"
        f"  (first {stock_tokens} tokens only)"
    )
    print(
        f"paced at 5,000 tokens/s: wall {paced_wall:.2f} s for {TOKENS} tokens, "
        f"CPU {paced_cpu / TOKENS * 1e6:.1f} us/token (model sleep excluded by the loop)"
    )


if __name__ == "__main__":
    main()
