"""What the notebook tool and ``%crush fix`` add before the first model request.

    .venv/bin/python benchmarks/bench_notebook.py [--quick]

For a 200-cell notebook on disk (code cells with printed output, a DataFrame repr, a
figure and a pandas traceback every 20 cells) and a kernel history of 200 executions:

- the ``notebook`` tool's whole answer (read the file, merge the history, format, cap),
  next to the stock way to read the same file, ``nbformat.read``;
- the same formatting from the cells a JupyterLab page sends (the live-document path);
- ``%crush fix`` after a real KeyError raised inside pandas: the time from the magic to the
  model's first request, next to a plain ``%%crush`` prompt's, and their difference (the
  traceback formatting, the attachment, the context files).

Goal: at most 20 ms for each of the first and the last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import nbformat
from goals import measured
from IPython.testing.globalipapp import start_ipython

from jupyter_crush.core.tools import ToolContext
from jupyter_crush.tools.notebook import (
    NotebookSnapshot,
    NotebookTool,
    cells_from_json,
    format_cells,
)

CELLS = 200
CTX = ToolContext("bench", "call")
PNG = "iVBORw0KGgoAAAANSUhEUgAA" * 2_000  # ~48 KB of base64, like a small figure


def cell(index: int) -> dict:
    outputs: list[dict] = [
        {"output_type": "stream", "name": "stdout", "text": f"row {index}: " + "x" * 200 + "\n"}
    ]
    if index % 20 == 5:
        outputs.append(
            {
                "output_type": "display_data",
                "metadata": {},
                "data": {"image/png": PNG, "text/plain": "<Figure size 640x480 with 1 Axes>"},
            }
        )
    if index % 20 == 10:
        outputs.append(
            {
                "output_type": "execute_result",
                "execution_count": index,
                "metadata": {},
                "data": {"text/plain": "\n".join(f"{i}  Lyon  {i * 1.5}" for i in range(60))},
            }
        )
    if index % 20 == 15:
        outputs.append(
            {
                "output_type": "error",
                "ename": "KeyError",
                "evalue": "'prize'",
                "traceback": [f"\x1b[0;31mframe {i}\x1b[0m line" for i in range(30)],
            }
        )
    return {
        "cell_type": "code",
        "id": f"cell-{index}",
        "metadata": {},
        "execution_count": index + 1,
        "source": f"# step {index}\nresult_{index} = compute(data, {index})\nprint(result_{index})",
        "outputs": outputs,
    }


def median_ms(samples: list[float]) -> str:
    p90 = sorted(samples)[int(len(samples) * 0.9)]
    return f"median {statistics.median(samples) * 1000:6.2f} ms, p90 {p90 * 1000:6.2f} ms"


#: Kernel code: a model that notes when the agent's first request reaches it.
TIMED_MODEL = """
import time

class TimedModel(ScriptedModel):
    first_request_at = 0.0

    async def stream(self, messages, **kwargs):
        if not self.first_request_at:
            self.first_request_at = time.perf_counter()
        async for event in super().stream(messages, **kwargs):
            yield event

import pandas as pd
sales = pd.DataFrame({"price": [1.0, 2.0]})
"""

ASK = {
    "%crush fix": 'get_ipython().run_line_magic("crush", "fix")',
    "plain %%crush": 'get_ipython().run_cell_magic("crush", "", "what is 6 * 7?")',
}


def fix_in_a_kernel(rounds: int = 15) -> dict[str, list[float]]:
    """Seconds from the magic to the first model request, in a real kernel, after a real
    KeyError raised inside pandas."""
    from support.kernel_harness import SETUP, Kernel

    kernel = Kernel(tempfile.mkdtemp(prefix="crush-bench-fix-"))
    try:
        kernel.run(SETUP + TIMED_MODEL, timeout=60)
        times: dict[str, list[float]] = {label: [] for label in ASK}
        for _ in range(rounds):
            assert kernel.execute("sales['prize'].mean()").errors
            for label, code in ASK.items():
                kernel.run(
                    "model = TimedModel(['Done.']); crush.use_model(model)\n"
                    f"start = time.perf_counter()\n{code}"
                )
                kernel.run("await crush.last_view.wait()")
                times[label].append(kernel.value("model.first_request_at - start"))
        return times
    finally:
        kernel.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and kernel rounds")
    quick = parser.parse_args().quick
    folder = Path(tempfile.mkdtemp(prefix="crush-bench-notebook-"))
    os.chdir(folder)
    os.environ["CRUSH_DATA_DIR"] = str(folder / ".crush")
    cells = [cell(i) for i in range(CELLS)]
    path = folder / "analysis.ipynb"
    path.write_text(
        json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    print(f"notebook: {CELLS} cells, {path.stat().st_size / 1024:.0f} KB on disk")

    start_ipython()
    from IPython import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "jupyter_crush")
    for i in range(CELLS):  # a kernel history as long as the notebook
        shell.history_manager.input_hist_raw.append(cells[i]["source"])
    shell.user_ns["__session__"] = str(path)

    tool = NotebookTool(shell)
    loop = asyncio.new_event_loop()
    answer = loop.run_until_complete(tool.run({}, CTX)).content
    samples, stock, live = [], [], []
    for _ in range(10 if quick else 50):
        start = time.perf_counter()
        loop.run_until_complete(tool.run({}, CTX))
        samples.append(time.perf_counter() - start)
        start = time.perf_counter()
        nbformat.read(path, as_version=4)
        stock.append(time.perf_counter() - start)
        start = time.perf_counter()
        snapshot = NotebookSnapshot("live document", "analysis.ipynb", cells_from_json(cells))
        format_cells(snapshot, snapshot.cells)
        live.append(time.perf_counter() - start)
    print(
        f"notebook tool, whole notebook:    {median_ms(samples)}  ({len(answer):,} chars answered)"
    )
    print(f"  stock nbformat.read, same file: {median_ms(stock)}  (parse only)")
    print(f"  from a page's cells (live):     {median_ms(live)}")
    measured("notebook.tool_ms", statistics.median(samples) * 1000)

    times = fix_in_a_kernel(3 if quick else 15)
    fix, plain = times["%crush fix"], times["plain %%crush"]
    print(f"%crush fix -> first request:      {median_ms(fix)}  (real kernel, pandas KeyError)")
    print(f"  plain %%crush -> first request: {median_ms(plain)}")
    added = statistics.median(fix) - statistics.median(plain)
    print(f"  added by fix (median - median): {added * 1000:6.2f} ms")
    measured("notebook.fix_added_ms", added * 1000)


if __name__ == "__main__":
    main()
