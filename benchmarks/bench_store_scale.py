"""The transcript store at scale, against the goals it was built for.

Run: .venv/bin/python benchmarks/bench_store_scale.py [--quick] [--kills 200] [--before DIR]

One store grows to 100k messages (sessions of 50 messages of ~1 KB, as in bench_store.py)
and is measured on the way:

  at  20k  append and forced-update latency, ours vs stock TinyDB with JSONStorage and
           with CachingMiddleware(JSONStorage), same documents (goal: ours >= 50x faster)
  at  50k  crush.history(), each in fresh processes (median of 3): (a) the first call with
           the store not yet open (a new notebook, ``python -m jupyter_crush log``), (b) the
           first call with the store open and a turn just written (a kernel), (c) again,
           (d) a full-text search hit and miss (goals: <= 0.5 s, search <= 0.2 s); pandas'
           import is timed on its own and is in none of them. The very first call on the
           store (nothing kept yet, every session settled) is printed too, and (a') the
           first call on a store its kernels wrote and closed normally, which no process
           ever asked for its history (once per package tree). ``--before DIR``
           measures the package tree in DIR as well, on the same store in the same run (make
           one with ``git archive REV jupyter_crush | tar -x -C DIR``).
  at 100k  per-write p99 of appends and forced updates (goal <= 2 ms), cold open
           (goal <= 1 s), one session's messages in a fresh process state (goal <= 10 ms)

then a kill -9 loop: a writer process streams replies and reports every write that
returned; it is killed at a random moment; the store is reopened and every reported write
must be there (goal: 0 lost, 0 corrupted, every reply settled). Runs in under 5 minutes on
2 cores; --quick is a smoke run at 1/10 of the sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_store import SESSION_SIZE, fill_stock, make_message, stats, timed, write_samples
from goals import measured
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
    ratios: dict[str, list[float]] = {"plain": [], "cached": []}
    for kind in ("append", "update"):
        mine = statistics.fmean(ours[kind])
        versus_plain = statistics.fmean(plain[kind]) / mine
        versus_cached = statistics.fmean(cached[kind]) / mine
        ratios["plain"].append(versus_plain)
        ratios["cached"].append(versus_cached)
        print(
            f"  {kind}: ours is {versus_plain:,.0f}x faster than JSONStorage, "
            f"{versus_cached:,.0f}x than CachingMiddleware (mean per write; goal >= 50x: "
            f"{verdict(versus_plain >= 50)} / {verdict(versus_cached >= 50)})"
        )
    measured(
        "store.vs_jsonstorage_x",
        min(ratios["plain"]),
        f"the slower of append and update, {size:,} messages",
    )
    measured(
        "store.vs_caching_x",
        min(ratios["cached"]),
        f"the slower of append and update, {size:,} messages",
    )


# Runs in a fresh interpreter: argv = store path, mode. Prints one JSON line of seconds.
# pandas is imported first, on its own clock: history() needs it to build a DataFrame, and
# importing it (0.25-0.5 s here) is paid once per process by whatever uses pandas first.
HISTORY_PROBE = """
import json, statistics, sys, time
began = time.perf_counter()
import pandas
pandas_s = time.perf_counter() - began
import jupyter_crush as crush
from jupyter_crush.core.message import Message, Role, TextPart
from jupyter_crush.store.transcript import TranscriptStore

def timed(**kwargs):
    start = time.perf_counter()
    rows = len(crush.history(**kwargs))
    return time.perf_counter() - start, rows

path, mode = sys.argv[1], sys.argv[2]
out = {"pandas_import_s": pandas_s}
if mode == "fresh":
    out["first_s"], out["first_rows"] = timed(store=path)
elif mode == "fresh_search":
    out["search_s"], out["search_rows"] = timed(store=path, search="needle")
else:  # a kernel: its store open, a turn just written to one session
    with TranscriptStore(path) as store:
        sid = store.list_sessions()[0].id
        store.add_message(Message(sid, Role.USER, [TextPart("a turn of this kernel")]))
        out["first_open_s"], out["first_open_rows"] = timed(store=store)
        for key, kwargs in (
            ("repeat_s", {}),
            ("search_hit_s", {"search": "needle"}),
            ("search_miss_s", {"search": "zebra"}),
        ):
            runs = [timed(store=store, **kwargs) for _ in range(3)]
            out[key] = statistics.median(seconds for seconds, _ in runs)
            out[key.replace("_s", "_rows")] = runs[0][1]
