"""What ``%crush verify`` found: the report of a notebook run top to bottom in a fresh kernel.

A :class:`VerifyReport` holds each cell run with its time, the first cell that failed (and
whether the same cell ran without error in the user's kernel), the cells whose saved outputs
differ from the fresh run's, the names only the user's kernel has (hidden state), and the
``%%crush`` cells that replayed or would have needed the model. It reads as text
(:meth:`VerifyReport.to_text`, what the ``verify`` tool returns), as Markdown in a cell, and
as a dict.

Outputs are compared by what a reader would call the same: text as text (memory addresses
aside); a DataFrame's or an array's repr by its shape and first rows; a figure by its size
only (its pixels differ from run to run); a ``%%crush`` answer by its answer, not its status
line (time, tokens, "replayed from").
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.output import redact

#: A ``%%crush`` cell refused in the fresh kernel because only the model could answer it
#: (``CrushConfig.replay = "verify"``): the message starts so, then says why.
NEEDS_MODEL = "Verify does not ask the model:"

#: Rows of a DataFrame or array repr compared (after its header).
HEAD_LINES = 5
#: Characters of an output shown on each side of a difference.
SHOWN_CHARS = 120

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_FIGURE_SIZE = re.compile(r"<Figure size (\d+x\d+)")
_FRAME_SHAPE = re.compile(r"^\[(\d+) rows x (\d+) columns\]$", re.MULTILINE)
_CRUSH_STATUS = "**crush** ·"


@dataclass
class CellRun:
    """One code cell of the fresh run."""

    index: int
    id: str
    seconds: float
    #: ok · error · skipped (a %%crush cell only the model could answer) · replayed ·
    #: timeout · died (the kernel) · stopped
    state: str
    note: str = ""


@dataclass
class Failure:
    """The first cell that failed in the fresh kernel."""

    index: int
    id: str
    exception: str  # "NameError: name 'df_clean' is not defined"
    traceback: str
    #: What the saved notebook says of the same cell in the user's kernel.
    in_user_kernel: str


@dataclass
class OutputDifference:
    index: int
    id: str
    saved: str
    fresh: str


@dataclass
class EditedCell:
    """A cell whose source differs from what the user's kernel ran as ``In[count]``."""

    index: int
    id: str
    count: int


