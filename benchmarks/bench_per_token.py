"""What a streamed token costs as one answer grows: early in the answer versus deep into it.

Run: .venv/bin/python benchmarks/bench_per_token.py [--quick] [--before REV]

One answer of 1,000,000 characters (word tokens, ~7 characters each) streams from a
ScriptedModel as fast as the loop goes, through the agent into a real store on disk (default
1/30 s coalescing). Printed, in microseconds per token of wall time (the store's background
compaction runs on another thread and competes for the interpreter, so it counts):

  agent + store   the whole path a token takes in a kernel, windows of 5,000 tokens: the
                  first ones, and those ending at 100k, 500k and 1M characters; the
                  goal is <= 20 us/token everywhere and last/first <= 1.5
  store alone     update_message of a growing message at token rate, same windows
  store, paced    the same at 2,000 tokens/s on the store's clock, in CPU time: each 1/30 s
                  write of the whole message is shared by only ~67 tokens
  stock TinyDB    JSONStorage updating the growing message per token (its way of streaming),
                  a few tokens at each length
  bytes written   per answer character: everything the process wrote (journal appends and
                  compaction copies; /proc/self/io wchar)

``--before REV`` runs the same measurement first on the package as of the git revision REV
(``git archive`` into a temporary directory), so before and after print in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from goals import measured

REPO = Path(__file__).resolve().parents[1]
WINDOW = 5000  # tokens per measured window
TOKEN_CHARS = 7  # "w12345 ": the answer's word tokens
PACED_RATE = 2000  # tokens/s of the paced store measurement


def answer(chars: int) -> str:
    words, size = [], 0
    while size < chars:
        word = f"w{len(words):05d} "
        words.append(word)
        size += len(word)
    return "".join(words)


def windows(stamps: list[int], offsets: list[int], marks: dict[str, int]) -> dict[str, float]:
    """Microseconds per token over the window of WINDOW tokens ending at each mark (a character
    offset), and over the first window; ``stamps[i]`` is when token i was handed out and
    ``offsets[i]`` the answer's length once it is applied."""
    import bisect

    found = {"first 5k tokens": (stamps[WINDOW] - stamps[0]) / WINDOW / 1e3}
    for label, chars in marks.items():
        end = min(bisect.bisect_left(offsets, chars), len(stamps) - 1)
        start = max(end - WINDOW, 0)
        found[label] = (stamps[end] - stamps[start]) / (end - start) / 1e3
    return found


def written_bytes() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("wchar:"))


def through_agent(directory: Path, text: str, marks: dict[str, int]) -> dict[str, Any]:
    from jupyter_crush import SessionAgent, SessionAgentCall, TranscriptStore
    from jupyter_crush.testing import ScriptedModel

    stamps: list[int] = []
    offsets: list[int] = []

    class Stamped(ScriptedModel):
        async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            size = 0
            async for event in super().stream(*args, **kwargs):
                size += len(getattr(event, "text", ""))
                stamps.append(time.perf_counter_ns())
                offsets.append(size)
                yield event

    async def run() -> dict[str, Any]:
        store = TranscriptStore(directory / "agent")
        session = store.create_session("bench")
        agent = SessionAgent(Stamped([text]), store)
        before, began = written_bytes(), time.perf_counter()
        result = await agent.run(SessionAgentCall(session.id, "go"))
        seconds = time.perf_counter() - began
        store.close()
        assert result is not None and result.text == text
        return {
            "windows": windows(stamps, offsets, marks),
            "bytes per char": (written_bytes() - before) / len(text),
            "seconds": seconds,
        }

    return asyncio.run(run())


def store_alone(directory: Path, text: str, marks: dict[str, int]) -> dict[str, Any]:
    from jupyter_crush.core.message import Message, Role
    from jupyter_crush.store.transcript import TranscriptStore
    from jupyter_crush.testing import tokenize

    store = TranscriptStore(directory / "alone")
    session = store.create_session("bench")
    message = store.add_message(Message(session.id, Role.ASSISTANT))
    stamps, offsets, size = [], [], 0
    for token in tokenize(text):
        stamps.append(time.perf_counter_ns())
        message.append_text(token)
        store.update_message(message)
        size += len(token)
        offsets.append(size)
    stamps.append(time.perf_counter_ns())
    store.close()
    return {"windows": windows(stamps, offsets, marks)}


