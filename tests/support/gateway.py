"""A Jupyter server on loopback, with or without a local Jupyter Kernel Gateway behind it
(``--gateway-url``), and a kernel's websocket spoken to as JupyterLab does."""

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
from pathlib import Path

import psutil
import websocket

from support.kernel_harness import ROOT

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


class Servers:
    """A Jupyter server on loopback that sends its kernels to a local kernel gateway (or,
    with ``gateway=False``, starts them itself, for comparison)."""

    def __init__(self, home: Path, notebooks: Path, gateway: bool = True) -> None:
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
        self.gateway: subprocess.Popen | None = None
        self.server: subprocess.Popen | None = None
        try:
            if gateway:
                self._start_gateway(home, base, bin_dir)
            self._start_server(home, notebooks, base, bin_dir, gateway)
        except BaseException:
            self.close()  # a server that did not come up leaves no process behind
            raise

    def _start_server(
        self, home: Path, notebooks: Path, base: dict[str, str], bin_dir: Path, gateway: bool
    ) -> None:
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
                *([f"--gateway-url={self.gateway_url}"] if gateway else []),
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

    def _start_gateway(self, home: Path, base: dict[str, str], bin_dir: Path) -> None:
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

    def start_notebook_kernel(self, path: str) -> RemoteKernel:
        """A kernel for the notebook at ``path`` (under the server's root), as JupyterLab
        starts one: a session, then the kernel's websocket."""
        name = path.rsplit("/", 1)[-1]
        body = {"path": path, "type": "notebook", "name": name, "kernel": {"name": "python3"}}
        session = self.post(self.server_url, "/api/sessions", body)
        return RemoteKernel(kernel_socket(self.server_url, session["kernel"]["id"]))

    def close(self) -> None:
        for process in (self.server, self.gateway):
            if process is not None:
                _stop(process)


class RemoteKernel:
    """A kernel's websocket: execute code, collect what the cell printed."""

    def __init__(self, url: str) -> None:
        # Without TCP_NODELAY each small request waits for the peer's delayed ACK (~40 ms),
        # which browsers never do. The server's end keeps Nagle's algorithm on, which a
        # request sent the moment the last went idle pays for (benchmarks/bench_gateway.py).
        self.socket = websocket.create_connection(
            url,
            header=[f"Authorization: token {TOKEN}"],
            timeout=BOUND,
            sockopt=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
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


def kernel_socket(base: str, kernel_id: str) -> str:
    return base.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
