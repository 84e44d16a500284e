"""A saved notebook (.ipynb) as the text the view tool shows: each cell's source and its
text outputs, under a header line per cell, instead of the raw JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_NOTEBOOK_OUTPUT_LINES = 20
_NOTEBOOK_MAX_BYTES = 20 * 1024 * 1024


def notebook_lines(path: Path) -> list[str] | None:
    """A notebook's cells as readable text (sources, text outputs); None if it is not one."""
    if path.stat().st_size > _NOTEBOOK_MAX_BYTES:
        return None  # shown raw (line by line) rather than parsed whole
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        cells = notebook["cells"]
        assert isinstance(cells, list)
    except (ValueError, KeyError, TypeError, AssertionError, OSError):
        return None
    out: list[str] = []
    for index, cell in enumerate(cells, start=1):
        if not isinstance(cell, dict):
            return None
        kind = cell.get("cell_type", "?")
        count = cell.get("execution_count")
        out.append(f"# ── cell {index} · {kind}" + (f" · [{count}]" if count else "") + " ──")
        out.extend(_joined(cell.get("source", "")).splitlines())
        for output in cell.get("outputs", []) or []:
            out.extend(_render_output(output))
    return out


def _render_output(output: dict[str, Any]) -> list[str]:
    kind = output.get("output_type")
    if kind == "stream":
        label, text = f"stream {output.get('name', '')}".strip(), _joined(output.get("text", ""))
    elif kind == "error":
        label = "error"
        text = f"{output.get('ename', '')}: {output.get('evalue', '')}"
    else:
        data = output.get("data", {}) or {}
        # Markdown first, as the notebook tool reads outputs (tools/notebook.py).
        shown = "text/markdown" if "text/markdown" in data else "text/plain"
        others = [mime for mime in data if mime != shown]
        label = kind or "output"
        if others:
            label += f" ({', '.join(others)} omitted)"
        text = _joined(data.get(shown, ""))
    lines = text.splitlines()
    if len(lines) > _NOTEBOOK_OUTPUT_LINES:
        cut = len(lines) - _NOTEBOOK_OUTPUT_LINES
        lines = [*lines[:_NOTEBOOK_OUTPUT_LINES], f"... [{cut} more output lines]"]
    return [f"# ── output: {label} ──", *lines]


def _joined(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)
