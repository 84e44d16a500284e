"""Folder trust in a real kernel, with two local OpenAI-compatible servers: the user's (their
environment names it, with their key) and a folder's (its crush.json names it). Until the
folder's file is trusted its server gets nothing and its MCP command does not run; after
``%crush trust`` both apply; one changed byte untrusts the file. A secrets scan follows every
request the kernel makes — prompts, titles, summaries — and what a folder's MCP server is
given in its environment."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.kernel_harness import ROOT, SETUP, Kernel
from support.replay_server import ReplayServer, recording_steps, serving
from test_kernel import wait_view

pytestmark = pytest.mark.slow

KEY = "sk-user-key-4c8e2a6f0b1d"
RECORDING = (
    ROOT / "jupyter_crush" / "recordings" / "OpenAICommon--openai-gpt-4o--simple_streaming.yaml"
)


def answering() -> Iterator[ReplayServer]:
    # Every request gets the recorded answer ("Olá!"): prompts, titles and summaries alike.
    with serving(recording_steps(RECORDING) * 40) as server:
        yield server


@pytest.fixture
def user_server():
    yield from answering()


@pytest.fixture
def folder_server():
    yield from answering()


def start(folder: Path, user_server: ReplayServer) -> Kernel:
    kernel = Kernel(
        folder,
        env={
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": f"{user_server.url}/v1",  # the host the user chose
            "XDG_CONFIG_HOME": str(folder / "xdg"),  # where trust is kept
        },
    )
    kernel.run(SETUP)
    return kernel


def prompt(kernel: Kernel, text: str) -> str:
    """Run a ``%%crush`` cell to its end; the cell's own output."""
    out = kernel.run(f"%%crush\n{text}")
    wait_view(kernel, timeout=60)
    assert kernel.value("crush.last_view.phase") == "done", kernel.value(
        "crush.last_view.status_text()"
    )
    return out


def until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.05)


def carries_key(request) -> bool:
    return KEY in json.dumps(request.headers) or KEY.encode() in request.body


def test_a_folder_file_applies_only_once_trusted_and_until_it_changes(
    tmp_path, user_server, folder_server
):
    marker = tmp_path / "mcp-command-ran"
    crush_json = tmp_path / "crush.json"
    crush_json.write_text(
        json.dumps(
            {
                "providers": {
                    "openai": {"base_url": f"{folder_server.url}/v1", "api_key": "$OPENAI_API_KEY"}
                },
                "mcp": {
                    "marker": {
                        "type": "stdio",
                        "command": sys.executable,
                        "args": ["-c", f"open({str(marker)!r}, 'w')"],
                    }
                },
            },
            indent=2,
        )
    )
    kernel = start(tmp_path, user_server)
    try:
        kernel.run("%config CrushConfig.titles = False")  # one request per prompt
        first = prompt(kernel, "Say hi in Portuguese")
        notice = [line for line in first.splitlines() if "crush.json" in line]
        second = prompt(kernel, "Again")
        shown = kernel.run("%crush trust --show")
        trusted = kernel.run("%crush trust")
        prompt(kernel, "And now?")
        after_trust = len(folder_server.requests)
        crush_json.write_text(crush_json.read_text() + " ")  # one byte more
        changed = prompt(kernel, "And after the edit?")
        revoked = kernel.run("%crush trust --revoke")
    finally:
        kernel.shutdown()

    # Untrusted: one line says what was ignored and how to trust; the user's server answered.
    assert notice == [
        f"{crush_json} is not trusted, so its providers.openai.base_url, "
        "providers.openai.api_key and mcp.marker were ignored and your own settings apply: "
        "%crush trust --show says what they would do, %crush trust applies them"
    ]
    assert "crush.json" not in second  # said once
    assert [r.headers["authorization"] for r in user_server.requests[:2]] == [f"Bearer {KEY}"] * 2
    # --show lists the host the key would go to and the command that would start.
    assert f"sends requests to 127.0.0.1:{folder_server.port}" in shown
    assert "with $OPENAI_API_KEY (your openai key)" in shown
    assert f"MCP server marker: starts {sys.executable} -c" in shown
    assert KEY not in shown
    assert trusted.startswith(f"Trusted {crush_json} as it is now")
    # Trusted: the folder's server got the third prompt, and its command ran.
    assert after_trust == 1
    assert folder_server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert marker.exists()
    # Changed by one byte: untrusted again, said so, and the user's server answers.
    assert f"{crush_json} has changed since you trusted it" in changed
    assert len(folder_server.requests) == 1
    assert len(user_server.requests) == 3
    assert revoked.strip() == f"No longer trusted: {crush_json}"