def store_paced(directory: Path, text: str, marks: dict[str, int]) -> dict[str, Any]:
    """CPU per token of update_message at PACED_RATE tokens/s on the store's own clock (a
    fake one, advanced per token): the rate of a fast provider, where each 1/30 s write of
    the message is shared by fewer tokens than when streaming as fast as the loop goes."""
    from jupyter_crush.core.message import Message, Role
    from jupyter_crush.store.transcript import TranscriptStore
    from jupyter_crush.testing import tokenize

    clock = [0.0]
    store = TranscriptStore(directory / "paced", clock=lambda: clock[0])
    session = store.create_session("bench")
    message = store.add_message(Message(session.id, Role.ASSISTANT))
    stamps, offsets, size = [], [], 0
    for token in tokenize(text):
        stamps.append(time.process_time_ns())
        clock[0] += 1 / PACED_RATE
        message.append_text(token)
        store.update_message(message)
        size += len(token)
        offsets.append(size)
    stamps.append(time.process_time_ns())
    store.close()
    return {"windows": windows(stamps, offsets, marks)}


def stock_tinydb(directory: Path, marks: dict[str, int]) -> dict[str, float]:
    """JSONStorage rewriting its file per token, a few tokens at each length."""
    from tinydb import TinyDB

    found = {}
    for label, chars in {"first 5k tokens": 0, **marks}.items():
        db = TinyDB(directory / f"stock-{chars}.json")
        text = answer(chars)
        doc_id = db.insert({"role": "assistant", "text": text})
        samples = 200 if chars < 100_000 else 20
        began = time.perf_counter_ns()
        for i in range(samples):
            text += f"w{i:05d} "
            db.update({"text": text}, doc_ids=[doc_id])
        found[label] = (time.perf_counter_ns() - began) / samples / 1e3
        db.close()
    return found


def measure(chars: int) -> dict[str, Any]:
    text = answer(chars)
    marks = {f"at {n // 1000}k chars": n for n in (100_000, 500_000, 1_000_000) if n <= chars}
    if chars not in marks.values():
        marks[f"at {chars // 1000}k chars"] = chars
    with tempfile.TemporaryDirectory() as tmp:
        return {
            "tokens": len(text) // TOKEN_CHARS,
            "agent": through_agent(Path(tmp), text, marks),
            "store": store_alone(Path(tmp), text, marks),
            "paced": store_paced(Path(tmp), text, marks),
        }


def measure_at(rev: str, chars: int) -> dict[str, Any]:
    """``measure`` run in a fresh interpreter on the package as of git revision ``rev``."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev, "jupyter_crush"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        out = subprocess.run(
            [sys.executable, __file__, "--json", "--chars", str(chars)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": tmp},
        ).stdout
    return json.loads(out)


def report(label: str, found: dict[str, Any], note: str) -> None:
    agent, store, paced = found["agent"], found["store"], found.get("paced")
    first = agent["windows"]["first 5k tokens"]
    last = list(agent["windows"].values())[-1]
    print(f"\n== {label}: one answer of {found['tokens']:,} tokens in {agent['seconds']:.1f} s")
    print(
        f"  {'us/token':18s} {'agent + store':>14s} {'store alone':>12s} "
        f"{f'store, CPU at {PACED_RATE:,} tok/s':>26s}"
    )
    for window, us in agent["windows"].items():
        at_rate = f"{paced['windows'][window]:26.1f}" if paced else f"{'-':>26s}"
        print(f"  {window:18s} {us:14.1f} {store['windows'][window]:12.1f} {at_rate}")
    print(f"  bytes written per answer character: {agent['bytes per char']:.1f}")
    measured("per_token.worst_us", max(agent["windows"].values()), note)
    measured("per_token.last_over_first", last / first, note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="an answer of 100k characters")
    parser.add_argument("--before", metavar="REV", help="also measure the package as of REV")
    parser.add_argument("--chars", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    chars = args.chars or (100_000 if args.quick else 1_000_000)
    if args.json:  # one measurement for --before, in a fresh interpreter
        print(json.dumps(measure(chars)))
        return
    sys.path.insert(0, str(REPO))
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    size = "" if chars == 1_000_000 else f"{chars // 1000}k-character answer"
    if args.before:
        before = f"before ({args.before})"
        report(before, measure_at(args.before, chars), ", ".join(filter(None, [before, size])))
    report("now", measure(chars), size)
    marks = {f"at {n // 1000}k chars": n for n in (100_000, 500_000, 1_000_000) if n <= chars}
    with tempfile.TemporaryDirectory() as tmp:
        stock = stock_tinydb(Path(tmp), marks)
    print("\n== stock TinyDB (JSONStorage), updating the growing message per token")
    for window, us in stock.items():
        print(f"  {window:18s} {us:14.1f} us/token")


if __name__ == "__main__":
    main()
