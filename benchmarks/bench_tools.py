"""What the notebook tools cost, and how free the kernel's loop stays while they run.

    .venv/bin/python benchmarks/bench_tools.py [--quick]

- python tool round trip for a trivial expression (worker thread + output routing) next to
  IPython's own ``run_cell`` of the same code;
- event-loop lag while the python tool runs CPU-bound code in its worker thread (what the
  run widget and the Stop button feel), next to the lag with an idle loop;
- Stop latency: from cancelling the tool to the worker thread having exited, for a busy loop;
- bash round trip for ``true`` (spawn, process-group bookkeeping, reaping);
- grep over a tree of 2,000 small files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from jupyter_crush.core.tools import ToolContext
from jupyter_crush.tools.files import FileTools
from jupyter_crush.tools.python import PythonTool
from jupyter_crush.tools.shell import BashTool
from jupyter_crush.tools.workspace import Workspace

CTX = ToolContext("bench", "call")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def python_round_trip(shell: InteractiveShell, n: int = 200) -> None:
    tool = PythonTool(shell)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await tool.run({"code": "1 + 1"}, CTX)
        times.append(time.perf_counter() - start)
    cell = []
    for _ in range(n):
        start = time.perf_counter()
        shell.run_cell("1 + 1", silent=True)
        cell.append(time.perf_counter() - start)
    print(f"python tool '1 + 1':      median {ms(statistics.median(times))}  (n={n})")
    print(f"IPython run_cell '1 + 1': median {ms(statistics.median(cell))}")


async def loop_lag(seconds: float, busy: PythonTool | None) -> list[float]:
    """Lateness of a 10 ms ticker on the loop, optionally while the tool spins."""
    task = None
    if busy is not None:
        code = (
            f"import time\nend = time.perf_counter() + {seconds}\n"
            "while time.perf_counter() < end: pass"
        )
        task = asyncio.create_task(busy.run({"code": code, "timeout": seconds + 10}, CTX))
    lags = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append(time.perf_counter() - start - 0.01)
    if task is not None:
        await task
    return lags


async def stop_latency(shell: InteractiveShell, n: int = 20) -> None:
    tool = PythonTool(shell)
    times = []
    for _ in range(n):
        started = threading.Event()
        shell.user_ns["started"] = started
        code = (
            "import threading\nworker = threading.current_thread()\nstarted.set()\nwhile True: pass"
        )
        task = asyncio.create_task(tool.run({"code": code}, CTX))
        while not started.is_set():
            await asyncio.sleep(0.001)
        start = time.perf_counter()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        worker: threading.Thread = shell.user_ns["worker"]
        await asyncio.to_thread(worker.join)
        times.append(time.perf_counter() - start)
    print(
        f"stop -> worker exited:    median {ms(statistics.median(times))}, "
        f"max {ms(max(times))}  (n={n})"
    )


async def bash_round_trip(n: int = 50) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tool = BashTool(Path(tmp))
        times = []
        for _ in range(n):
            start = time.perf_counter()
            await tool.run({"command": "true"}, CTX)
            times.append(time.perf_counter() - start)
    print(f"bash 'true':              median {ms(statistics.median(times))}  (n={n})")


async def grep_tree() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(2000):
            folder = root / f"d{i % 40}"
            folder.mkdir(exist_ok=True)
            (folder / f"f{i}.py").write_text("import os\n" * 20 + f"value_{i} = {i}\n")
        tools = FileTools(Workspace(root))
        start = time.perf_counter()
        result = await tools.grep({"pattern": r"value_1\d\d\b", "include": "*.py"}, CTX)
        took = time.perf_counter() - start
        assert result.content.startswith("100 matches"), result.content[:80]
        start = time.perf_counter()
        await tools.glob({"pattern": "**/*.py", "limit": 10}, CTX)
        globbed = time.perf_counter() - start
    print(f"grep 2,000 files:         {ms(took)};  glob 2,000 files: {ms(globbed)}")


async def main(quick: bool) -> None:
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    await python_round_trip(shell, 50 if quick else 200)
    seconds = 0.5 if quick else 2.0
    idle = await loop_lag(seconds, None)
    busy = await loop_lag(seconds, PythonTool(shell))
    for label, lags in (("idle loop", idle), ("loop while tool spins", busy)):
        print(
            f"{label + ':':<26}10 ms ticker late by median {ms(statistics.median(lags))}, "
            f"p99 {ms(sorted(lags)[int(len(lags) * 0.99)])}, max {ms(max(lags))}"
        )
    await stop_latency(shell, 5 if quick else 20)
    await bash_round_trip(10 if quick else 50)
    await grep_tree()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter lag probes")
    asyncio.run(main(parser.parse_args().quick))
