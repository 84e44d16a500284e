"""The transcript store at scale, against the goals it was built for.

Run: .venv/bin/python benchmarks/bench_store_scale.py [--quick] [--kills 200]

One store grows to 100k messages (sessions of 50 messages of ~1 KB, as in bench_store.py)
and is measured on the way:

  at  20k  append and forced-update latency, ours vs stock TinyDB with JSONStorage and
           with CachingMiddleware(JSONStorage), same documents (goal: ours >= 50x faster)
  at  50k  crush.history(): every message, one session, a full-text search hit and miss
  at 100k  per-write p99 of appends and forced updates (goal <= 2 ms), cold open
           (goal <= 1 s), one session's messages in a fresh process state (goal <= 10 ms)

then a kill -9 loop: a writer process streams replies and reports every write that
returned; it is killed at a random moment; the store is reopened and every reported write
must be there (goal: 0 lost, 0 corrupted, every reply settled). Runs in under 5 minutes on
2 cores; --quick is a smoke run at 1/10 of the sizes.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_store import SESSION_SIZE, fill_stock, make_message, stats, timed, write_samples
from tinydb import TinyDB
from tinydb.middlewares import CachingMiddleware
from tinydb.storages import JSONStorage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jupyter_crush as crush  # noqa: E402
from jupyter_crush.core.message import Message, Role, TextPart  # noqa: E402
from jupyter_crush.store.storage import StoreError  # noqa: E402
from jupyter_crush.store.transcript import TranscriptStore  # noqa: E402


def ms(ns: float) -> float:
    return ns / 1e6


def triple(samples_ns: list[int]) -> str:
    mean, p50, p99 = stats(samples_ns)
    return f"mean {mean:7.3f}  p50 {p50:7.3f}  p99 {p99:7.3f}  max {ms(max(samples_ns)):7.2f} ms"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


class Growing:
    """A store filled in steps, like bench_store.fill_store but resumable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0  # messages in the store
        self.filled = 0  # of which added by grow_to (the rest by the measured writes)
        self.sessions: list[str] = []

    def grow_to(self, size: int) -> float:
        began = time.perf_counter()
        with TranscriptStore(self.path) as store:
            for n in range(self.filled, self.filled + size - self.size):
                if n % SESSION_SIZE == 0:
                    self.sessions.append(store.create_session(f"session {len(self.sessions)}").id)
                store.add_message(make_message(self.sessions[-1], n))
        self.filled += size - self.size
        self.size = size
        return time.perf_counter() - began


def write_latencies(grown: Growing, samples: int) -> dict[str, list[int]]:
    """Appends of new messages and forced updates of a streaming reply, per call."""
    session = grown.sessions[-1]
    with TranscriptStore(grown.path) as store:
        appends, updates = write_samples(store, session, grown.size, samples)
    grown.size += samples + 1
    return {"append": appends, "update": updates}


def stock_latencies(
    path: Path, size: int, samples: int, caching: bool
) -> dict[str, list[int] | float]:
    """The same writes on stock TinyDB holding ``size`` messages."""
    sessions = fill_stock(path, size)
    started = time.perf_counter_ns()
    db = TinyDB(path, storage=CachingMiddleware(JSONStorage) if caching else JSONStorage)
    table = db.table("messages")
    len(table)
    opened = time.perf_counter_ns() - started
    busy = sessions[-1]
    appends = [timed(table.insert, make_message(busy, size + i).to_dict()) for i in range(samples)]
    reply = Message(busy, Role.ASSISTANT)
    doc_id = table.insert(reply.to_dict())
    updates = []
    for i in range(samples):
        reply.append_text(f"tok{i} ")
        updates.append(timed(table.update, reply.to_dict(), None, [doc_id]))
    db.close()
    return {"append": appends, "update": updates, "open": opened}


