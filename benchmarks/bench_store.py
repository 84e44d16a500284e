"""Transcript store write/read latency versus stock TinyDB (JSONStorage).

Run: .venv/bin/python benchmarks/bench_store.py [--sizes 1000,10000,50000] [--quick]

For each size N, a store is filled with N messages spread over sessions of 50 messages
(about 1 KB of text each), then we time, per call:
  append          add_message of a new message into an existing session (written at once)
  update/forced   update_message(force=True) of a streaming reply: every call writes
  update/stream   update_message at token rate with the default 1/30 s coalescing
plus cold open (open + list_sessions) and one session's list_messages in a fresh store,
and finally 4 processes appending to one store at once (each also into a shared session).

Stock TinyDB is measured on the same documents in one JSON file; each of its writes
rewrites the whole file, so at larger sizes only a few samples are taken (said in the
table), and the file is written directly instead of inserted one by one, which would take
minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tinydb import Query, TinyDB
from tinydb.storages import JSONStorage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jupyter_crush.core.message import FinishReason, Message, Role, TextPart, ToolCallPart, Usage
from jupyter_crush.store.transcript import TranscriptStore

SESSION_SIZE = 50
WORDS = ("pandas", "NaN", "price", "column", "groupby", "merge", "index", "dtype", "plot")


def make_message(session_id: str, n: int) -> Message:
    text = " ".join(WORDS[(n + i) % len(WORDS)] for i in range(150))
    if n % 2 == 0:
        return Message(session_id, Role.USER, [TextPart(text)])
    message = Message(session_id, Role.ASSISTANT, [TextPart(text)], model="gpt-4o")
    if n % 5 == 1:
        message.parts.append(ToolCallPart(f"call-{n}", "run_code", '{"code": "df.isna().sum()"}'))
    message.usage = Usage(input_tokens=500 + n % 100, output_tokens=200)
    message.cost = 0.001
    message.add_finish(FinishReason.END_TURN)
    return message


def stats(samples_ns: list[int]) -> tuple[float, float, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return statistics.fmean(ms), statistics.median(ms), p99


def timed(fn, *args) -> int:
    start = time.perf_counter_ns()
    fn(*args)
    return time.perf_counter_ns() - start


def write_samples(
    store: TranscriptStore, session: str, first: int, samples: int
) -> tuple[list[int], list[int]]:
    """Nanoseconds per call: ``samples`` appends of new messages (numbered from ``first``),
    then ``samples`` forced updates of a growing reply (one message more in the session)."""
    appends = [timed(store.add_message, make_message(session, first + i)) for i in range(samples)]
    reply = store.add_message(Message(session, Role.ASSISTANT))
    forced = []
    for i in range(samples):
        reply.append_text(f"tok{i} ")
        start = time.perf_counter_ns()
        store.update_message(reply, force=True)
        forced.append(time.perf_counter_ns() - start)
    return appends, forced


def fill_store(path: Path, size: int) -> list[str]:
    sessions = []
    with TranscriptStore(path) as store:
        for n in range(size):
            if n % SESSION_SIZE == 0:
                sessions.append(store.create_session(f"session {len(sessions)}").id)
            store.add_message(make_message(sessions[-1], n))
    return sessions


def bench_ours(path: Path, size: int, samples: int) -> dict[str, object]:
    sessions = fill_store(path, size)
    result: dict[str, object] = {}

    start = time.perf_counter_ns()
    store = TranscriptStore(path)
    store.list_sessions()
    result["cold open"] = (time.perf_counter_ns() - start) / 1e6
    target = sessions[len(sessions) // 2]
    result["list_messages (first)"] = timed(store.list_messages, target) / 1e6
    result["list_messages (warm)"] = timed(store.list_messages, target) / 1e6

    busy = sessions[-1]
    appends, forced = write_samples(store, busy, size, samples)
    result["append"] = stats(appends)
    result["update/forced"] = stats(forced)

    reply = store.add_message(Message(busy, Role.ASSISTANT))
    streamed = []
    writes_before = (path / "messages" / f"{busy}.jsonl").stat().st_size
    began = time.perf_counter()
    for i in range(samples):
        reply.append_text(f"tok{i} ")
        start = time.perf_counter_ns()
        store.update_message(reply)
        streamed.append(time.perf_counter_ns() - start)
        time.sleep(0.001)  # a fast model: ~1000 tokens/s
    result["update/stream"] = stats(streamed)
    result["stream seconds"] = time.perf_counter() - began
    store.flush()
    result["stream bytes"] = (path / "messages" / f"{busy}.jsonl").stat().st_size - writes_before
    store.close()
    return result


def fill_stock(path: Path, size: int) -> list[str]:
    """Write the JSON file TinyDB would have produced after ``size`` inserts."""
    sessions: list[str] = []
    table = {}
    for n in range(size):
        if n % SESSION_SIZE == 0:
            sessions.append(f"s{len(sessions)}")
        table[str(n + 1)] = make_message(sessions[-1], n).to_dict()
    path.write_text(json.dumps({"messages": table}))
    return sessions


def bench_stock(path: Path, size: int, samples: int) -> dict[str, object]:
    sessions = fill_stock(path, size)
    result: dict[str, object] = {}
    start = time.perf_counter_ns()
    db = TinyDB(path, storage=JSONStorage)
    table = db.table("messages")
    len(table)
    result["cold open"] = (time.perf_counter_ns() - start) / 1e6
    target = sessions[len(sessions) // 2]
    m = Query()
    result["list_messages (first)"] = timed(table.search, m.session_id == target) / 1e6
    table.clear_cache()
    result["list_messages (warm)"] = timed(table.search, m.session_id == target) / 1e6

    busy = sessions[-1]
    result["append"] = stats(
        [timed(table.insert, make_message(busy, size + i).to_dict()) for i in range(samples)]
    )
    reply = Message(busy, Role.ASSISTANT)
    doc_id = table.insert(reply.to_dict())
    forced = []
    for i in range(samples):
        reply.append_text(f"tok{i} ")
        forced.append(timed(table.update, reply.to_dict(), None, [doc_id]))
    result["update/forced"] = stats(forced)
    db.close()
    return result


CONCURRENT_WRITER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from jupyter_crush.core.message import Message, Role, TextPart
from jupyter_crush.store.transcript import TranscriptStore
store = TranscriptStore(sys.argv[2])
name, count = sys.argv[3], int(sys.argv[4])
own = store.create_session(session_id=name).id
latencies = []
for i in range(count):
    message = Message("shared" if i % 2 else own, Role.USER, [TextPart(f"{name} {i} " * 40)])
    start = time.perf_counter_ns()
    store.add_message(message)
    latencies.append(time.perf_counter_ns() - start)
store.close()
print(" ".join(map(str, latencies)))
"""


