"""The notebooks run headless under nbclient, offline: the DataFrame tools walkthrough and
the fix-and-plots example with a scripted model (the quickstart runs through its script, in
test_quickstart.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from support.kernel_harness import ROOT, kernel_env, kernel_manager

pytestmark = pytest.mark.slow

NOTEBOOKS = ROOT / "notebooks"


def cell_output(nb, first_line: str) -> list[dict]:
    """The outputs of the first code cell starting with ``first_line``."""
    return next(
        c.outputs for c in nb.cells if c.cell_type == "code" and c.source.startswith(first_line)
    )


def text_of(outputs: list[dict]) -> str:
    parts = []
    for output in outputs:
        if output["output_type"] == "stream":
            parts.append(output["text"])
        else:
            data = output.get("data", {})
            parts.append(data.get("text/markdown") or data.get("text/plain", ""))
    return "\n".join(parts)


def execute(name: str, tmp_path: Path, edit: Callable[[Any], None] | None = None):
    """Run notebooks/``name`` headless in a fresh kernel (after ``edit``, if given); fail on
    any error output but those of cells tagged ``raises-exception`` (which nbclient runs
    past)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    if edit is not None:
        edit(nb)
    client = NotebookClient(
        nb,
        km=kernel_manager(tmp_path / "specs"),
        timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=kernel_env(tmp_path / ".crush"))
    errors = [
        o
        for c in nb.cells
        if "raises-exception" not in c.metadata.get("tags", ())
        for o in c.get("outputs", ())
        if o["output_type"] == "error"
    ]
    assert not errors, errors
    return nb


def test_dataframe_tools_walkthrough_executes_headless(tmp_path: Path):
    nb = execute("dataframe-tools.ipynb", tmp_path)
    answer = text_of(cell_output(nb, "%%crush --new -s prices"))
    assert "· done ·" in answer and "two in Lyon" in answer

    # The real tools ran on the real DataFrame, and the transcript keeps their results.
    transcript = text_of(cell_output(nb, "for message in crush.store.list_messages"))
    assert "price: float64, 3 null" in transcript  # variables described `sales`
    assert "Lyon    2" in transcript and "Nice    1" in transcript  # python counted

    # Once python is no longer allowed, the headless run denies it: `sales` survives.
    denied = text_of(cell_output(nb, "last = crush.store.list_messages"))
    assert "canceled - Permission denied for python: " in denied
    assert "sales is still here: True" in denied


def test_fix_and_plots_executes_headless(tmp_path: Path):
    nb = execute("fix-and-plots.ipynb", tmp_path)
    failing = cell_output(nb, 'weekly = weather.groupby("city")["temperature"]')
    assert failing[0]["ename"] == "KeyError"

    # %crush fix sent the real error and the agent read the notebook before answering.
    fix = text_of(cell_output(nb, "%crush fix -f code"))
    assert "· done ·" in fix and "temp_c" in fix
    received = text_of(cell_output(nb, "first, second = model.requests"))
    assert "Exception: KeyError: 'Column not found: temperature'" in received
    assert 'weekly = weather.groupby("city")["temperature"].rolling(7).mean()' in received
    assert "keep the 7-day window" in received
    sizes = {line.split()[0]: line for line in received.splitlines() if "chars" in line}
    assert set(sizes) == {"system", "prompt", "notebook"}

    context = text_of(cell_output(nb, "%crush context"))
    assert context.startswith("Model: scripted:scripted-model\nSession: ")
    assert "Attachments: none (%crush fix would attach \"KeyError: 'Column not found" in context

    # The corrected cell runs on the generated data.
    fixed = text_of(cell_output(nb, 'weekly = weather.groupby("city")["temp_c"]'))
    assert "Brest" in fixed and "Lyon" in fixed

    # The figure named in the prompt went to the model as an image, not as text.
    plot = text_of(cell_output(nb, "%%crush\nWhich city is warmer in {fig}"))
    assert "· done ·" in plot
    carried = text_of(cell_output(nb, "asked = model.requests[-1]"))
    assert carried.startswith("{fig}: image/png, ")
    assert "Which city is warmer in [image {fig}: " in carried


def test_rerun_replays_a_run_all_then_reasks_the_changed_cell(tmp_path: Path):
    first = execute("rerun.ipynb", tmp_path)
    assert "model requests this run: 4" in text_of(cell_output(first, 'print("model requests'))

    # Run All again in a new kernel over the same store: nothing asked, the same outputs.
    second = execute("rerun.ipynb", tmp_path)
    kept = text_of(cell_output(second, 'print("model requests'))
    assert "model requests this run: 0" in kept
    assert "stock: replay: 'Make a DataFrame" in kept
    made = "# `stock` was made"
    assert cell_output(second, made) == cell_output(first, made)
    assert "Brest" in text_of(cell_output(second, "%%crush -s prices"))
    assert "replayed from" in text_of(cell_output(second, "%%crush -s stock"))

    # A changed price: the cell reading {prices} asks again; the other one still replays.
    def cheaper_nice(nb) -> None:
        cell = next(c for c in nb.cells if c.source.startswith("prices = "))
        cell.source += '\nprices.loc[1, "price"] = 1.0'

    third = execute("rerun.ipynb", tmp_path, cheaper_nice)
    assert "model requests this run: 2" in text_of(cell_output(third, 'print("model requests'))
    cheapest = text_of(cell_output(third, "%%crush -s prices"))
    assert "prices changed since the recorded answer" in cheapest and "Nice" in cheapest
    assert "replayed from" in text_of(cell_output(third, "%%crush -s stock"))
