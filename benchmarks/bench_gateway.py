"""What a gateway costs per exchange, and what jupyter-crush adds to it.

    .venv/bin/python benchmarks/bench_gateway.py [--quick]

A Jupyter server on loopback starts a notebook's kernel itself, then (a second server) sends
it to a local Jupyter Kernel Gateway (``--gateway-url``). Through each, a client times
``1+1`` round trips over the kernel's websocket as JupyterLab sends them (execute request to
idle), first in a bare kernel, then with ``%load_ext jupyter_crush`` and a finished
``%%crush`` turn in it. Medians and 90th percentiles of 200 exchanges each (--quick: 30),
at two paces:

- a cell at a time: each request 0.3 s after the last went idle, as a person runs cells. This
  is what the gateway's cost is computed from.
- back to back: each request the moment the last went idle. The server's kernel websocket
  (tornado's, which jupyter_server leaves with Nagle's algorithm on) then holds every reply
  after ``busy`` until the client acknowledges ``busy``, and Linux delays that
  acknowledgement ~40 ms on a connection that answers what it receives at once: about 48 ms
  per exchange on every path, with or without jupyter-crush. A browser's websocket sees the
  same (Chromium here, direct: 48 ms back to back, 10.5 ms a cell at a time); with that
  server socket set to ``TCP_NODELAY``, back to back takes 4.6 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.gateway import Servers  # noqa: E402

# Long enough that the client's TCP stack acknowledges replies at once again (0.2 s still
# left some exchanges stalled here); a person's pace is slower still.
CELL_AT_A_TIME = 0.3
PACES = {"a cell at a time": CELL_AT_A_TIME, "back to back": 0.0}


def timed(kernel, count: int, pause: float) -> list[float]:
    times = []
    for _ in range(count):
        time.sleep(pause)
        start = time.perf_counter()
        kernel.run("1+1")
        times.append(time.perf_counter() - start)
    return times


def describe(label: str, times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[int(len(ordered) * 0.9)]
    return f"{label:<52} median {statistics.median(times) * 1000:6.1f} ms  p90 {p90 * 1000:6.1f} ms"


def at_each_pace(kernel, exchanges: int) -> dict[str, list[float]]:
    return {pace: timed(kernel, exchanges, pause) for pace, pause in PACES.items()}


def measure(gateway: bool, exchanges: int) -> dict[str, dict[str, list[float]]]:
    with tempfile.TemporaryDirectory() as tmp:
        home, notebooks = Path(tmp) / "home", Path(tmp) / "notebooks"
        home.mkdir()
        notebooks.mkdir()
        servers = Servers(home, notebooks, gateway=gateway)
        try:
            kernel = servers.start_notebook_kernel("bench.ipynb")
            try:
                timed(kernel, 20, 0.0)  # warm up
                bare = at_each_pace(kernel, exchanges)
                kernel.run("%load_ext jupyter_crush")
                kernel.run("%%crush --wait\nSay hello")
                loaded = at_each_pace(kernel, exchanges)
            finally:
                kernel.close()
        finally:
            servers.close()
    return {"bare kernel": bare, "jupyter-crush loaded": loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 exchanges each, not 200")
    exchanges = 30 if parser.parse_args().quick else 200
    results = {path: measure(path == "gateway", exchanges) for path in ("direct", "gateway")}
    for path, runs in results.items():
        for label, paces in runs.items():
            for pace, times in paces.items():
                print(describe(f"{path}, {label}, {pace}", times))
    for label in ("bare kernel", "jupyter-crush loaded"):
        direct, gateway = (results[path][label]["a cell at a time"] for path in results)
        extra = statistics.median(gateway) - statistics.median(direct)
        print(f"gateway adds per exchange ({label}, a cell at a time): {extra * 1000:.1f} ms")


if __name__ == "__main__":
    main()
