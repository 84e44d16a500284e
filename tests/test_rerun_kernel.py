"""Reproducible Run All in real kernels: a notebook with %%crush cells runs headless under
nbclient against the official OpenAI SDK and a local server that counts requests. Run again
unchanged it asks nothing and shows the same; a changed interpolated DataFrame re-asks that
cell and the later ones of its session; strict mode fails naming the cell; two kernels
replay from one store; the offline demo's weather turn replays its recorded tool call."""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from support.kernel_harness import Kernel, kernel_env, kernel_manager
from support.openai_chunks import openai_step
from support.replay_server import serving

pytestmark = pytest.mark.slow

STOCK = 'stock = pd.DataFrame({"city": ["Lyon", "Nice", "Brest"], "stock": [5, 0, 7]})'
CELLS = [
    '%load_ext jupyter_crush\n%config CrushConfig.allowed_tools = ["python"]\nimport pandas as pd',
    'prices = pd.DataFrame({"city": ["Lyon", "Nice", "Brest"], "price": [3.5, 4.0, 2.5]})',
    "%%crush -s stock\nMake a DataFrame `stock` of three cities with their stock",
    'print(stock.merge(prices).assign(value=lambda d: d.stock * d.price).to_dict("list"))',
    "%%crush -s stock\nWhich city is cheapest in {prices}?",
    "%%crush -s stock\nSummarise what we know in one line.",
]
#: What the model answers on a first run: 2 requests for the python cell, 1 for each other.
FIRST_RUN = [
    openai_step(1, tool=("python", {"code": f"{STOCK}\nprint(stock.shape)"})),
    openai_step(2, "Made `stock`: 3 cities."),
    openai_step(3, "Brest is the cheapest, at 2.5."),
    openai_step(4, "Three cities; Brest is cheapest and Nice is out of stock."),
]
#: After `prices` changed: the cheapest-city cell and the one after it ask again.
CHANGED_RUN = [
    openai_step(5, "Nice is the cheapest now, at 1.0."),
    openai_step(6, "Three cities; Nice is cheapest and out of stock."),
]


def notebook(prices_change: str = "") -> nbformat.NotebookNode:
    cells = list(CELLS)
    if prices_change:
        cells[1] += f"\n{prices_change}"
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])


def run_headless(nb, folder: Path, server, strict: bool = False) -> nbformat.NotebookNode:
    """Run ``nb`` as if saved in ``folder``: its store is ``folder/.crush``, the default."""
    nb = copy.deepcopy(nb)
    if strict:
        nb.cells[0].source += '\n%config CrushConfig.replay = "strict"'
    base_url = f"{server.url}/v1"
    env = kernel_env(folder / ".crush", OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=base_url)
    del env["CRUSH_DATA_DIR"]  # the store beside the notebook, as a user gets it
    client = NotebookClient(
        nb,
        km=kernel_manager(folder / "specs"),
        timeout=60,
        resources={"metadata": {"path": str(folder)}},
    )
    client.execute(env=env)
    return nb


def answers(nb) -> list[str]:
    """Each %%crush cell's answer as shown (the markdown under its status line)."""
    shown = []
    for cell in nb.cells:
        if cell.source.startswith("%%crush"):
            (output,) = [o for o in cell.outputs if "text/markdown" in o.get("data", {})]
            shown.append(output["data"]["text/markdown"].split("\n\n", 1)[1])
    return shown


def statuses(nb) -> list[str]:
    return [
        o["data"]["text/markdown"].split("\n\n", 1)[0]
        for c in nb.cells
        if c.source.startswith("%%crush")
        for o in c.outputs
        if "text/markdown" in o.get("data", {})
    ]


def plain_outputs(nb) -> list[list[dict]]:
    return [c.outputs for c in nb.cells if not c.source.startswith("%%crush")]


