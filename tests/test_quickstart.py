"""``bash scripts/quickstart.sh``, as a new user runs it (the venv already set up).

Headless: the executed quickstart is checked cell by cell — every offline answer is the
recording of the prompt the cell shows, and its status line names that prompt — and the
terminal summary shows each step. ``--lab``: JupyterLab answers on 127.0.0.1 with the
quickstart, and Ctrl+C (SIGINT) stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest
from support.kernel_harness import ROOT, kernel_env

from jupyter_crush import SessionAgent, SessionAgentCall, TranscriptStore
from jupyter_crush.core.message import Role
from jupyter_crush.kernel.interpolate import interpolate
from jupyter_crush.providers import ProviderSettings, resolve_model
from jupyter_crush.providers.replay import for_prompt, same_prompt

pytestmark = pytest.mark.slow

#: The notebook values its prompts use ({a} and {b}).
NOTEBOOK_VALUES = {"a": 2, "b": 3}
STATUS = re.compile(
    r"^\[crush\] session .+? · replay:(?P<name>[\w-]+) · replaying a recorded answer to"
    r"(?P<other> a different prompt)?: “(?P<prompt>.+?)” · (?P<state>[^·]+)"
)


def quickstart(*args: str, tmp_path: Path, **popen: object) -> subprocess.Popen[str]:
    env = kernel_env(tmp_path / "store")
    del env["PYTHONPATH"]  # the script's own venv Python must find the package by itself
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
    )
    return subprocess.Popen(
        ["bash", "scripts/quickstart.sh", "--no-setup", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **popen,
    )


def recorded_answer(prompt: str, tmp_path: Path) -> tuple[str, str, str]:
    """(recording name, answer text, reasoning) the offline model gives ``prompt``."""
    auto = resolve_model("replay:auto", settings=ProviderSettings(replay_delay=0))
    model, _ = for_prompt(auto, prompt)

    async def run() -> list:
        with TranscriptStore(tmp_path / f"expected-{model.name}") as store:
            session = store.create_session("expected")
            await SessionAgent(model, store).run(SessionAgentCall(session.id, prompt))
            return store.list_messages(session.id)

    messages = [m for m in asyncio.run(run()) if m.role is Role.ASSISTANT]
    answer = "\n\n".join(m.text for m in messages if m.text)
    return model.name, answer, "".join(m.reasoning for m in messages)


def test_quickstart_answers_each_prompt_with_its_recording(tmp_path: Path):
    out = tmp_path / "quickstart.out.ipynb"
    process = quickstart(str(out), tmp_path=tmp_path)
    summary, _ = process.communicate(timeout=300)
    assert process.returncode == 0, summary
    nb = nbformat.read(out, as_version=4)

    # Cell by cell: each %%crush cell shows the status line of a replay of its own prompt,
    # and the answer under it is that recording's answer, whole unless the cell stopped it.
    checked = []
    for cell in nb.cells:
        if cell.cell_type != "code" or not cell.source.startswith("%%crush"):
            continue
        prompt = interpolate(cell.source.split("\n", 1)[1], NOTEBOOK_VALUES)
        [output] = [o for o in cell.outputs if "[crush]" in o.get("data", {}).get("text/plain", "")]
        status, _, shown = output["data"]["text/plain"].partition("\n\n")
        match = STATUS.match(status)
        assert match, status
        assert not match["other"] and match["prompt"] == prompt, status
        name, answer, reasoning = recorded_answer(prompt, tmp_path)
        assert match["name"] == name
        if match["state"].strip() == "canceled":
            assert answer.startswith(shown) and reasoning  # what streamed before the stop
        else:
            assert match["state"].strip() == "done" and shown == answer, (shown, answer)
        checked.append((prompt, match["state"].strip()))
    assert [p for p, _ in checked] == [
        "Say hi in Portuguese",
        "Add and multiply the number 2 and 3",
        "What's the weather in Florence, Italy?",
        "Say hi in Portuguese",
        "Add and multiply the number 2 and 3",
    ]
    assert [s for _, s in checked].count("canceled") == 1

    code = [c for c in nb.cells if c.cell_type == "code"]

    def printed(first_line: str) -> str:
        cell = next(c for c in code if c.source.startswith(first_line))
        return "".join(o.get("text", "") for o in cell.outputs)

    # Stop: the canceled turn keeps the reasoning that had streamed, in the store too.
    kept = printed("await view.wait()").split("Kept: ", 1)[1].strip()
    _, _, reasoning = recorded_answer("What's the weather in Florence, Italy?", tmp_path)
    assert kept and reasoning.startswith(kept)
    # The queue: the second prompt waited behind the first, then ran.
    queue = printed("second = current().last_view")
    assert "running, 1 queued behind" in queue and "queued (position 1)" in queue
    assert "· done ·" in queue.rstrip().splitlines()[-1]
    # The transcript as a DataFrame and from a terminal.
    table = next(c for c in code if "crush.history()" in c.source).outputs[0]
    assert "text/html" in table["data"] and "canceled" in table["data"]["text/plain"]
    log = printed("!{sys.executable} -m jupyter_crush log weather")
    assert "What's the weather in Florence, Italy?" in log and "canceled" in log

    # Nowhere in the store is an answer recorded under a prompt it did not answer.
    with TranscriptStore(tmp_path / "store") as store:
        for session in store.list_sessions():
            prompt = ""
            for message in store.list_messages(session.id):
                if message.role is Role.USER:
                    prompt = message.text
                elif message.role is Role.ASSISTANT:
                    recorded = resolve_model(f"replay:{message.model}").recording.prompt
                    assert same_prompt(prompt, recorded), (prompt, message.model)

    # The terminal summary: the model, each step with what it showed, and where to look.
    assert summary.startswith("Model: replay:auto, offline"), summary
    for heading in ("Ask", "Stop it", "Queue prompts", "The transcript as a DataFrame"):
        assert f"\n== {heading}\n" in summary
    assert "replaying a recorded answer to: “Say hi in" in summary
    assert "Kept: The user is asking" in summary
    assert "SESSION" in summary and "TITLE" in summary  # python -m jupyter_crush log
    assert f"Executed notebook: {out}" in summary
    assert "3 sessions, 14 messages, 1 canceled turn(s)" in summary
    assert "bash scripts/quickstart.sh --lab" in summary


def test_lab_serves_the_quickstart_and_stops_on_ctrl_c(tmp_path: Path):
    # Its own process group, as a terminal runs it: Ctrl+C signals the whole group.
    process = quickstart("--lab", "--no-browser", tmp_path=tmp_path, start_new_session=True)
    try:
        url = None
        for line in process.stdout:
            found = re.search(
                r"(http://127\.0\.0\.1:\d+)/lab/tree/quickstart\.ipynb\?token=(\w+)", line
            )
            if found:
                url, token = found.groups()
                break
        assert url, "no URL printed"
        status = wait_for(f"{url}/api/status?token={token}")
        assert "started" in status
        contents = wait_for(f"{url}/api/contents/quickstart.ipynb?content=0&token={token}")
        assert contents["name"] == "quickstart.ipynb"
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0, rest
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"{url}/api/status", timeout=2)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for(url: str) -> dict:
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.load(response)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)
