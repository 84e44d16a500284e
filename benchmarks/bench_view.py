"""What a streaming answer costs on the kernel's iopub channel, per view, in a real kernel.

    .venv/bin/python benchmarks/bench_view.py [--quick] [--rate TOKENS_PER_SECOND]

For the same answers streamed at 500 tokens/s (the scripted model's word tokens; a real
model's pace is nearer 50-100, where each update carries less text), the bytes the kernel
published on iopub for the prompt's cell (each message as it goes on the wire: signature,
header, parent header, metadata, content; the topic frame left out), divided by the
characters of the answer:

- prose: ~10 KB of Markdown paragraphs;
- a 100-line code block, and a 1,600-line code block (94 KB), each with a line of prose
  around it.

``run_view = "widgets"`` is the ipywidgets view (whole values re-sent at each redraw);
``"delta"`` is the delta view (only what is new). Goal: <= 3 bytes per character whatever
the length. The columns split it (bytes per character): the live view's comm messages, and
the displays (the live bundle with its fallback, then the static answer that replaces it:
its text/markdown, ~1 byte per character, and a one-line text/plain, the same for both
views), and the floor: what the run would cost if its view sent the whole answer in one
message at the end (the same cell messages, displays and comm open and close), which no
streaming view can go below. The delta view's page module goes once per kernel, with the
kernel's first delta run, in a model of its own: its bytes are printed apart, not in any
answer's. The machine is shared; the numbers are printed, nothing passes or fails.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from goals import measured
from support.kernel_harness import SETUP, Kernel

#: Tokens a second, unless --rate says otherwise.
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
#: The delta view's goal for each answer.
GOALS = {
    "prose": "view.prose_bytes_per_char",
    "100-line code block": "view.block100_bytes_per_char",
    "1,600-line code block": "view.block1600_bytes_per_char",
}


#: How the bytes are reported: the live view's comm traffic, and the displays (the
#: live bundle, then the static answer that replaces it: text/plain and text/markdown).
KINDS = {
    "comm_open": "comm",
    "comm_msg": "comm",
    "comm_close": "comm",
    "display_data": "display",
    "update_display_data": "display",
}


def stream_bytes(
    kernel: Kernel, view: str, answer: str, rate: int = RATE
) -> tuple[dict[str, int], int, float, int]:
    """(bytes by kind, messages, seconds, floor) the prompt's cell put on iopub for ``answer``.

    The floor is what the same run would have cost had its view sent the whole answer in
    one message at the end: its comm messages replaced by one carrying all of the text.
    """
    kernel.run(f'%config CrushConfig.run_view = "{view}"')
    kernel.run(f"crush.use_model(ScriptedModel([{answer!r}], tokens_per_second={rate}))")
    kernel.drain()
    kernel.iopub.clear()
    started = time.perf_counter()
    cell = kernel.execute("%%crush --new --fresh\nshow me").msg_id
    kernel.run("await crush.last_view.wait()", timeout=600)
    seconds = time.perf_counter() - started
    assert kernel.value("crush.last_view.answer_markdown") == answer
    kernel.drain()
    mine = [m for m in kernel.iopub if m["parent_header"].get("msg_id") == cell]
    session = kernel.kc.session
    sizes: dict[str, int] = {}
    updates = []
    for m in mine:
        kind = KINDS.get(m["msg_type"], "other")
        if m["msg_type"] == "comm_open" and "esm" in m["content"]["data"].get("state", {}):
            kind = "module"  # the delta view's ViewModule: once per kernel
        size = sum(len(frame) for frame in session.serialize(m))
        sizes[kind] = sizes.get(kind, 0) + size
        if m["msg_type"] == "comm_msg" and kind != "module":
            updates.append((m, size))
    floor = sum(sizes.values()) - sizes.get("module", 0) - sum(size for _, size in updates)
    if updates:
        whole = copy.deepcopy(updates[-1][0])
        whole["content"]["data"]["content"] = {"seq": 1, "ops": [["answer+", answer]]}
        floor += sum(len(frame) for frame in session.serialize(whole))
    return sizes, len(mine), seconds, floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="the 1,600-line block in the delta view only"
    )
    parser.add_argument("--rate", type=int, default=RATE, help="tokens a second")
    args = parser.parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load}; answers at {args.rate} tokens/s")
    print(
        f"{'answer':22} {'chars':>7}  {'view':8} {'iopub bytes':>11} {'B/char':>6} "
        f"{'live view':>9} {'displays':>8} {'floor':>5} {'messages':>8} {'seconds':>7}"
    )
    with tempfile.TemporaryDirectory() as data:
        kernel = Kernel(data)
        try:
            kernel.run(SETUP + "from jupyter_crush.testing import ScriptedModel")
            for name, answer in ANSWERS.items():
                # The widgets view re-sends the whole answer at each redraw: a long one is slow.
                quick_views = ("delta",) if len(answer) > 50_000 else ("widgets", "delta")
                for view in quick_views if args.quick else ("widgets", "delta"):
                    sizes, count, seconds, floor = stream_bytes(kernel, view, answer, args.rate)
                    if "module" in sizes:
                        module = sizes.pop("module")
                        print(f"(once per kernel: the delta view's page module, {module:,} bytes)")
                    size, chars = sum(sizes.values()), len(answer)
                    print(
                        f"{name:22} {chars:>7}  {view:8} {size:>11,} {size / chars:>6.1f} "
                        f"{sizes.get('comm', 0) / chars:>9.1f} "
                        f"{sizes.get('display', 0) / chars:>8.1f} {floor / chars:>5.1f} "
                        f"{count:>8} {seconds:>7.1f}"
                    )
                    if view == "delta":
                        note = "" if args.rate == RATE else f"{args.rate} tokens/s"
                        measured(GOALS[name], size / chars, note)
        finally:
            kernel.shutdown()


if __name__ == "__main__":
    main()
