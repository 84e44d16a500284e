"""Sustained multi-session streaming in a real kernel, for one or more package trees.

    .venv/bin/python benchmarks/bench_sustained.py [--quick] [--before DIR]

Four sessions stream ScriptedModel word tokens at 2,000 tokens/s each for 60 s while a client
drains iopub as a front end does. Printed per tree:

- a trivial cell's latency during the first and the last 10 s of the load, against the same
  cell on the idle kernel before the load (goal: <= 1.3x at the end);
- Stop of the newest session at the end of the load -> its canceled turn shown, ten times,
  each stopped session replaced by a new one (goal: 10 ms);
- iopub bytes per answer character: every iopub message during the load (header, parent
  header, metadata, content as JSON, plus binary buffers) over the answers' characters in the
  store.

``--before DIR`` runs the same load first against the package tree in DIR (e.g. made by
``git archive <commit> jupyter_crush | tar -x -C DIR``), then against this checkout, so both
are measured in one run. The machine is shared: compare numbers within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_kernel import canceled_update, describe
from support.kernel_harness import ROOT, SETUP, STOP_CLICK, Kernel, scripted, view_ops

TRIVIAL = "x = 1 + 1"


def message_bytes(msg: dict) -> int:
    parts = (msg["header"], msg["parent_header"], msg["metadata"], msg["content"])
    text = sum(len(json.dumps(part, default=str)) for part in parts)
    return text + sum(len(buffer) for buffer in msg.get("buffers") or [])


def timed_cell(kernel: Kernel) -> float:
    start = time.perf_counter()
    kernel.execute(TRIVIAL)
    return time.perf_counter() - start


def measure(
    tree: Path, sessions: int, rate: int, duration: float, idle_cells: int, stop_samples: int
) -> None:
    with tempfile.TemporaryDirectory() as data:
        kernel = Kernel(data, env={"PYTHONPATH": str(tree)})
        try:
            kernel.run(SETUP)
            package = kernel.value("__import__('jupyter_crush').__file__")
            assert package.startswith(str(tree)), f"kernel imported {package}, not {tree}"
            for _ in range(5):
                timed_cell(kernel)  # warm up
            idle = [timed_cell(kernel) for _ in range(idle_cells)]
            kernel.run(scripted(int(rate * duration * 2), rate))
            session_ids, views = [], []
            for n in range(sessions):
                kernel.run(f"%%crush --new\nstream {n + 1}")
                session_ids.append(kernel.value("crush.current_session_id"))
                views.append(kernel.run_view())
            sent_bytes = 0
            early, late = [], []
            start = time.monotonic()
            while (elapsed := time.monotonic() - start) < duration:
                kernel.drain()
                latency = timed_cell(kernel)
                if elapsed < 10:
                    early.append(latency)
                elif elapsed >= duration - 10:
                    late.append(latency)
                sent_bytes += sum(message_bytes(m) for m in kernel.iopub)
                kernel.iopub.clear()
                time.sleep(0.1)
            kernel.drain()
            sent_bytes += sum(message_bytes(m) for m in kernel.iopub)
            kernel.iopub.clear()
            stops = []
            for n in range(stop_samples):
                # Stop the newest session, then start another: the load stays at full strength.
                newest = views[-1]
                kernel.drain()
                sent_bytes += sum(message_bytes(m) for m in kernel.iopub)
                kernel.iopub.clear()
                sent = kernel.click(newest, content=STOP_CLICK)
                kernel.wait_iopub(
                    lambda m, v=newest: canceled_update(m) and bool(view_ops(m, v)), timeout=30
                )
                stops.append(time.perf_counter() - sent)
                kernel.run(f"%%crush --new\nstream {sessions + n + 1}")
                session_ids.append(kernel.value("crush.current_session_id"))
                views.append(kernel.run_view())
            kernel.run("%crush cancel --all")
            kernel.run("import asyncio; await asyncio.wait_for(crush.last_view.wait(), 30)")
            characters = kernel.value(
                "sum(len(m.text) for s in " + json.dumps(session_ids) + " for m in "
                "crush.store.list_messages(s) if str(m.role) == 'assistant')"
            )
        finally:
            kernel.shutdown()
    base = statistics.median(idle)
    print(f"{tree}:")
    print(f"   idle:                 {describe(idle)}")
    print(f"   first 10 s of load:   {describe(early)}  ({statistics.median(early) / base:.2f}x)")
    print(
        f"   last 10 s of load:    {describe(late)}  "
        f"({statistics.median(late) / base:.2f}x, goal <= 1.3x)"
    )
    print(f"   Stop -> canceled shown: {describe(stops)} (goal <= 10 ms)")
    print(
        f"   iopub: {sent_bytes / 1e6:.1f} MB for {characters:,} answer characters, "
        f"{sent_bytes / max(1, characters):.2f} bytes per character"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 s of load instead of 60")
    parser.add_argument("--before", type=Path, help="a package tree to measure first")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--rate", type=int, default=2000, help="tokens/s per session")
    args = parser.parse_args()
    duration, idle_cells, stop_samples = (12.0, 10, 3) if args.quick else (60.0, 40, 10)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (shared: expect outliers)")
    print(f"{args.sessions} sessions x {args.rate} tokens/s for {duration:.0f} s")
    trees = [args.before.resolve()] if args.before else []
    for tree in [*trees, ROOT]:
        measure(tree, args.sessions, args.rate, duration, idle_cells, stop_samples)


if __name__ == "__main__":
    main()
