"""What ``%crush verify`` adds over ``jupyter nbconvert --execute`` of the same notebook.

The notebook (30 code cells: pandas work, prints, a small figure) is saved with its outputs;
each round times, for the same file:

- ``jupyter nbconvert --to notebook --execute`` in a subprocess (the stock way to check a
  notebook runs top to bottom; it writes a copy);
- ``%crush verify --wait`` in a user kernel of that notebook (a fresh kernel, the cells run
  with nbclient, the outputs compared, the hidden names read), timed around the cell;
- the same verify run in this process (``VerifyRun.run``), without the user's kernel;
- nbclient's own ``NotebookClient.execute`` in this process (what nbconvert does once its
  imports are done): the part of either that is running the cells.

Both start one kernel of the same throwaway kernelspec (this Python). Printed: each round's
times and the median of the difference.

    .venv/bin/python benchmarks/bench_verify.py [--rounds 3] [--cells 30] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import nbformat
from nbclient import NotebookClient
from support.kernel_harness import KERNEL_NAME, Kernel, kernel_env, kernel_manager

from jupyter_crush.notebook.verify import NotebookToVerify, VerifyRun


def notebook(cells: int) -> nbformat.NotebookNode:
    source = [
        "import pandas as pd\nimport numpy as np",
        'sales = pd.DataFrame({"city": ["Lyon", "Nice", "Brest"] * 200, "n": range(600)})',
        "%matplotlib inline\nimport matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots(figsize=(3, 2))\nax.plot([1, 2, 3]);",
    ]
    for i in range(cells - len(source)):
        source.append(
            f"step_{i} = sales.groupby('city').n.sum() * {i + 1}\nprint(step_{i}.to_dict())"
        )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in source])
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "t", "language": "python"}
    return nb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="rounds (3; --quick: 1)")
    parser.add_argument("--cells", type=int, help="code cells (30; --quick: 10)")
    parser.add_argument("--quick", action="store_true", help="one round of 10 cells")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.cells = args.cells or (10 if args.quick else 30)
    folder = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    specs = folder / "specs"
    kernel_manager(specs)
    os.environ["JUPYTER_PATH"] = str(specs)
    env = kernel_env(folder / ".crush", JUPYTER_PATH=str(specs))
    path = folder / "nb.ipynb"
    nb = notebook(args.cells)
    NotebookClient(nb, km=kernel_manager(specs), timeout=120).execute(env=env, cwd=str(folder))
    nbformat.write(nb, path)  # saved with its outputs, as a user has it

    user = Kernel(folder, env={"JPY_SESSION_NAME": str(path), "JUPYTER_PATH": str(specs)})
    user.run("%load_ext jupyter_crush")
    rows = []
    try:
        for round_ in range(args.rounds):
            start = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "jupyter",
                    "nbconvert",
                    "--to",
                    "notebook",
                    "--execute",
                    str(path),
                    "--output",
                    str(folder / "executed.ipynb"),
                ],
                env=env,
                check=True,
                capture_output=True,
            )
            nbconvert = time.perf_counter() - start

            start = time.perf_counter()
            user.run("%crush verify --wait", timeout=600)
            magic = time.perf_counter() - start

            cells = nbformat.read(path, as_version=4).cells
            run = VerifyRun(
                NotebookToVerify(cells, folder, str(path), "file on disk", KERNEL_NAME), env=env
            )
            start = time.perf_counter()
            report = asyncio.run(run.run())
            engine = time.perf_counter() - start
            assert report.ok, report.to_text()

            start = time.perf_counter()
            copy = nbformat.read(path, as_version=4)
            NotebookClient(copy, km=kernel_manager(specs), timeout=120).execute(
                env=env, cwd=str(folder)
            )
            bare = time.perf_counter() - start
            rows.append((nbconvert, magic, engine, bare))
            print(
                f"round {round_ + 1}: nbconvert --execute {nbconvert:.2f} s · "
                f"%crush verify --wait {magic:.2f} s ({magic - nbconvert:+.2f} s) · "
                f"VerifyRun alone {engine:.2f} s · nbclient alone {bare:.2f} s"
            )
    finally:
        user.shutdown()
    added = statistics.median(m - n for n, m, _, _ in rows)
    base = statistics.median(n for n, _, _, _ in rows)
    over_nbclient = statistics.median(e - b for _, _, e, b in rows)
    print(
        f"{args.cells} code cells, median of {args.rounds}: nbconvert --execute {base:.2f} s; "
        f"%crush verify --wait {added:+.2f} s against it ({added / base:+.0%}); VerifyRun "
        f"against nbclient's own execute {over_nbclient:+.2f} s; "
        f"load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
