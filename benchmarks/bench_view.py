"""What a streaming answer costs on the kernel's iopub channel, per view, in a real kernel.

    .venv/bin/python benchmarks/bench_view.py [--quick]

For the same answers streamed at 500 tokens/s (the scripted model's word tokens), the
bytes the kernel published on iopub for the prompt's cell (each message as it goes on the
wire: signature, header, parent header, metadata, content; the topic frame left out),
divided by the characters of the answer:

- prose: ~10 KB of Markdown paragraphs;
- a 100-line code block, and a 1,600-line code block (94 KB), each with a line of prose
  around it.

``run_view = "widgets"`` is the ipywidgets view (whole values re-sent at each redraw);
``"delta"`` is the delta view (only what is new). Goal: <= 3 bytes per character whatever
the length. The machine is shared; the numbers are printed, nothing passes or fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kernel_harness import SETUP, Kernel

RATE = 500


def code_block(lines: int) -> str:
    body = "".join(
        f"    frame_{i} = df.groupby('k{i % 7}')['price'].mean().round({i % 5})  # step {i}\n"
        for i in range(lines)
    )
    return f"Here is the code:\n\n```python\ndef pipeline(df):\n{body}```\n\nRun it as is."


PROSE = "\n\n".join(
    f"Paragraph {i}: the price column has NaNs where the join found no match, so the "
    "left rows keep **missing** values; `fillna` hides it, a check of the keys fixes it."
    for i in range(60)
)

ANSWERS = {
    "prose": PROSE,
    "100-line code block": code_block(100),
    "1,600-line code block": code_block(1600),
}


def stream_bytes(kernel: Kernel, view: str, answer: str) -> tuple[int, int, float]:
    """(bytes, messages, seconds) the prompt's cell put on iopub while ``answer`` streamed."""
    kernel.run(f'%config CrushConfig.run_view = "{view}"')
    kernel.run(f"crush.use_model(ScriptedModel([{answer!r}], tokens_per_second={RATE}))")
    kernel.drain()
    kernel.iopub.clear()
    started = time.perf_counter()
    cell = kernel.execute("%%crush --new\nshow me").msg_id
    kernel.run("await crush.last_view.wait()", timeout=600)
    seconds = time.perf_counter() - started
    assert kernel.value("crush.last_view.answer_markdown") == answer
    kernel.drain()
    mine = [m for m in kernel.iopub if m["parent_header"].get("msg_id") == cell]
    session = kernel.kc.session
    size = sum(len(frame) for m in mine for frame in session.serialize(m))
    return size, len(mine), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="leave out the 1,600-line block")
    args = parser.parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load}; answers at {RATE} tokens/s")
    print(
        f"{'answer':24} {'chars':>7}  {'view':8} {'iopub bytes':>12} {'B/char':>7} "
        f"{'messages':>9} {'seconds':>8}"
    )
    with tempfile.TemporaryDirectory() as data:
        kernel = Kernel(data)
        try:
            kernel.run(SETUP + "from jupyter_crush.testing import ScriptedModel")
            for name, answer in ANSWERS.items():
                if args.quick and len(answer) > 50_000:
                    continue
                for view in ("widgets", "delta"):
                    size, count, seconds = stream_bytes(kernel, view, answer)
                    print(
                        f"{name:24} {len(answer):>7}  {view:8} {size:>12,} "
                        f"{size / len(answer):>7.1f} {count:>9} {seconds:>8.1f}"
                    )
        finally:
            kernel.shutdown()


if __name__ == "__main__":
    main()