def bench_concurrent(path: Path, processes: int, count: int) -> str:
    """``processes`` writers at once, half their messages into one shared session."""
    with TranscriptStore(path) as store:
        store.create_session(session_id="shared")
    repo = str(Path(__file__).resolve().parents[1])
    began = time.perf_counter()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_WRITER, repo, str(path), f"w{n}", str(count)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    latencies = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"a concurrent writer failed with exit code {child.returncode}")
        latencies += [int(x) for x in out.split()]
    elapsed = time.perf_counter() - began
    with TranscriptStore(path) as store:
        stored = sum(len(store.list_messages(s.id)) for s in store.list_sessions())
    lost = processes * count - stored
    mean, p50, p99 = stats(latencies)
    return (
        f"{processes} processes x {count} appends in {elapsed:.2f} s (incl. start-up), "
        f"append mean/p50/p99 {mean:.3f} / {p50:.3f} / {p99:.3f} ms, lost {lost}"
    )


def row(name: str, ours: object, stock: object | None, stock_note: str) -> str:
    def fmt(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, tuple):
            return "{:8.3f} {:8.3f} {:8.3f}".format(*value)
        return f"{value:8.2f}"

    return f"  {name:24s} ours {fmt(ours):>28s} | stock {fmt(stock):>28s} {stock_note}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", help="messages already stored (1000,10000,50000)")
    parser.add_argument(
        "--quick", action="store_true", help="fewer samples, sizes 1000,10000: a smoke run"
    )
    args = parser.parse_args()
    sizes_text = args.sizes or ("1000,10000" if args.quick else "1000,10000,50000")
    sizes = [int(s) for s in sizes_text.split(",")]
    samples = 200 if args.quick else 2000
    began = time.perf_counter()
    print("latencies in ms; triples are mean / p50 / p99; single numbers are one measurement")
    print(
        "load average at start: {:.1f} {:.1f} {:.1f} ({} cores; p99 is sensitive to it)".format(
            *os.getloadavg(), os.cpu_count()
        )
    )
    for size in sizes:
        # Stock TinyDB rewrites the whole file per write: keep its sample count bounded.
        stock_samples = max(3, min(samples, 2_000_000 // max(size, 1) // 20))
        with tempfile.TemporaryDirectory() as tmp:
            ours = bench_ours(Path(tmp) / "store", size, samples)
            stock = bench_stock(Path(tmp) / "stock.json", size, stock_samples)
        note = f"({stock_samples} samples)" if stock_samples < samples else ""
        print(
            f"\n{size} messages already stored ({size // SESSION_SIZE} sessions), "
            f"{samples} samples for ours"
        )
        for key in (
            "append",
            "update/forced",
            "update/stream",
            "cold open",
            "list_messages (first)",
            "list_messages (warm)",
        ):
            print(
                row(
                    key,
                    ours[key],
                    stock.get(key),
                    note if key in stock and isinstance(stock[key], tuple) else "",
                )
            )
        print(
            f"  streaming: {samples} updates in {ours['stream seconds']:.2f} s wrote "
            f"{ours['stream bytes'] / 1024:.0f} KiB (coalesced to <= 30 writes/s; stock has "
            "no coalescing, its per-update cost is update/forced)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        print("\n" + bench_concurrent(Path(tmp) / "store", 4, 200 if args.quick else 2000))
    print(
        f"\ntotal {time.perf_counter() - began:.0f} s; "
        f"load average at end: {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
