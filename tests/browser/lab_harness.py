"""What the browser tests share: where things are, and the running JupyterLab server."""

from __future__ import annotations

import json
import os
import sys
import uuid
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