@dataclass
class VerifyReport:
    """The outcome of one verify run (see the module docstring)."""

    notebook: str  # its path, or "" for a document never saved
    source: str  # "live document, unsaved changes included", "file on disk"
    kernel: str  # the kernelspec's name
    #: passed · failed · timed out · kernel died · stopped · could not start
    outcome: str
    code_cells: int = 0
    cells: list[CellRun] = field(default_factory=list)
    failure: Failure | None = None
    differences: list[OutputDifference] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)
    #: Cells whose source is not what this kernel ran under their execution count.
    edited: list[EditedCell] = field(default_factory=list)
    #: Why the run ended early, in one line (a timeout, the kernel's exit code, Stop).
    reason: str = ""
    seconds: float = 0.0
    #: Lines on what was not checked (a star import, a notebook run by %run not found).
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome == "passed"

    @property
    def replayed(self) -> list[CellRun]:
        return [c for c in self.cells if c.state == "replayed"]

    @property
    def skipped(self) -> list[CellRun]:
        return [c for c in self.cells if c.state == "skipped"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def headline(self) -> str:
        where = self.notebook or "the notebook"
        if self.outcome == "could not start":
            return f"verify {where}: {self.reason}"
        run = sum(1 for c in self.cells if c.state not in ("stopped",))
        head = f"verify {where} ({self.source}) in a fresh {self.kernel} kernel: {self.outcome}"
        if self.outcome == "failed" and self.failure is not None:
            head += f" at cell {self.failure.index}"
        return head + f" · {run} of {self.code_cells} code cells run · {self.seconds:.1f} s"

    def lines(self) -> list[str]:
        """The report as plain lines (the verify tool's result, the text of the cell)."""
        out = [self.headline()]
        if self.reason and self.outcome != "could not start":
            out.append(self.reason)
        if self.cells:
            out.append(
                "cells: " + " · ".join(f"{c.index} {c.state} {c.seconds:.1f} s" for c in self.cells)
            )
        failure = self.failure
        if failure is not None:
            ident = f" (id {failure.id})" if failure.id else ""
            out.append(f"first failure: cell {failure.index}{ident}: {failure.exception}")
            out.append(f"  in this kernel: {failure.in_user_kernel}")
            out.extend(f"  {line}" for line in failure.traceback.splitlines())
        for cell in self.edited:
            ident = f" (id {cell.id})" if cell.id else ""
            out.append(
                f"edited after it ran: cell {cell.index}{ident} is not what this kernel ran as "
                f"In[{cell.count}]"
            )
        for name in self.hidden:
            out.append(
                f"hidden state: `{name}` exists in this kernel but no cell defines it "
                "— deleted or renamed?"
            )
        for diff in self.differences:
            ident = f" (id {diff.id})" if diff.id else ""
            out.append(
                f"output differs: cell {diff.index}{ident}: saved {diff.saved!r} · "
                f"fresh {diff.fresh!r}"
            )
        for cell in self.cells:
            if cell.state in ("replayed", "skipped") and cell.note:
                out.append(f"%%crush cell {cell.index}: {cell.note}")
        out.extend(self.notes)
        # Outputs and tracebacks of the fresh kernel may print a key: never shown.
        return [redact(line) for line in out]

    def to_text(self) -> str:
        return "\n".join(self.lines())

    __str__ = to_text

    def to_markdown(self) -> str:
        head, *rest = self.lines()
        body = "\n".join(rest)
        return f"**{_escape(head)}**" + (f"\n\n```\n{body}\n```" if body else "")

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # The cell's plain text (nbconvert, papermill, a console) is the whole report.
        printer.text(self.to_text())

    def __repr__(self) -> str:
        return f"<VerifyReport {self.headline()}>"


def _escape(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", text)


# -- saved outputs against fresh ones ---------------------------------------------------------


def differs(saved: list[dict[str, Any]], fresh: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The first difference between a cell's saved and fresh outputs, each side shown
    short; None when they count as the same (see the module docstring)."""
    left = [k for k in (comparable(o) for o in saved) if k]
    right = [k for k in (comparable(o) for o in fresh) if k]
    if left == right:
        return None
    for a, b in zip(left, right, strict=False):
        if a != b:
            return _short(a), _short(b)
    if len(left) > len(right):
        return _short(left[len(right)]), "(nothing)"
    return "(nothing)", _short(right[len(left)])


def comparable(output: dict[str, Any]) -> str:
    """What of one output is compared ('' for what is never compared: widgets, an
    empty stream)."""
    kind = output.get("output_type")
    if kind == "stream":
        return _text(output.get("text", "")).rstrip()
    if kind == "error":
        return f"{output.get('ename', '')}: {_ANSI.sub('', str(output.get('evalue', '')))}"
    data = output.get("data") or {}
    if "application/vnd.jupyter.widget-view+json" in data:
        return ""  # a live widget: its state is the kernel's, not the notebook's
    plain = _text(data.get("text/plain", ""))
    if any(mime.startswith("image/") for mime in data):
        size = _FIGURE_SIZE.search(plain)
        return f"figure {size.group(1)}" if size else "figure"
    markdown = _text(data.get("text/markdown", ""))
    if markdown.startswith(_CRUSH_STATUS):
        # A %%crush answer: its status line says when and how; the answer is what counts.
        return "crush answer: " + markdown.partition("\n\n")[2].strip()
    if "text/html" in data and 'class="dataframe"' in _text(data["text/html"]):
        return _frame(plain)
    if plain.startswith("array("):
        return _head(plain)
    if not plain and not markdown:
        return ""  # a widget's or another mime's output alone
    return _ADDRESS.sub("0x…", plain or markdown).rstrip()


def _frame(plain: str) -> str:
    shape = _FRAME_SHAPE.search(plain)
    head = _head(plain)
    return f"{head}\n[{shape.group(1)} x {shape.group(2)}]" if shape else head


def _head(plain: str) -> str:
    return "\n".join(line.rstrip() for line in plain.splitlines()[: HEAD_LINES + 1])


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _short(text: str) -> str:
    flat = " ⏎ ".join(line for line in text.splitlines() if line.strip())
    return flat if len(flat) <= SHOWN_CHARS else flat[: SHOWN_CHARS - 1] + "…"


def edited_cells(cells: list[tuple[int, dict[str, Any]]], ran: list[str]) -> list[EditedCell]:
    """The code cells (``(index, cell)``) whose source is not the user's kernel's
    ``In[execution_count]`` (``ran``: the kernel's raw input history, by count).

    None when no cell is what this kernel ran under its count: the counts are then another
    kernel's (the notebook was run before a restart), and every cell would look edited.
    """
    edited, matched = [], False
    for index, cell in cells:
        count = cell.get("execution_count")
        if not isinstance(count, int) or not 0 < count < len(ran):
            continue
        if _text(cell.get("source", "")).strip() == ran[count].strip():
            matched = True
        else:
            edited.append(EditedCell(index, str(cell.get("id") or ""), count))
    return edited if matched else []


def saved_state(cell: dict[str, Any]) -> str:
    """What the saved notebook says of a cell in the user's kernel: ran without error, failed,
    or was not run."""
    count = cell.get("execution_count")
    errors = [o for o in cell.get("outputs") or () if o.get("output_type") == "error"]
    if errors:
        error = errors[0]
        where = f" ([{count}])" if count else ""
        return f"failed too{where}: {error.get('ename', '')}: {error.get('evalue', '')}"
    if count:
        return f"ran without error ([{count}])"
    return "not run (no execution count)"
