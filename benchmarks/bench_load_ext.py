"""``%load_ext jupyter_crush`` in fresh kernels (goal: <= 50 ms, and no provider SDK imported).

    .venv/bin/python benchmarks/bench_load_ext.py [--runs N] [--quick] [TREE ...]

Each TREE is a directory holding a ``jupyter_crush`` package (default: this checkout), e.g.
an older commit unpacked with ``git archive COMMIT jupyter_crush | tar -x -C /tmp/before``;
the trees take turns, one fresh kernel per load, so a before/after comparison shares the
machine's load. Printed per tree: the load's median and spread, the jupyter_crush modules it
imported, and whether a provider SDK came along. The machine is shared: compare within one
run; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from goals import measured
from support.kernel_harness import Kernel

ROOT = Path(__file__).resolve().parent.parent

MEASURE = """\
import json, sys, time
before = set(sys.modules)
t = time.perf_counter()
get_ipython().run_line_magic('load_ext', 'jupyter_crush')
seconds = time.perf_counter() - t
import jupyter_crush
print(json.dumps({
    "seconds": seconds,
    "package": jupyter_crush.__file__,
    "crush_modules": sum(m.startswith("jupyter_crush") for m in set(sys.modules) - before),
    "sdk": [m for m in ("openai", "anthropic") if m in sys.modules],
}))
"""


def load_once(tree: Path) -> dict:
    with tempfile.TemporaryDirectory() as data:
        kernel = Kernel(data, env={"PYTHONPATH": str(tree)})
        try:
            result = json.loads(kernel.run(MEASURE).strip().splitlines()[-1])
        finally:
            kernel.shutdown()
    if not Path(result["package"]).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the kernel imported {result['package']}, not the one in {tree}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", type=Path, default=[ROOT])
    parser.add_argument("--runs", type=int, help="loads per tree (default 9; --quick: 3)")
    parser.add_argument("--quick", action="store_true", help="3 loads per tree")
    args = parser.parse_args()
    args.runs = args.runs or (3 if args.quick else 9)
    results: dict[Path, list[dict]] = {tree: [] for tree in args.trees}
    for _ in range(args.runs):
        for tree in args.trees:
            results[tree].append(load_once(tree))
    for tree, runs in results.items():
        ms = sorted(r["seconds"] * 1000 for r in runs)
        sdk = sorted({name for r in runs for name in r["sdk"]})
        print(f"{tree}: %load_ext jupyter_crush, n={len(ms)}")
        print(f"   median={statistics.median(ms):.1f} ms min={ms[0]:.1f} ms max={ms[-1]:.1f} ms")
        print(f"   jupyter_crush modules imported: {runs[0]['crush_modules']}")
        print(f"   provider SDK imported: {', '.join(sdk) or 'none'}")
        note = "" if tree.resolve() == ROOT else str(tree)
        measured("load_ext.median_ms", statistics.median(ms), note)
        measured("load_ext.sdk_imported", sum(bool(r["sdk"]) for r in runs), note)


if __name__ == "__main__":
    main()
