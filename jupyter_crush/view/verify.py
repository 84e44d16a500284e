"""The live view of a ``%crush verify`` run: a delta run view whose status line says which
cell runs ("cell 12 of 40"), with the elapsed time and a Stop button; at the end its answer
is the verify report (or, when the cell returns the report as its value, only the verdict)."""

from __future__ import annotations

from typing import Any

from ..core.message import FinishReason
from .base import RunLabels
from .delta import DeltaRunView


class VerifyRunView(DeltaRunView):
    """Progress of one verify run; :meth:`begin`, :meth:`progress`, then :meth:`show_report`
    or :meth:`fail` (loop thread). Stop calls ``on_stop``."""

    def __init__(self, notebook: str, **kwargs: Any) -> None:
        # Set first: the delta view draws its opening state while it is made.
        self.notebook = notebook
        self.kernel = ""
        self.where = "looking for the notebook"
        self.verdict = ""
        self._report_text = ""
        self._report_markdown = ""
        super().__init__(RunLabels(session="", model=""), **kwargs)

    def begin(self, notebook: str, kernel: str) -> None:
        """The notebook was found: its fresh kernel is starting."""
        self.notebook, self.kernel = notebook, kernel
        self.where = "starting a fresh kernel"
        self.phase = "running"
        self._started = self._clock()
        self._draw()

    def progress(self, number: int, total: int) -> None:
        self.where = f"cell {number} of {total}"
        self._draw()

    def show_report(self, verdict: str, text: str, markdown: str, ok: bool) -> None:
        """The run ended: ``verdict`` on the status line, the report (text, Markdown) below
        it ('' when the cell shows the report as its value instead)."""
        self.verdict = verdict
        self._report_text, self._report_markdown = text, markdown
        stopped = verdict == "stopped"
        reason = FinishReason.CANCELED if stopped else FinishReason.END_TURN
        self.finish(reason if ok or stopped else FinishReason.ERROR, "" if ok else verdict)

    def fail(self, message: str) -> None:
        """The run could not begin (no notebook to find): the message is the status line."""
        self.verdict = message
        self.finish(FinishReason.ERROR, message)

    @property
    def answer_markdown(self) -> str:
        return self._report_markdown

    def to_text(self) -> str:
        report = f"\n\n{self._report_text}" if self._report_text else ""
        return f"[crush] {self.status_text()}{report}"

    def status_parts(self) -> tuple[list[str], float | None, list[str]]:
        head = [f"verify {self.notebook}" if self.notebook else "verify"]
        if self.kernel:
            head.append(f"fresh {self.kernel} kernel")
        head.append(self._phase_only())
        tail = [self._stop_hint] if self._stop_hint and self._ended is None else []
        return head, self.elapsed, tail

    def _phase_only(self) -> str:
        if self._ended is not None:
            return self.verdict or self.phase
        if self.stop_requested:
            return "stopping"
        return self.where