def test_run_all_replays_unchanged_cells_and_reasks_only_what_changed(tmp_path):
    steps = FIRST_RUN + CHANGED_RUN
    with serving(steps) as server:
        first = run_headless(notebook(), tmp_path, server)
        assert len(server.requests) == 4
        assert (tmp_path / ".crush").is_dir()  # the notebook's own store

        second = run_headless(notebook(), tmp_path, server)
        assert len(server.requests) == 4  # nothing asked
        assert answers(second) == answers(first)
        assert plain_outputs(second) == plain_outputs(first)  # `stock` is back, the same
        assert "'value': [17.5, 0.0, 17.5]" in plain_outputs(second)[2][0]["text"]
        assert all("replayed from" in s and "0 tokens · $0" in s for s in statuses(second))

        changed = run_headless(notebook('prices.loc[1, "price"] = 1.0'), tmp_path, server)
        assert len(server.requests) == 6  # the cheapest-city cell and the one after it
        make, cheapest, summary = statuses(changed)
        assert "replayed from" in make
        assert "prices changed since the recorded answer" in cheapest
        assert "an earlier turn of the session changed" in summary
        assert answers(changed) == [
            answers(first)[0],
            "Nice is the cheapest now, at 1.0.",
            "Three cities; Nice is cheapest and out of stock.",
        ]
        asked = server.requests[4].json()["messages"][-1]["content"]
        assert "1.0" in asked and "4.0" not in asked  # the new prices were sent

        # Strict: the same change again (another value) fails the run, naming the cell.
        with pytest.raises(CellExecutionError) as failed:
            run_headless(notebook('prices.loc[1, "price"] = 0.5'), tmp_path, server, strict=True)
        message = str(failed.value)
        assert "Replay is strict and cell [5] “Which city is cheapest in {prices}?”" in message
        assert "prices changed" in message
        assert len(server.requests) == 6
        # Strict with nothing changed replays everything.
        run_headless(notebook(), tmp_path, server, strict=True)
        assert len(server.requests) == 6


def test_two_kernels_replay_from_one_store(tmp_path):
    with serving(FIRST_RUN[2:3]) as server:
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{server.url}/v1"}
        kernels = [Kernel(tmp_path, env=env) for _ in range(2)]
        try:
            setup = f"{CELLS[0]}\n{CELLS[1]}\nfrom jupyter_crush.magics import current"
            for k in kernels:
                k.run(setup)
            ask = "%%crush --wait -s stock\nWhich city is cheapest in {prices}?"
            kernels[0].run(ask)
            shown = []
            for k in kernels:  # the first kernel again in a new chain, and the other kernel
                k.run("from jupyter_crush.kernel.rerun import Rerun; current().rerun = Rerun()")
                k.run(ask)
                view = "current().last_view"
                shown.append(k.value(f"[{view}.answer_markdown, {view}.status_text()]"))
        finally:
            for k in kernels:
                k.shutdown()
    assert len(server.requests) == 1
    for answer, status in shown:
        assert answer == "Brest is the cheapest, at 2.5."
        assert "replayed from" in status


def test_the_offline_demos_weather_turn_replays_in_a_fresh_kernel(tmp_path):
    # No key: replay:auto answers with the recording of this prompt, whose weather tool is
    # itself a recording. A fresh kernel on the same store replays the turn, the weather
    # call answered from its record.
    ask = "%%crush --wait -s weather\nWhat's the weather in Florence, Italy?"
    view = "current().last_view"
    shown = []
    for _ in range(2):
        kernel = Kernel(tmp_path)
        try:
            kernel.run("%load_ext jupyter_crush\nfrom jupyter_crush.magics import current")
            kernel.run(ask, timeout=60)
            shown.append(
                kernel.value(f"[{view}.phase, {view}.answer_markdown, {view}.status_text()]")
            )
            kernel.run("messages = current().store.list_messages(current().current_session_id)")
            results = "[m.tool_results[0].metadata for m in messages if m.tool_results]"
            replays = [r.get("replay") for r in kernel.value(results)]
        finally:
            kernel.shutdown()
    (asked_phase, asked, asked_status), (phase, answer, status) = shown
    assert asked_phase == "done" and "replaying a recorded answer to" in asked_status
    assert phase == "done" and answer == asked and "Florence" in answer
    assert "replayed from" in status and "0 tokens · $0" in status
    assert "recorded result used, not run again: weather" in status
    assert replays == [None, {"from_record": True, "not_run": True}]
