"""What the browser tests share: where things are, and the running JupyterLab server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = Path(os.environ.get("CRUSH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LABEXTENSION = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "jupyter-crush"


@dataclass
class LabServer:
    url: str
    root: Path
    log: Path

    def write_notebook(self, cells: list[str]) -> str:
        """A new notebook in the server's root with these code cells; returns its name."""
        name = f"nb-{uuid.uuid4().hex[:8]}.ipynb"
        notebook = {
            "cells": [
                {
                    "cell_type": "code",
                    "execution_count": None,
                    "id": uuid.uuid4().hex[:8],
                    "metadata": {},
                    "outputs": [],
                    "source": source,
                }
                for source in cells
            ],
            "metadata": {
                "kernelspec": {
                    "display_name": "Python 3 (ipykernel)",
                    "language": "python",
                    "name": "python3",
                }
            },
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        (self.root / name).write_text(json.dumps(notebook))
        return name

    def lab_url(self, notebook: str) -> str:
        # A workspace of its own, reset: no layout or open tabs leak between tests.
        return f"{self.url}/lab/workspaces/{uuid.uuid4().hex[:10]}/tree/{notebook}?reset"

    def notebook7_url(self, notebook: str) -> str:
        return f"{self.url}/notebooks/{notebook}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_settings(settings: Path) -> None:
    # No news or update check: their notification would cover the notebook toolbar, and
    # the machine has no network beyond loopback anyway.
    notification = settings / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"checkForUpdates": False, "fetchNews": "false"})
    )


@contextmanager
def running_lab_server(base: Path, logs: Path) -> Iterator[LabServer]:
    """A JupyterLab server on 127.0.0.1, without a token, rooted in ``base``/root.

    Its kernels import this checkout's package and keep their store in the root's .crush;
    the server's log goes to ``logs``/jupyterlab-server.log.
    """
    root = base / "root"
    root.mkdir()
    settings = base / "settings"
    _write_settings(settings)
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / "jupyterlab-server.log"
    port = _free_port()
    env = dict(os.environ)
    env.update(
        {
            # The kernels import the package under test from this checkout.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            "JUPYTER_CONFIG_DIR": str(base / "config"),
            "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
            "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
            "CRUSH_DATA_DIR": str(root / ".crush"),
        }
    )
    env.pop("CRUSH_MODEL", None)
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",  # CI runs as root
        "--LabApp.extension_manager=readonly",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={base / 'workspaces'}",
    ]
    with log.open("w") as log_file:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process, log)
        yield LabServer(url, root, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"jupyter lab did not answer on {url} within 90 s:\n{log.read_text()}")
