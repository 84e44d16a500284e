"""The ipywidgets run view (``CrushConfig.run_view = "widgets"``): each redraw re-sends
whole widget values.

Finished paragraphs move into frozen Output widgets, so a redraw costs O(paragraph), but
a long code block is one paragraph: it is re-sent, and re-rendered, whole at every redraw.
:class:`~jupyter_crush.view.delta.DeltaRunView` sends only what is new; this view stays
for front ends without anywidget and for side-by-side benchmarks.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ..core.tools import Decision, PermissionRequest
from .base import RunLabels, RunView
from .comm import close_widgets, take_clicks_where_sent
from .permissions import PERMISSION_CHOICES, permission_summary

_BUTTON_STYLES = {"Allow": "success", "Allow for session": "info", "Deny": "danger"}


class WidgetsRunView(RunView):
    """A run view made of ipywidgets: HTML status, Accordions, Output widgets, Buttons."""

    def __init__(self, labels: RunLabels, **kwargs: Any) -> None:
        super().__init__(labels, **kwargs)
        self._tick_handle: asyncio.Handle | None = None
        self._drawn_answer = ""
        self.status = widgets.HTML()
        self.stop_button = widgets.Button(
            description="Stop",
            icon="stop",
            tooltip="Cancel this prompt (and anything queued before it in this session)",
            layout=widgets.Layout(width="auto", flex="0 0 auto"),
        )
        self.stop_button.on_click(lambda _button: self.request_stop())
        take_clicks_where_sent(self.stop_button)
        header = widgets.HBox(
            [self.status, self.stop_button],
            layout=widgets.Layout(justify_content="space-between", align_items="center"),
        )
        self.reasoning = widgets.HTML()
        self.reasoning_box = widgets.Accordion(
            children=[self.reasoning], titles=("Reasoning",), selected_index=None
        )
        self.reasoning_box.layout.display = "none"
        self.tools = widgets.VBox()
        # Tool call id -> its accordion and body, in call order; loop thread only.
        self._tool_widgets: dict[str, tuple[widgets.Accordion, widgets.HTML]] = {}
        # Frozen outputs (finished paragraphs) then the live one; see _draw_answer.
        self.answer = widgets.VBox([widgets.Output()])
        self.permission = widgets.VBox()
        self.root = widgets.VBox(
            [header, self.reasoning_box, self.tools, self.answer, self.permission]
        )
        self._draw()

    def _widget(self) -> widgets.Widget:
        return self.root

    def _prompts_open(self) -> bool:
        return bool(self.permission.children)

    def _on_started(self) -> None:
        # The elapsed time keeps moving while the model thinks silently.
        def tick() -> None:
            self._tick_handle = None
            if self._ended is None:
                self.status.value = self._status_html()
                self._tick_handle = self._get_loop().call_later(1.0, tick)

        if self._tick_handle is None:
            self._tick_handle = self._get_loop().call_later(1.0, tick)

    def _on_finished(self) -> None:
        self.permission.children = ()
        self.stop_button.disabled = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None

    def _show_stopping(self) -> None:
        self.stop_button.disabled = True
        self.stop_button.description = "Stopping…"

    def _status_html(self) -> str:
        status = html.escape(self.status_text())
        if self.context_near_limit:  # amber: the next request summarizes
            shown = html.escape(str(self.context_meter))
            status = status.replace(shown, f'<span style="color:#b45309">{shown}</span>', 1)
        return f"<b>crush</b> · {status}"

    def _draw(self) -> None:
        self.status.value = self._status_html()
        self._draw_answer()
        reasoning = self.reasoning_text
        if reasoning:
            self.reasoning_box.layout.display = None
            value = f'<div style="white-space: pre-wrap">{html.escape(reasoning)}</div>'
            if self.reasoning.value != value:
                self.reasoning.value = value
        self._draw_tools()

    def _draw_answer(self) -> None:
        # Each redraw resends (and the front end re-renders) the whole of a widget's value,
        # so finished paragraphs move into frozen outputs and only the growing last one is
        # redrawn: a redraw costs O(paragraph), not O(answer).
        answer = self.answer_markdown
        if answer == self._drawn_answer:
            return
        self._drawn_answer = answer
        chunks, tail = split_paragraphs(answer)
        parts = list(self.answer.children)
        while len(parts) - 1 < len(chunks):
            # The live output freezes with its final chunk; a new live one follows it.
            self._set_output(parts[-1], chunks[len(parts) - 1])
            parts.append(widgets.Output())
        if len(parts) != len(self.answer.children):
            self.answer.children = tuple(parts)
        self._set_output(parts[-1], tail)

    def _set_output(self, output: widgets.Output, text: str) -> None:
        data = {"text/plain": text}
        if self._answer_mime == "text/markdown":
            data["text/markdown"] = text
        bundle = {"output_type": "display_data", "data": data, "metadata": {}}
        if not text:
            output.outputs = ()
        elif output.outputs != (bundle,):
            output.outputs = (bundle,)

    @property
    def answer_parts(self) -> list[str]:
        """The text shown in each output of the answer area, in order."""
        return [
            o.outputs[0]["data"]["text/plain"] if o.outputs else "" for o in self.answer.children
        ]

    def _draw_tools(self) -> None:
        added = False
        for row in self.tool_rows():
            body = (
                "<b>arguments</b>"
                f'<pre style="white-space: pre-wrap">{html.escape(row.arguments)}</pre>'
            )
            if row.result is not None:
                body += (
                    "<b>result</b>"
                    f'<pre style="white-space: pre-wrap">{html.escape(row.result)}</pre>'
                    + row.images
                )
            entry = self._tool_widgets.get(row.call_id)
            if entry is None:
                content = widgets.HTML(body)
                box = widgets.Accordion(
                    children=[content], titles=(row.title,), selected_index=None
                )
                self._tool_widgets[row.call_id] = (box, content)
                added = True
            else:
                box, content = entry
                if content.value != body:
                    content.value = body
                if box.titles != (row.title,):
                    box.titles = (row.title,)
        if added:
            self.tools.children = tuple(box for box, _ in self._tool_widgets.values())

    def ask_permission(
        self, request: PermissionRequest, decide: Callable[[Decision], None]
    ) -> Callable[[], None]:
        text = widgets.HTML(
            f"<b>{html.escape(request.tool_name)}</b> wants to run:"
            f'<pre style="white-space: pre-wrap">{html.escape(permission_summary(request))}</pre>'
        )
        buttons = []
        for label, decision in PERMISSION_CHOICES:
            button = widgets.Button(description=label, button_style=_BUTTON_STYLES[label])
            button.on_click(lambda _b, d=decision: decide(d))
            buttons.append(button)
        prompt = widgets.VBox([text, widgets.HBox(buttons)])
        self.permission.children = (*self.permission.children, prompt)
        self.waiting_permission = True
        self._draw()

        def remove() -> None:
            self.permission.children = tuple(c for c in self.permission.children if c is not prompt)
            close_widgets(prompt)
            self.waiting_permission = bool(self.permission.children)
            if self._ended is None:
                self._draw()

        return remove


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def split_paragraphs(text: str) -> tuple[list[str], str]:
    """Split streamed Markdown into finished chunks and the still-growing tail.

    A chunk ends at a blank line outside a fenced code block. The split of a text is a
    prefix of the split of any continuation of it, so a chunk, once finished, never
    changes. ``"".join(chunks) + tail == text``.
    """
    chunks: list[str] = []
    start = 0
    fence: str | None = None
    has_content = False
    position = 0
    for line in text.splitlines(keepends=True):
        position += len(line)
        if not line.endswith("\n"):
            break  # the last line is still being written
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)[0] * len(match.group(1))
        elif fence is not None and match and match.group(1).startswith(fence):
            fence = None
        elif fence is None and not line.strip() and has_content:
            chunks.append(text[start:position])
            start = position
            has_content = False
            continue
        has_content = has_content or bool(line.strip())
    return chunks, text[start:]
