"""Every performance goal the README states, and how benchmarks report against them.

A benchmark calls ``measured("goal.id", value)`` (``from goals import measured``; benchmarks
run as scripts, so this folder is on ``sys.path``). That prints one line
``goal <id>: <value> <unit> (goal <= limit) met|NOT met`` and, when the environment variable
``CRUSH_BENCH_RESULTS`` names a file, appends the measurement to it as a JSON line.

    .venv/bin/python benchmarks/goals.py --table FILE   # every goal beside its measured value
    .venv/bin/python benchmarks/goals.py --readme       # the README's goal table, from GOALS

Goals are reported, not enforced: the table exits 0 whatever was met, and 1 only when a
benchmark recorded in FILE (benchmarks/run_all.sh records each one's exit status) failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS_ENV = "CRUSH_BENCH_RESULTS"


@dataclass(frozen=True)
class Goal:
    text: str  # as the README's "Performance goals" table states it
    unit: str
    limit: float
    comparison: str  # "<=" or ">="
    benchmark: str  # file name under benchmarks/

    def met(self, value: float) -> bool:
        return value <= self.limit if self.comparison == "<=" else value >= self.limit

    def limit_text(self) -> str:
        sign = "≤" if self.comparison == "<=" else "≥"
        return f"{sign} {number(self.limit)} {self.unit}"


GOALS: dict[str, Goal] = {
    "agent.overhead_us": Goal(
        "A streamed token's overhead in agent + store, over the scripted model alone",
        "µs",
        20,
        "<=",
        "bench_agent.py",
    ),
    "per_token.worst_us": Goal(
        "A streamed token through agent + store, worst 5,000-token window of a 1M-character answer",
        "µs",
        20,
        "<=",
        "bench_per_token.py",
    ),
    "per_token.last_over_first": Goal(
        "A token's cost at the end of a 1M-character answer over its cost at the start",
        "x",
        1.5,
        "<=",
        "bench_per_token.py",
    ),
    "store.append_p99_ms": Goal(
        "Append to a store of 100k messages, p99", "ms", 2, "<=", "bench_store_scale.py"
    ),
    "store.update_p99_ms": Goal(
        "Forced update in a store of 100k messages, p99", "ms", 2, "<=", "bench_store_scale.py"
    ),
    "store.cold_open_s": Goal(
        "Cold open of a store of 100k messages", "s", 1, "<=", "bench_store_scale.py"
    ),
    "store.session_ms": Goal(
        "One session's messages, first read in a store of 100k messages, p99",
        "ms",
        10,
        "<=",
        "bench_store_scale.py",
    ),
    "store.vs_jsonstorage_x": Goal(
        "A write at 20k messages, stock TinyDB JSONStorage's time over ours",
        "x",
        50,
        ">=",
        "bench_store_scale.py",
    ),
    "store.vs_caching_x": Goal(
        "A write at 20k messages, stock TinyDB CachingMiddleware's time over ours",
        "x",
        50,
        ">=",
        "bench_store_scale.py",
    ),
    "store.kill9_lost": Goal(
        "Acknowledged writes lost or corrupted in the kill -9 loop",
        "writes",
        0,
        "<=",
        "bench_store_scale.py",
    ),
    "history.first_call_s": Goal(
        "First crush.history() in a fresh process, store of 50k messages",
        "s",
        0.5,
        "<=",
        "bench_store_scale.py",
    ),
    "history.first_call_open_s": Goal(
        "First crush.history() with the 50k-message store already open",
        "s",
        0.5,
        "<=",
        "bench_store_scale.py",
    ),
    "history.repeat_s": Goal(
        "crush.history() again over 50k messages", "s", 0.5, "<=", "bench_store_scale.py"
    ),
    "history.search_hit_s": Goal(
        "Full-text search over 50k messages, a hit", "s", 0.2, "<=", "bench_store_scale.py"
    ),
    "history.search_miss_s": Goal(
        "Full-text search over 50k messages, a miss", "s", 0.2, "<=", "bench_store_scale.py"
    ),
    "kernel.trivial_cell_ratio": Goal(
        "A trivial cell while an agent streams 500 tokens/s, against idle (medians)",
        "x",
        1.3,
        "<=",
        "bench_kernel.py",
    ),
    "kernel.stop_p99_ms": Goal(
        "Stop click → canceled turn stored and shown, p99", "ms", 50, "<=", "bench_kernel.py"
    ),
    "kernel.first_token_ms": Goal(
        "A 2 s answer: cell run → first token on screen, median",
        "ms",
        50,
        "<=",
        "bench_kernel.py",
    ),
    "kernel.subshell_stop_ms": Goal(
        "Stop clicked on a subshell while another cell sleeps → Stopping… sent, median",
        "ms",
        50,
        "<=",
        "bench_kernel.py",
    ),
    "load_ext.median_ms": Goal(
        "%load_ext jupyter_crush in a fresh kernel, median", "ms", 50, "<=", "bench_load_ext.py"
    ),
    "load_ext.sdk_imported": Goal(
        "Loads of %load_ext jupyter_crush that imported a provider SDK",
        "loads",
        0,
        "<=",
        "bench_load_ext.py",
    ),
    "sustained.trivial_cell_end": Goal(
        "A trivial cell in the last 10 s of 4 sessions x 2,000 tokens/s, against idle at the"
        " same pace (medians)",
        "x",
        1.3,
        "<=",
        "bench_sustained.py",
    ),
    "sustained.stop_median_ms": Goal(
        "Stop of the newest of 4 sessions x 2,000 tokens/s → canceled shown, median",
        "ms",
        10,
        "<=",
        "bench_sustained.py",
    ),
    "sustained.stop_p90_ms": Goal(
        "Stop of the newest of 4 sessions x 2,000 tokens/s → canceled shown, p90",
        "ms",
        10,
        "<=",
        "bench_sustained.py",
    ),
    "view.prose_bytes_per_char": Goal(
        "iopub bytes per answer character, delta view, ~10 KB of prose",
        "B/char",
        3,
        "<=",
        "bench_view.py",
    ),
    "view.block100_bytes_per_char": Goal(
        "iopub bytes per answer character, delta view, a 100-line code block",
        "B/char",
        3,
        "<=",
        "bench_view.py",
    ),
    "view.block1600_bytes_per_char": Goal(
        "iopub bytes per answer character, delta view, a 1,600-line code block",
        "B/char",
        3,
        "<=",
        "bench_view.py",
    ),
    "browser.long_tasks_over_50ms": Goal(
        "JupyterLab main-thread tasks over 50 ms while a 100 KB answer streams at 500 "
        "tokens/s, delta view",
        "tasks",
        0,
        "<=",
        "bench_view_browser.py",
    ),
    "browser.stop_paint_ms": Goal(
        "Stop click → “Stopping…” painted in JupyterLab, delta view, median",
        "ms",
        50,
        "<=",
        "bench_view_browser.py",
    ),
    "browser.first_token_paint_ms": Goal(
        "First token: kernel received it → painted, view already up, delta view, median",
        "ms",
        50,
        "<=",
        "bench_view_browser.py",
    ),
    "browser.first_token_racing_ms": Goal(
        "First token: kernel received it → painted, racing the view's creation, delta view, median",
        "ms",
        50,
        "<=",
        "bench_view_browser.py",
    ),
    "undo.snapshot_untouched_ms": Goal(
        "Undo's snapshot before a python call that leaves a 1 GB DataFrame alone",
        "ms",
        5,
        "<=",
        "bench_undo.py",
    ),
    "notebook.tool_ms": Goal(
        "The notebook tool's answer for a 200-cell notebook, median",
        "ms",
        20,
        "<=",
        "bench_notebook.py",
    ),
    "notebook.fix_added_ms": Goal(
        "What %crush fix adds before the first model request, 200-cell notebook (medians)",
        "ms",
        20,
        "<=",
        "bench_notebook.py",
    ),
    "rerun.replay_requests": Goal(
        "Provider requests of a Run All that replays 10 agent cells",
        "requests",
        0,
        "<=",
        "bench_rerun.py",
    ),
    "rerun.replay_cells_s": Goal(
        "The 10 agent cells of a replaying Run All, in all", "s", 1, "<=", "bench_rerun.py"
    ),
    "rerun.first_cell_added_s": Goal(
        "Run All's first replayed cell in a fresh kernel, beyond the other cells' median",
        "s",
        1,
        "<=",
        "bench_rerun.py",
    ),
    "faults.full_disk_cpu_percent": Goal(
        "The store's CPU while the disk stays full for 10 minutes and a reply streams",
        "%",
        1,
        "<=",
        "bench_faults.py",
    ),
    "faults.full_disk_pending_timers": Goal(
        "Store retry timers pending at once while the disk stays full",
        "timers",
        1,
        "<=",
        "bench_faults.py",
    ),
}


def number(value: float) -> str:
    """A value as the table and the README show it: integers plainly, others to 3 figures."""
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) >= 0.001 else f"{value:.2e}"


def goal_of(goal_id: str) -> Goal:
    goal = GOALS.get(goal_id)
    if goal is None:
        raise ValueError(f"unknown goal id {goal_id!r}: register it in benchmarks/goals.py GOALS")
    return goal


def measured(goal_id: str, value: float, note: str = "") -> bool:
    """Print the measured value against its goal and record it; returns whether it is met."""
    goal = goal_of(goal_id)
    met = goal.met(value)
    suffix = f" [{note}]" if note else ""
    print(
        f"goal {goal_id}: {number(value)} {goal.unit} (goal {goal.comparison} "
        f"{number(goal.limit)}) {'met' if met else 'NOT met'}{suffix}",
        flush=True,
    )
    results = os.environ.get(RESULTS_ENV)
    if results:
        record = {"goal": goal_id, "value": value, "met": met, "note": note}
        with open(results, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
    return met


def readme_rows() -> list[str]:
    """The README's "Performance goals" table, one line per goal (header included)."""
    rows = ["| id | goal | limit | benchmark |", "| --- | --- | --- | --- |"]
    for goal_id, goal in GOALS.items():
        rows.append(f"| `{goal_id}` | {goal.text} | {goal.limit_text()} | `{goal.benchmark}` |")
    return rows