print(json.dumps(out))
"""


def in_tree(script: str, args: list[str], tree: Path | None, what: str) -> dict[str, float]:
    """Run ``script`` in a fresh interpreter on the package in ``tree`` (this one's when
    None); the JSON object its last line prints."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(tree or REPO)),
        cwd=tree or REPO,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{what} ({tree or REPO}) failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def probe(path: Path, mode: str, tree: Path | None) -> dict[str, float]:
    """HISTORY_PROBE in a fresh interpreter on the package in ``tree``."""
    return in_tree(HISTORY_PROBE, [str(path), mode], tree, f"the history probe ({mode})")


# Runs in a fresh interpreter: argv = store path, messages (JSON lines), messages per kernel.
# Kernels one after another, each a store opened, its sessions' turns written and the store
# closed normally; none calls history(). Prints the seconds all the closes took.
WRITER_PROBE = """
import json, sys, time
from jupyter_crush.core.message import Message
from jupyter_crush.store.transcript import TranscriptStore

path, messages, per_kernel = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(messages) as f:
    records = [json.loads(line) for line in f]
closing = 0.0
for first in range(0, len(records), per_kernel):
    kernel = TranscriptStore(path)
    for record in records[first : first + per_kernel]:
        if not kernel.has_session(record["session_id"]):
            kernel.create_session("a day's chat", session_id=record["session_id"])
        kernel.add_message(Message.from_dict(record))
    began = time.perf_counter()
    kernel.close()
    closing += time.perf_counter() - began
print(json.dumps({"close_s": closing}))
"""


def after_kernels_closed(size: int, tmp: Path, trees: list[tuple[str, Path | None]]) -> None:
    """(a') The first history() in a fresh process on a store its kernels wrote (each ten
    sessions of finished turns) and closed normally, which no process ever asked for its
    history: the usual next day. Once per tree, each writing its own copy of the store."""
    messages = tmp / "messages.jsonl"
    with open(messages, "w") as f:
        for n in range(size):
            message = make_message(f"day-{n // SESSION_SIZE:05d}", n)
            # Every call answered, as a turn that ran to its end leaves it.
            message.parts = [part for part in message.parts if part.type != "tool_call"]
            f.write(json.dumps(message.to_dict()) + "\n")
    per_kernel = 10 * SESSION_SIZE
    print(f"  (a') first call after {size // per_kernel} kernels wrote the store and closed:")
    for label, tree in trees:
        path = tmp / f"written-{label}"
        args = [str(path), str(messages), str(per_kernel)]
        closing = in_tree(WRITER_PROBE, args, tree, "the writing kernels")["close_s"]
        first = probe(path, "fresh", tree)
        print(
            f"    {label:>6s}: {first['first_s']:6.3f} s  ({first['first_rows']} rows; "
            f"the kernels' closes took {closing:.2f} s in all)"
        )
        shutil.rmtree(path)
    messages.unlink()


def history_numbers(path: Path, tree: Path | None, runs: int) -> dict[str, float]:
    """Medians over ``runs`` fresh processes of each measurement (a)-(d)."""
    fresh = [probe(path, "fresh", tree) for _ in range(runs)]
    opened = [probe(path, "open", tree) for _ in range(runs)]
    searched = [probe(path, "fresh_search", tree) for _ in range(runs)]
    numbers = {
        key: statistics.median(run[key] for run in group)
        for group in (fresh, opened, searched)
        for key in group[0]
    }
    numbers["pandas_import_s"] = statistics.median(
        run["pandas_import_s"] for run in (*fresh, *opened, *searched)
    )
    return numbers