def at_20k(store: Growing, tmp: Path, quick: bool) -> None:
    size = store.size
    ours = write_latencies(store, 500)
    # Every stock JSONStorage write serializes and rewrites the whole file: a few samples
    # take long enough. CachingMiddleware writes the file every 1000 writes, so 1000
    # samples include one such flush; in between each write still rebuilds the table.
    plain_samples = 3 if quick else 8
    cached_samples = 1000
    plain = stock_latencies(tmp / "stock.json", size, plain_samples, caching=False)
    cached = stock_latencies(tmp / "cached.json", size, cached_samples, caching=True)
    print(f"\n== {size} messages: writes, ours vs stock TinyDB (same ~1 KB documents)")
    for kind in ("append", "update"):
        print(f"  {kind:6s} ours                     {triple(ours[kind])}  (500 samples)")
        print(
            f"  {kind:6s} stock JSONStorage        {triple(plain[kind])}  "
            f"({plain_samples} samples: each rewrites the whole file)"
        )
        print(
            f"  {kind:6s} stock CachingMiddleware  {triple(cached[kind])}  "
            f"({cached_samples} samples incl. one flush; up to 999 writes lost on a crash)"
        )
    for kind in ("append", "update"):
        mine = statistics.fmean(ours[kind])
        versus_plain = statistics.fmean(plain[kind]) / mine
        versus_cached = statistics.fmean(cached[kind]) / mine
        print(
            f"  {kind}: ours is {versus_plain:,.0f}x faster than JSONStorage, "
            f"{versus_cached:,.0f}x than CachingMiddleware (mean per write; goal >= 50x: "
            f"{verdict(versus_plain >= 50)} / {verdict(versus_cached >= 50)})"
        )