def read_results(path: Path) -> tuple[dict[str, list[dict]], list[dict]]:
    """Measurements by goal id, and the benchmark runs run_all.sh recorded, from a results file."""
    measurements: dict[str, list[dict]] = {}
    runs: list[dict] = []
    for number_, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise SystemExit(f"{path}:{number_}: not a JSON line ({error.msg})") from None
        if "goal" in record:
            if record["goal"] not in GOALS:
                raise SystemExit(f"{path}:{number_}: unknown goal id {record['goal']!r}")
            measurements.setdefault(record["goal"], []).append(record)
        elif "benchmark" in record:
            runs.append(record)
    return measurements, runs


def table(path: Path) -> int:
    """Print every goal beside its measured values; 1 when a recorded benchmark failed."""
    measurements, runs = read_results(path)
    failed = {run["benchmark"] for run in runs if run.get("exit") != 0}
    ran = {run["benchmark"] for run in runs} - failed
    id_width = max(map(len, GOALS))
    limit_width = max(len(goal.limit_text()) for goal in GOALS.values())
    print(f"{'goal':{id_width}}  {'limit':>{limit_width}}  measured")
    for goal_id, goal in GOALS.items():
        head = f"{goal_id:{id_width}}  {goal.limit_text():>{limit_width}}  "
        found = measurements.get(goal_id)
        if not found:
            why = ""
            if goal.benchmark in failed:
                why = f" ({goal.benchmark} failed)"
            elif goal.benchmark in ran:
                why = f" ({goal.benchmark} ran without measuring it)"
            print(f"{head}not measured{why}")
            continue
        for record in found:
            note = f" [{record['note']}]" if record.get("note") else ""
            verdict = "met" if goal.met(record["value"]) else "NOT met"
            print(f"{head}{number(record['value'])} {goal.unit} {verdict}{note}")
            head = " " * len(head)
    if runs:
        print("\nbenchmark runs:")
        for run in runs:
            status = "ok" if run.get("exit") == 0 else f"FAILED (exit {run.get('exit')})"
            print(f"  {run['benchmark']:24} {run.get('seconds', 0):7.1f} s  {status}")
        print(f"  {'total':24} {sum(run.get('seconds', 0) for run in runs):7.1f} s")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--table", type=Path, metavar="FILE", help="a results file to show")
    action.add_argument("--readme", action="store_true", help="print the README's goal table")
    args = parser.parse_args()
    if args.readme:
        print("\n".join(readme_rows()))
        return 0
    if not args.table.is_file():
        parser.error(f"no results file at {args.table}: run benchmarks/run_all.sh to make one")
    return table(args.table)


if __name__ == "__main__":
    sys.exit(main())
