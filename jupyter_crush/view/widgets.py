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

from ..core.questions import QuestionKind
from ..core.todos import PLAN_MARKS, Todo
from ..core.tools import Decision, PermissionRequest
from .base import RunLabels, RunView
from .comm import close_widgets, take_clicks_where_sent
from .permissions import PERMISSION_CHOICES, permission_summary
from .questions import QuestionForm

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
        # The edits waiting for the user's review in their cells, with Accept all.
        self.edits_label = widgets.HTML()
        self.accept_edits_button = widgets.Button(
            description="Accept all",
            button_style="success",
            tooltip="Accept every edit waiting for review in its cell",
            layout=widgets.Layout(width="auto"),
        )
        self.accept_edits_button.on_click(lambda _button: self.accept_edits())
        take_clicks_where_sent(self.accept_edits_button)
        self.edits_box = widgets.HBox([self.edits_label, self.accept_edits_button])
        self.edits_box.layout.display = "none"
        self.plan_html = widgets.HTML()
        self.questions = widgets.VBox()
        # Form id -> its box and the state it was drawn in; loop thread only.
        self._form_widgets: dict[str, tuple[widgets.VBox, str]] = {}
        # At the end of a turn that changed something: what it changed, an Undo button, and
        # what the undo did.
        self.changes_label = widgets.HTML()
        self.undo_button = widgets.Button(
            description="Undo",
            icon="undo",
            tooltip="Undo this turn: the variables, objects, files and cells it changed",
            layout=widgets.Layout(width="auto"),
        )
        self.undo_button.on_click(lambda _button: self._click_undo())
        take_clicks_where_sent(self.undo_button)
        self.undo_note_html = widgets.HTML()
        self.changes_box = widgets.VBox(
            [widgets.HBox([self.changes_label, self.undo_button]), self.undo_note_html]
        )
        self.changes_box.layout.display = "none"
        self.root = widgets.VBox(
            [
                header,
                self.plan_html,
                self.reasoning_box,
                self.tools,
                self.edits_box,
                self.answer,
                self.questions,
                self.permission,
                self.changes_box,
            ]
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
        self._draw_edits()
        plan = plan_html(self.plan)
        if self.plan_html.value != plan:
            self.plan_html.value = plan
        self._draw_forms()
        self._draw_changes()

    def _draw_edits(self) -> None:
        pending = self.pending_edits()
        if pending == self.edits_shown:
            return
        self.edits_shown = pending
        self.edits_box.layout.display = None if pending else "none"
        what = "1 edit waits" if len(pending) == 1 else f"{len(pending)} edits wait"
        cells = ", ".join(pending.values())
        self.edits_label.value = html.escape(f"{what} for your review in cell {cells}")

    def _draw_changes(self) -> None:
        if not self.changes:
            return
        self.changes_box.layout.display = None
        self.changes_label.value = f"{html.escape(self.changes)} —"
        if self.undo_note:
            self.undo_button.disabled = True
            self.undo_button.description = "Undo"
            note = f'<pre style="white-space: pre-wrap">{html.escape(self.undo_note)}</pre>'
            self.undo_note_html.value = note

    def _click_undo(self) -> None:
        """The Undo click (the click's thread): one undo; its note says what it did."""
        self.undo_button.disabled = True
        self.undo_button.description = "Undoing…"
        self.request_undo()

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
            body += self.child_html(row.call_id)  # a sub-agent's turn, as it streams
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

    def _draw_forms(self) -> None:
        added = False
        for form in self.forms.forms.values():
            drawn = self._form_widgets.get(form.id)
            if drawn is not None and drawn[1] == form.state:
                continue
            if drawn is None:
                box = widgets.VBox()
                added = True
            else:
                box = drawn[0]
                for child in box.children:
                    close_widgets(child)
            box.children = self._form_children(form)
            self._form_widgets[form.id] = (box, form.state)
        if added:
            self.questions.children = tuple(box for box, _ in self._form_widgets.values())

    def _form_children(self, form: QuestionForm) -> tuple[widgets.Widget, ...]:
        """A form's questions: inputs while open, then the answers or "withdrawn"."""
        if form.state != "open":
            said = [a["shown"] for a in form.as_json()["answers"] or []]
            rows = [
                f"<b>{html.escape(q.text)}</b><br>"
                + html.escape(said[n] if said else "withdrawn: the run was stopped")
                for n, q in enumerate(form.questions)
            ]
            return (widgets.HTML("<br>".join(rows)),)
        children: list[widgets.Widget] = []
        readers = []
        for question in form.questions:
            text = f"<b>{html.escape(question.text)}</b>"
            if question.description:
                text += f"<br>{html.escape(question.description)}"
            children.append(widgets.HTML(text))
            inputs, read = _question_inputs(question.kind, question.choices)
            children += inputs
            readers.append(read)
        submit = widgets.Button(description="Answer", button_style="primary")
        # Any thread: the forms take the answers as the page's are taken.
        submit.on_click(lambda _b: self.forms.answer(form.id, [read() for read in readers]))
        take_clicks_where_sent(submit)
        return (*children, submit)

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


def plan_html(plan: list[Todo]) -> str:
    """The plan shown above the answer; empty without one."""
    items = []
    for todo in plan:
        text = html.escape(todo.shown)
        if todo.status == "in_progress":
            text = f"<b>{text}</b>"
        elif todo.status == "done":
            text = f"<s>{text}</s>"
        items.append(f"<li>{PLAN_MARKS.get(todo.status, '')} {text}</li>")
    return f'<ol style="list-style: none; padding-left: 0">{"".join(items)}</ol>' if items else ""


def _question_inputs(
    kind: QuestionKind, choices: Any
) -> tuple[list[widgets.Widget], Callable[[], dict[str, Any]]]:
    """One question's input widgets, and what reads its answer as a page would send it."""
    if kind is QuestionKind.YES_NO:
        pick = widgets.RadioButtons(options=["Yes", "No"], value=None)
        return [pick], lambda: {"yes": None if pick.value is None else pick.value == "Yes"}
    if kind is QuestionKind.FREE_TEXT:
        text = widgets.Textarea(placeholder="Your answer")
        return [text], lambda: {"text": text.value}
    other = widgets.Text(placeholder="Another answer (optional)")
    if kind is QuestionKind.SINGLE_CHOICE:
        one = widgets.RadioButtons(options=[(c.label, c.id) for c in choices], value=None)
        return [one, other], lambda: {
            "selected": [] if one.value is None else [one.value],
            "text": other.value,
        }
    boxes = [widgets.Checkbox(description=c.label, value=False, indent=False) for c in choices]
    ids = [c.id for c in choices]
    return [*boxes, other], lambda: {
        "selected": [i for i, box in zip(ids, boxes, strict=True) if box.value],
        "text": other.value,
    }