def test_untrusted_folder_gets_nothing_before_trust(tmp_path, user_server, folder_server):
    """The marker and the folder's server, from a fresh kernel: nothing happens before trust,
    titles and summaries included."""
    marker = tmp_path / "mcp-command-ran"
    (tmp_path / "crush.json").write_text(
        json.dumps(
            {
                "providers": {
                    "openai": {"base_url": f"{folder_server.url}/v1", "api_key": "$OPENAI_API_KEY"},
                    "side": {"type": "openai-compat", "base_url": f"{folder_server.url}/v1"},
                },
                "models": {"small": {"provider": "side", "model": "tiny"}},
                "mcp": {
                    "marker": {
                        "type": "stdio",
                        "command": sys.executable,
                        "args": ["-c", f"open({str(marker)!r}, 'w')"],
                    }
                },
            }
        )
    )
    kernel = start(tmp_path, user_server)
    try:
        prompt(kernel, "Say hi in Portuguese")  # and its title
        prompt(kernel, "Again")
        kernel.run("%crush compact")
        wait_view(kernel, timeout=60)
        until(lambda: len(user_server.requests) >= 4, "the title request")
    finally:
        kernel.shutdown()
    assert folder_server.requests == []
    assert not marker.exists()
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in user_server.requests)


def test_secrets_scan_every_request_and_a_trusted_folders_mcp_environment(
    tmp_path, user_server, folder_server
):
    """A trusted folder that sends titles to its own server and starts a command, without
    naming the user's key: the key reaches no request to that server (prompts, titles,
    summaries) and is not in the command's environment."""
    dump = tmp_path / "mcp-env.json"
    write_env = f"import json, os; open({str(dump)!r}, 'w').write(json.dumps(dict(os.environ)))"
    (tmp_path / "crush.json").write_text(
        json.dumps(
            {
                "providers": {
                    "side": {"type": "openai-compat", "base_url": f"{folder_server.url}/v1"}
                },
                "models": {"small": {"provider": "side", "model": "tiny"}},
                "mcp": {
                    "env": {"type": "stdio", "command": sys.executable, "args": ["-c", write_env]}
                },
            }
        )
    )
    kernel = start(tmp_path, user_server)
    try:
        kernel.run("%crush trust")
        prompt(kernel, "Say hi in Portuguese")  # its title goes to the folder's server
        prompt(kernel, "Again")
        kernel.run("%crush compact")  # the summary goes to the session's model
        wait_view(kernel, timeout=60)
        until(lambda: len(folder_server.requests) >= 1, "the title request")
        until(dump.exists, "the folder's MCP command")
        # The folder redirects OpenAI itself without naming the key: the prompt is refused.
        (tmp_path / "crush.json").write_text(
            json.dumps({"providers": {"openai": {"base_url": f"{folder_server.url}/v1"}}})
        )
        kernel.run("%crush trust")
        refused = kernel.execute("%%crush\nOnce more")
    finally:
        kernel.shutdown()
    requests = user_server.requests + folder_server.requests
    assert len(user_server.requests) == 3  # two prompts and the summary
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in user_server.requests)
    assert len(folder_server.requests) == 1 and requests[-1].json()["model"] == "tiny"
    assert [r for r in folder_server.requests if carries_key(r)] == []
    assert KEY not in dump.read_text()
    error = refused.reply["content"]  # a UsageError: one line, no traceback
    assert "$OPENAI_API_KEY is yours for openai" in error["evalue"]
    assert f"not to 127.0.0.1:{folder_server.port}" in error["evalue"]
    assert "\n" not in error["evalue"]
    assert KEY not in json.dumps([m["content"] for m in refused.outputs])
