"""Insert below, on the code blocks of a run's answer: what the kernel gives a run view to put
a block's code into a new cell (the kernel's side is :mod:`jupyter_crush.kernel.code_blocks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: A finished answer's code provenance (labextension/src/answers.ts renders the answer).
ANSWER_MIME = "application/vnd.jupyter-crush.answer+json"


class CodeBlocks:
    """How a view's Insert below reaches the notebook, while the run streams and after."""

    def __init__(self) -> None:
        #: Puts a code block of the answer into a new cell below the prompt's (the kernel
        #: sets it; called from the click's thread). None: Insert below does nothing.
        self.inserter: Callable[[str], None] | None = None
        #: The provenance metadata of a cell made from the answer's code (the kernel sets
        #: it): the static answer carries it for the page's own Insert below.
        self.origin: Callable[[], dict[str, Any]] | None = None

    def insert(self, code: Any) -> None:
        """An Insert below click on one of the answer's code blocks (any thread)."""
        if isinstance(code, str) and code.strip() and self.inserter is not None:
            self.inserter(code)

    def answer_data(self) -> dict[str, Any]:
        """What a finished Markdown answer's display data adds for the JupyterLab extension,
        which renders it with Copy and Insert below ({} when the kernel gave no origin)."""
        if self.origin is None:
            return {}
        return {ANSWER_MIME: {"cell_metadata": self.origin()}}
