"""Kernels behind a gateway, as a user runs them: a Jupyter Kernel Gateway on loopback and a
Jupyter server started with ``--gateway-url``, spoken to over the server's REST API and
kernel websocket as JupyterLab does. Load, a ``%%crush`` run, Stop (``%crush cancel``), where
the store goes, and the one line a kernel without keys shows."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import websocket
from support.kernel_harness import ROOT

pytestmark = pytest.mark.slow

TOKEN = "gateway-test-token"
BOUND = 90.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url} exited early:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {BOUND} s:\n{log.read_text()[-3000:]}")


def _start(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen) -> None:
    try:
        tree = [process, *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    psutil.wait_procs([p for p in tree if isinstance(p, psutil.Process)], timeout=10)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


class Gateway:
    """A kernel gateway and a Jupyter server that sends its kernels there."""

    def __init__(self, home: Path, notebooks: Path) -> None:
        self.notebooks = notebooks
        bin_dir = Path(sys.executable).parent
        base = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "PYTHONPATH": str(ROOT),
            "JUPYTER_PLATFORM_DIRS": "1",
            "XDG_DATA_HOME": str(home / "xdg"),
        }
        self.gateway_port, self.server_port = _free_port(), _free_port()
        gateway_cwd = home / "gateway-cwd"
        gateway_cwd.mkdir()
        # The gateway lets CRUSH_MODEL through from a client; the server sends it.
        self.gateway = _start(
            [
                str(bin_dir / "jupyter"),
                "kernelgateway",
                "--KernelGatewayApp.ip=127.0.0.1",
                f"--KernelGatewayApp.port={self.gateway_port}",
                # A Jupyter server lists the gateway's kernels; the gateway refuses by default.
                "--JupyterWebsocketPersonality.list_kernels=True",
            ],
            {**base, "KG_ENV_WHITELIST": "CRUSH_MODEL", "KG_ENV_PROCESS_WHITELIST": "PYTHONPATH"},
            home / "gateway.log",
            gateway_cwd,
        )
        _wait_http(f"{self.gateway_url}/api", self.gateway, home / "gateway.log")
        self.server = _start(
            [
                str(bin_dir / "jupyter"),
                "server",
                "--no-browser",
                "--allow-root",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={self.server_port}",
                f"--IdentityProvider.token={TOKEN}",
                f"--ServerApp.root_dir={notebooks}",
                f"--gateway-url={self.gateway_url}",
            ],
            {
                **base,
                "CRUSH_MODEL": "replay:openai-simple",
                "JUPYTER_GATEWAY_ALLOWED_ENVS": "CRUSH_MODEL",
            },
            home / "server.log",
            notebooks,
        )
        _wait_http(f"{self.server_url}/api/status?token={TOKEN}", self.server, home / "server.log")

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def post(self, base: str, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"{base}{path}",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=BOUND) as reply:
            return json.loads(reply.read())

    def close(self) -> None:
        _stop(self.server)
        _stop(self.gateway)


class RemoteKernel:
    """A kernel's websocket: execute code, collect what the cell printed."""

    def __init__(self, url: str) -> None:
        self.socket = websocket.create_connection(
            url, header=[f"Authorization: token {TOKEN}"], timeout=BOUND
        )
        self.session = uuid.uuid4().hex

    def run(self, code: str) -> str:
        msg_id = uuid.uuid4().hex
        self.socket.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": "test",
                        "session": self.session,
                        "version": "5.3",
                        "date": "",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": True,
                        "user_expressions": {},
                        "allow_stdin": False,
                    },
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        out: list[str] = []
        replied = idle = False
        while not (replied and idle):
            msg = json.loads(self.socket.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                out.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                out.append(f"{content['ename']}: {content['evalue']}")
            elif kind == "execute_reply":
                replied = True
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
        return "".join(out)

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def gateway(tmp_path) -> Iterator[Gateway]:
    notebooks = tmp_path / "notebooks"
    (notebooks / "analysis").mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    started = Gateway(home, notebooks)
    try:
        yield started
    finally:
        started.close()


def _kernel_socket(base: str, kernel_id: str) -> str:
    return base.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"


def test_a_notebook_kernel_behind_a_gateway_runs_stops_and_stores_beside_the_notebook(gateway):
    session = gateway.post(
        gateway.server_url,
        "/api/sessions",
        {
            "path": "analysis/sales.ipynb",
            "type": "notebook",
            "name": "sales.ipynb",
            "kernel": {"name": "python3"},
        },
    )
    kernel = RemoteKernel(_kernel_socket(gateway.server_url, session["kernel"]["id"]))
    try:
        assert kernel.run("import os; print(os.environ.get('HOME'))").strip() == "None"
        assert kernel.run("%load_ext jupyter_crush") == ""
        listing = kernel.run("%crush sessions")
        store = gateway.notebooks / "analysis" / ".crush"
        assert listing.splitlines()[0] == (
            f"transcripts: {store} (the notebook's folder, from $KERNEL_WORKING_DIR)"
        )
        answer = kernel.run("%%crush --wait\nSay hello")
        assert "Error" not in answer, answer
        # Stop: a run paced slowly enough to be canceled mid-stream.
        kernel.run(
            "from jupyter_crush.magics import current\n"
            "from jupyter_crush.testing import ScriptedModel\n"
            "crush = current()\n"
            "crush.use_model(ScriptedModel(['word ' * 400], tokens_per_second=20))"
        )
        kernel.run("%%crush --no-wait\nCount slowly")
        kernel.run("import time; time.sleep(0.5)")
        kernel.run("%crush cancel")
        kernel.run("await crush.last_view.wait()")
        reasons = kernel.run(
            "print([str(m.finish_reason) for m in "
            "crush.store.list_messages(crush.current_session_id) if m.role == 'assistant'])"
        )
        assert reasons.strip() == "['end_turn', 'canceled']", reasons
    finally:
        kernel.close()
    assert store.is_dir() and any(store.iterdir())
    assert not (gateway.notebooks.parent / "home" / "gateway-cwd" / ".crush").exists()


def test_a_gateway_kernel_without_keys_names_the_two_allow_lists(gateway):
    # Started on the gateway directly, with what any gateway client sends (KERNEL_*) but not
    # the variables the server's allow-list would add.
    started = gateway.post(
        gateway.gateway_url, "/api/kernels", {"name": "python3", "env": {"KERNEL_USERNAME": "ada"}}
    )
    kernel = RemoteKernel(_kernel_socket(gateway.gateway_url, started["id"]))
    try:
        kernel.run("%load_ext jupyter_crush")
        failure = kernel.run("%%crush --wait\nSay hello")
        assert "No API key and no CRUSH_MODEL reached this remote kernel" in failure
        assert "JUPYTER_GATEWAY_ALLOWED_ENVS" in failure and "KG_ENV_WHITELIST" in failure
        where = kernel.run("%crush model").splitlines()[-1]
        assert where.startswith("transcripts: ") and "gateway-cwd" not in where
    finally:
        kernel.close()
