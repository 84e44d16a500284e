"""What a gateway costs per exchange, and what jupyter-crush adds to it.

    .venv/bin/python benchmarks/bench_gateway.py [--quick]

A Jupyter server on loopback starts a notebook's kernel itself, then (a second server) sends
it to a local Jupyter Kernel Gateway (``--gateway-url``). Through each, a client times
``1+1`` round trips over the kernel's websocket as JupyterLab sends them (execute request to
idle), first in a bare kernel, then with ``%load_ext jupyter_crush`` and a finished
``%%crush`` turn in it. Medians and 90th percentiles of 200 exchanges each (--quick: 30).
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


def timed(kernel, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        kernel.run("1+1")
        times.append(time.perf_counter() - start)
    return times


def describe(label: str, times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[int(len(ordered) * 0.9)]
    return f"{label:<34} median {statistics.median(times) * 1000:6.1f} ms  p90 {p90 * 1000:6.1f} ms"


def measure(gateway: bool, exchanges: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        home, notebooks = Path(tmp) / "home", Path(tmp) / "notebooks"
        home.mkdir()
        notebooks.mkdir()
        servers = Servers(home, notebooks, gateway=gateway)
        try:
            kernel = servers.start_notebook_kernel("bench.ipynb")
            try:
                timed(kernel, 20)  # warm up
                bare = timed(kernel, exchanges)
                kernel.run("%load_ext jupyter_crush")
                kernel.run("%%crush --wait\nSay hello")
                loaded = timed(kernel, exchanges)
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
        for label, times in runs.items():
            print(describe(f"{path}, {label}", times))
    for label in ("bare kernel", "jupyter-crush loaded"):
        extra = statistics.median(results["gateway"][label]) - statistics.median(
            results["direct"][label]
        )
        print(f"gateway adds per exchange ({label}): {extra * 1000:.1f} ms")


if __name__ == "__main__":
    main()