def at_50k(store: Growing) -> None:
    size = store.size
    target = store.sessions[len(store.sessions) // 2]
    print(f"\n== {size} messages: crush.history() (pandas DataFrame)")
    print(
        "  (the first read also settles each session: bench_store's messages leave tool calls "
        "without results,\n   which get an error result appended, one tool message per session)"
    )
    with TranscriptStore(store.path) as opened:
        opened.add_message(Message(target, Role.USER, [TextPart("where is the needle?")]))
        store.size += 1
        # (label, arguments, goal in ms or None)
        cases = [
            ("every message, first read", {}, None),
            ("every message, again", {}, 500),
            ("one session", {"session": target}, None),
            ("search, one hit", {"search": "needle"}, 200),
            ("search, no hit", {"search": "zebra"}, 200),
            ("search, hits in every session", {"search": "NaN price"}, None),
            ("search in one session", {"session": target, "search": "groupby"}, None),
            ("newest 100", {"limit": 100}, None),
        ]
        for label, kwargs, goal in cases:
            start = time.perf_counter_ns()
            rows = len(crush.history(store=opened, **kwargs))
            took = ms(time.perf_counter_ns() - start)
            said = f"  (goal <= {goal} ms: {verdict(took <= goal)})" if goal else ""
            print(f"  {label:32s} {took:9.1f} ms  {rows} rows{said}")


def at_100k(store: Growing, quick: bool) -> None:
    size = store.size
    samples = 500 if quick else 2000
    print(f"\n== {size} messages: goals")
    lat = write_latencies(store, samples)
    for kind, label in (("append", "append"), ("update", "forced update")):
        p99 = stats(lat[kind])[2]
        print(
            f"  {label:14s} {triple(lat[kind])}  ({samples} samples; "
            f"goal p99 <= 2 ms: {verdict(p99 <= 2)})"
        )
    opens = []
    for _ in range(5):
        start = time.perf_counter_ns()
        with TranscriptStore(store.path) as opened:
            opened.list_sessions()
            opens.append(time.perf_counter_ns() - start)
    worst = ms(max(opens))
    print(
        f"  cold open + list_sessions: median {ms(statistics.median(opens)):.1f} ms, "
        f"worst of 5 {worst:.1f} ms (goal <= 1000 ms: {verdict(worst <= 1000)})"
    )
    firsts, warms = [], []
    with TranscriptStore(store.path) as opened:
        for sid in random.Random(1).sample(store.sessions, 50):
            firsts.append(timed(opened.list_messages, sid))  # its first read in this store
            warms.append(timed(opened.list_messages, sid))
    p99 = stats(firsts)[2]
    print(
        f"  one session's messages, first read  {triple(firsts)}  (50 sessions; "
        f"goal <= 10 ms: {verdict(p99 <= 10)})"
    )
    print(f"  one session's messages, again       {triple(warms)}")


# The writer the kill -9 tests use: it reports each write once it returned.
KILLED_WRITER = REPO / "tests" / "support" / "crash_writer.py"


def kill_loop(path: Path, iterations: int) -> None:
    """Kill a streaming writer at random moments; count what its acknowledged writes lost."""
    with TranscriptStore(path) as store:
        store.create_session(session_id="shared")
    acknowledged: dict[tuple[str, str], int] = {}  # (session, message) -> text length
    lost = corrupted = unsettled = 0
    began = time.perf_counter()
    for _ in range(iterations):
        child = subprocess.Popen(
            [sys.executable, str(KILLED_WRITER), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        if child.stdout.readline() != "ready\n":
            raise SystemExit(f"the writer did not start: {child.communicate()[1]}")
        time.sleep(random.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=60)
        touched: dict[tuple[str, str], int] = {}
        for line in out.splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # the kill cut this report short: its write may or may not be there
            kind, *fields = line.split()
            if kind == "M":
                touched.setdefault((fields[0], fields[1]), 0)
            elif kind == "F":
                key = (fields[0], fields[1])
                touched[key] = max(touched.get(key, 0), int(fields[2]))
        acknowledged.update(touched)
        try:
            with TranscriptStore(path) as store:
                for sid in {sid for sid, _ in touched}:
                    found = {m.id: m for m in store.list_messages(sid)}
                    lost += sum(
                        1
                        for (s, mid), length in touched.items()
                        if s == sid and (mid not in found or len(found[mid].text) < length)
                    )
                    unsettled += sum(
                        1 for m in found.values() if m.role is Role.ASSISTANT and not m.is_finished
                    )
        except StoreError as exc:
            corrupted += 1
            print(f"  corrupted after a kill: {exc}")
            break
    # A final full read: nothing acknowledged in any iteration may be missing.
    final_lost = 0
    try:
        with TranscriptStore(path) as store:
            texts = {
                (s.id, m.id): len(m.text)
                for s in store.list_sessions()
                for m in store.list_messages(s.id)
            }
        final_lost = sum(1 for key, n in acknowledged.items() if texts.get(key, -1) < n)
    except StoreError as exc:
        corrupted += 1
        print(f"  corrupted at the final read: {exc}")
    print(
        f"\n== kill -9 loop: {iterations} iterations in {time.perf_counter() - began:.0f} s, "
        f"{len(acknowledged)} acknowledged messages"
    )
    print(
        f"  acknowledged writes lost: {lost} after each kill, {final_lost} at the end "
        f"(goal 0: {verdict(lost == final_lost == 0)}); corrupted: {corrupted} "
        f"(goal 0: {verdict(corrupted == 0)}); replies left unsettled: {unsettled}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/10 of the sizes, a smoke run")
    parser.add_argument("--kills", type=int, default=None, help="kill -9 iterations (200)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    kills = args.kills if args.kills is not None else (20 if args.quick else 200)
    began = time.perf_counter()
    print("latencies in ms; p99 is sensitive to load on this shared machine")
    print(
        "load average at start: {:.1f} {:.1f} {:.1f} ({} cores)".format(
            *os.getloadavg(), os.cpu_count()
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = Growing(Path(tmp) / "store")
        for size, measure in (
            (20_000, lambda: at_20k(store, Path(tmp), args.quick)),
            (50_000, lambda: at_50k(store)),
            (100_000, lambda: at_100k(store, args.quick)),
        ):
            seconds = store.grow_to(size // scale)
            print(
                f"\n(filled to {store.size} messages in {seconds:.1f} s; "
                f"load average {os.getloadavg()[0]:.1f})"
            )
            measure()
    with tempfile.TemporaryDirectory() as tmp:
        kill_loop(Path(tmp) / "store", kills)
    print(
        f"\ntotal {time.perf_counter() - began:.0f} s; "
        f"load average at end: {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
