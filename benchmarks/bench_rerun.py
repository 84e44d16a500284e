"""Run All of a notebook with 10 agent cells: asking the model (the stock way) vs replaying.

The notebook runs headless under nbclient in a new kernel each time, against the official
OpenAI SDK and a local server streaming gpt-4o-shaped answers (each chunk after a delay, so
an answer takes about as long as a short real one). The first Run All asks; the second, over
the same transcript store, replays. Printed per run: wall time, the time the 10 agent cells
took (nbclient's timings), provider requests, tokens and cost from the transcript.

    .venv/bin/python benchmarks/bench_rerun.py [--cells 10] [--delay 0.02] [--quick] [--before DIR]

``--quick`` streams the first Run All's chunks 5 ms apart; what the replay costs is measured
the same way. ``--before DIR`` first measures the package tree in DIR (e.g. made by
``git archive <commit> jupyter_crush | tar -x -C DIR``) the same way, in its own store, so
both trees are compared within one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import nbformat
from goals import measured
from nbclient import NotebookClient
from support.kernel_harness import kernel_env, kernel_manager
from support.openai_chunks import openai_step
from support.replay_server import serving

from jupyter_crush.store.transcript import TranscriptStore

ANSWER = "The weekly totals rise in every city; Brest grows fastest. " * 6


def notebook(cells: int) -> nbformat.NotebookNode:
    source = [
        "%load_ext jupyter_crush\n"
        '%config CrushConfig.allowed_tools = ["python"]\n'
        "import pandas as pd\n"
        'sales = pd.DataFrame({"city": ["Lyon", "Nice", "Brest"] * 50, "n": range(150)})'
    ]
    for i in range(cells):
        source.append(f"%%crush -s bench\nQuestion {i + 1} about {{sales}}: what stands out?")
        source.append(f"made_{i} = globals().get('made_{i}')")  # a plain cell between
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in source])


def script(cells: int) -> list:
    steps = []
    for i in range(cells):
        if i % 5 == 0:  # every fifth cell runs code through the python tool, then answers
            code = f"made_{i} = sales.groupby('city').n.sum()\nprint(made_{i})"
            steps.append(openai_step(len(steps), tool=("python", {"code": code}), tokens=900))
        steps.append(openai_step(len(steps), ANSWER, tokens=900))
    return steps


def run_all(
    nb, folder: Path, base_url: str, tree: Path | None
) -> tuple[float, list[float], nbformat.NotebookNode]:
    nb = nbformat.from_dict(nb)
    extra = {"PYTHONPATH": str(tree)} if tree is not None else {}
    env = kernel_env(
        folder / ".crush", OPENAI_API_KEY="sk-bench", OPENAI_BASE_URL=base_url, **extra
    )
    client = NotebookClient(
        nb,
        km=kernel_manager(folder / "specs"),
        timeout=300,
        resources={"metadata": {"path": str(folder)}},
    )
    started = time.perf_counter()
    client.execute(env=env)
    wall = time.perf_counter() - started
    agent = []
    for cell in nb.cells:
        if cell.source.startswith("%%crush"):
            timing = cell.metadata["execution"]
            begin = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
            agent.append((end - begin).total_seconds())
    return wall, agent, nb


def spent(folder: Path, since: float) -> tuple[int, float, int]:
    """Tokens, cost and replayed answers recorded since ``since``."""
    store = TranscriptStore(folder / ".crush")
    tokens, cost, replayed = 0, 0.0, 0
    for session in store.list_sessions():
        for message in store.list_messages(session.id):
            if message.role == "assistant" and message.created_at >= since:
                tokens += message.usage.total_tokens
                cost += message.cost or 0.0
                replayed += message.provider == "recorded" and bool(message.text)
    store.close()
    return tokens, cost, replayed


def measure(cells: int, delay: float, tree: Path | None) -> list[tuple]:
    """Ask, then replay, in a new store: a row per Run All."""
    steps = script(cells)
    for step in steps:
        step.event_delay = delay
    nb = notebook(cells)
    with tempfile.TemporaryDirectory(prefix="bench-rerun-") as tmp, serving(steps) as server:
        folder = Path(tmp)
        rows = []
        for label in ("first Run All (asks)", "Run All again (replays)"):
            before, since = len(server.requests), time.time()
            wall, agent, _ = run_all(nb, folder, f"{server.url}/v1", tree)
            tokens, cost, replayed = spent(folder, since)
            rows.append((label, wall, agent, len(server.requests) - before, tokens, cost, replayed))
    return rows


def report(rows: list[tuple], cells: int) -> None:
    print(f"{'':26}{'wall s':>8}{'agent cells s':>15}{'requests':>10}{'tokens':>8}{'cost $':>9}")
    for label, wall, agent, requests, tokens, cost, _ in rows:
        print(f"{label:26}{wall:8.2f}{sum(agent):15.2f}{requests:10d}{tokens:8d}{cost:9.4f}")
    first, again = rows
    print(
        f"\nreplay: {again[6]} answers replayed, {again[3]} requests. Agent cells, replaying: "
        f"the first {again[2][0]:.2f} s (the extension's first use: widgets, the model's SDK; "
        f"asking, {first[2][0]:.2f} s), the other {cells - 1} "
        f"{sum(again[2][1:]):.2f} s in all vs {sum(first[2][1:]):.2f} s asking; "
        "per cell (ms): " + " ".join(f"{t * 1000:.0f}" for t in again[2])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10)
    parser.add_argument("--delay", type=float, help="seconds between chunks (0.02)")
    parser.add_argument("--quick", action="store_true", help="chunks 5 ms apart")
    parser.add_argument("--before", type=Path, help="a package tree to measure first")
    args = parser.parse_args()
    if args.delay is None:
        args.delay = 0.005 if args.quick else 0.02
    print(f"Run All of a notebook with {args.cells} %%crush cells ({args.delay * 1000:.0f} ms")
    print("between streamed chunks), headless under nbclient, each tree in a new store:")
    if args.before:
        print(f"\n{args.before}:")
        report(measure(args.cells, args.delay, args.before.resolve()), args.cells)
    print("\nthis checkout:")
    rows = measure(args.cells, args.delay, None)
    report(rows, args.cells)
    again = rows[1]
    note = "" if args.cells == 10 else f"{args.cells} cells"
    measured("rerun.replay_requests", again[3], note)
    measured("rerun.replay_cells_s", sum(again[2]), note)
    if args.cells > 1:
        added = again[2][0] - statistics.median(again[2][1:])
        measured("rerun.first_cell_added_s", added, note)


if __name__ == "__main__":
    main()