def at_50k(store: Growing, before: Path | None, quick: bool) -> None:
    size = store.size
    target = store.sessions[len(store.sessions) // 2]
    with TranscriptStore(store.path) as opened:
        opened.add_message(Message(target, Role.USER, [TextPart("where is the needle?")]))
        store.size += 1
    print(f"\n== {size} messages: crush.history() (pandas DataFrame), each in a fresh process")
    # The first read ever. It also settles each session (bench_store's messages leave tool
    # calls without results: each gets an error result appended), which the store's reader
    # does, so it keeps no rows; the next process derives and keeps them. Both once a store.
    if before is not None:  # on a copy, so both trees start from the same files
        copy = store.path.with_name("store-before")
        shutil.copytree(store.path, copy)
        then = probe(copy, "fresh", before.resolve())["first_s"]
        shutil.rmtree(copy)
        print(f"  first call ever, before: {then:.3f} s")
    ever = probe(store.path, "fresh", None)
    print(
        f"  first call ever (every session settled, no rows kept)   {ever['first_s']:6.3f} s  "
        f"({ever['first_rows']} rows)"
    )
    deriving = probe(store.path, "fresh", None)
    print(f"  first call, no rows kept yet (derived and kept)         {deriving['first_s']:6.3f} s")
    runs = 1 if quick else 3
    trees: list[tuple[str, Path | None]] = [("after", None)]
    if before is not None:
        trees.insert(0, ("before", before.resolve()))
    after_kernels_closed(size, store.path.parent, trees)
    results = {label: history_numbers(store.path, tree, runs) for label, tree in trees}
    lines = (
        ("(a) first call, store not yet open", "first_s", "first_rows"),
        ("    (rows kept by an earlier process)", None, None),
        ("(b) first call, store open (a kernel)", "first_open_s", "first_open_rows"),
        ("(c) again", "repeat_s", "repeat_rows"),
        ("(d) search, one hit", "search_hit_s", "search_hit_rows"),
        ("(d) search, no hit", "search_miss_s", "search_miss_rows"),
        ("    first search in a fresh process", "search_s", "search_rows"),
        ("    importing pandas (not in the above)", "pandas_import_s", None),
    )
    print(
        f"  {'':42s}" + "".join(f"{label:>10s}" for label, _ in trees) + "   (s, median of "
        f"{runs} processes)"
    )
    for text, key, rows in lines:
        if key is None:
            print(f"  {text}")
            continue
        values = "".join(f"{results[label][key]:10.3f}" for label, _ in trees)
        count = f"   {int(results['after'][rows])} rows" if rows else ""
        print(f"  {text:42s}{values}{count}")
    after = results["after"]
    print(f"  (a) with pandas' import: {after['first_s'] + after['pandas_import_s']:.3f} s")
    at = f"{store.size:,} messages"  # a quick run measures a tenth of the goal's size
    for goal, key in (
        ("first_call_s", "first_s"),
        ("first_call_open_s", "first_open_s"),
        ("repeat_s", "repeat_s"),
        ("search_hit_s", "search_hit_s"),
        ("search_miss_s", "search_miss_s"),
    ):
        measured(f"history.{goal}", after[key], at)
    with TranscriptStore(store.path) as opened:
        crush.history(store=opened)  # what follows is asked again
        print("  more, in this process with the store open:")
        for label, kwargs in (
            ("one session", {"session": target}),
            ("search, hits in every session", {"search": "NaN price"}),
            ("search in one session", {"session": target, "search": "groupby"}),
            ("newest 100", {"limit": 100}),
        ):
            start = time.perf_counter_ns()
            rows = len(crush.history(store=opened, **kwargs))
            print(f"    {label:32s} {ms(time.perf_counter_ns() - start):9.1f} ms  {rows} rows")


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
        measured(f"store.{kind}_p99_ms", p99, f"{size:,} messages")
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
    measured("store.cold_open_s", worst / 1000, f"worst of 5, {size:,} messages")
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
    measured("store.session_ms", p99, f"p99 of 50 sessions, {size:,} messages")


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
    measured("store.kill9_lost", lost + final_lost + corrupted, "lost after kills and at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/10 of the sizes, a smoke run")
    parser.add_argument("--kills", type=int, default=None, help="kill -9 iterations (200)")
    parser.add_argument(
        "--before", type=Path, help="a package tree whose history() to measure as well"
    )
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
            (50_000, lambda: at_50k(store, args.before, args.quick)),
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
