"""What undo's snapshot costs before a ``python`` call, on a namespace holding a 1 GB DataFrame.

    .venv/bin/python benchmarks/bench_undo.py [--quick]

- the code does not touch the frame (goal: at most 5 ms): the syntax tree is read and only
  the names it can touch are looked at;
- the code touches it (``big.loc[0, "c0"] = -1``): with the default 100 MB copy limit the
  frame is measured (``memory_usage(deep=False)``) and named as not kept; with the limit
  raised past it, the copy undo keeps (a shallow copy where pandas copies on write, else a
  deep one) and the copy pandas then makes when the code writes to the frame, next to a
  deep copy of the same frame;
- undo of the touched frame (put back in place) with the limit raised.

``--quick`` uses a 250 MB frame (still over the copy limit) and fewer repetitions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
from goals import measured

from jupyter_crush.kernel.snapshot import _copies_on_write
from jupyter_crush.kernel.undo import TurnLog, UndoReport, undo_names

GB = 1_000_000_000
DEFAULT_LIMIT = 100 * 2**20
UNTOUCHED = "import math\nresult = math.sqrt(2) * 10\nrows = [r for r in range(100)]\nprint(result)"
TOUCHED = 'big.loc[0, "c0"] = -1\nprint(big.shape)'


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def frame_of(size: int) -> pd.DataFrame:
    columns = 50
    rows = size // (8 * columns)
    return pd.DataFrame(np.ones((rows, columns)), columns=[f"c{n}" for n in range(columns)])


def snapshot_time(namespace: dict, code: str, limit: int, repeat: int) -> tuple[float, TurnLog]:
    times = []
    log = TurnLog("bench", "prompt", lambda: limit)
    for _ in range(repeat):
        log = TurnLog("bench", "prompt", lambda: limit)
        start = time.perf_counter()
        log.before_code(namespace, code)
        times.append(time.perf_counter() - start)
    return statistics.median(times), log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 250 MB frame, fewer repetitions")
    quick = parser.parse_args().quick
    repeats = 0.2 if quick else 1
    big = frame_of(GB // 4 if quick else GB)
    size = big.memory_usage(deep=False).sum()
    namespace = {"big": big, "pd": pd, "np": np, "small": list(range(1000))}
    for n in range(200):  # a notebook's worth of other names
        namespace[f"v{n}"] = n
    print(
        f"pandas {pd.__version__} (copy on write: {_copies_on_write(pd)}), frame "
        f"{size / GB:.2f} GB, {len(namespace)} names in the namespace"
    )

    untouched, _ = snapshot_time(namespace, UNTOUCHED, DEFAULT_LIMIT, int(50 * repeats))
    print(f"snapshot, code not touching the frame:          {ms(untouched)}")
    measured("undo.snapshot_untouched_ms", untouched * 1000, "250 MB frame" if quick else "")

    touched, log = snapshot_time(namespace, TOUCHED, DEFAULT_LIMIT, int(20 * repeats))
    print(
        f"snapshot, code touching it, 100 MB limit:       {ms(touched)} "
        f"({log.names['big'].not_kept})"
    )

    raised, log = snapshot_time(namespace, TOUCHED, 4 * GB, 2 if quick else 5)
    print(f"snapshot, code touching it, limit raised:       {ms(raised)} (the copy undo keeps)")
    start = time.perf_counter()
    exec(TOUCHED.replace("print(big.shape)", ""), {}, namespace)
    print(
        f"the code's write to the frame after the copy:   {ms(time.perf_counter() - start)} "
        "(pandas copies on write only what the code writes to)"
    )
    start = time.perf_counter()
    report = UndoReport("bench", "prompt")
    undo_names(log, namespace, report)
    print(
        f"undo of the frame, put back in place:           {ms(time.perf_counter() - start)} "
        f"(in place: {report.in_place})"
    )
    assert namespace["big"] is big and big.loc[0, "c0"] == 1.0

    start = time.perf_counter()
    big.copy(deep=True)
    print(f"for comparison, a deep copy of the frame:       {ms(time.perf_counter() - start)}")


if __name__ == "__main__":
    main()
