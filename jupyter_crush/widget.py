"""The run widget: one prompt's live view, and the permission prompt inside it.

Threading rules: agent events reach :meth:`RunView.on_event` on the
kernel's event-loop thread, but widget clicks may arrive on a subshell thread
(ipykernel 7 + JupyterLab). Click handlers therefore only call thread-safe
things (``agent.cancel``) and hand everything else to the loop with
``call_soon_threadsafe``; the one exception is the Stop button's own state,
guarded by a lock (see ``RunView._stop_lock``). Output goes through widget
values and ``Output.outputs``, never ``with out:`` or ``print`` — from a
background task those land in whichever cell happens to be executing.

Stop while another cell blocks: JupyterLab 4 and Notebook 7 send a widget's
comm messages on a kernel subshell of their comm target, but ipykernel 7.4
reroutes each comm message to the subshell of the last message the *kernel*
published on that comm — for a widget made by a cell, the main shell, where a
click would wait for whatever cell runs there. The Stop button's comm takes
clicks on the subshell the page sent them on (:func:`take_clicks_where_sent`),
so the cancel is recorded and the button says "Stopping…" at once, from that
thread. A cell that blocks the main thread also holds the asyncio loop, so the
stream itself stops at the loop's first tick after that cell: no model token is
read meanwhile and none after it.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets

from .agent import (
    Delta,
    Finished,
    Folded,
    PermissionAsked,
    Queued,
    RunEvent,
    Started,
    ToolFinished,
    ToolStarted,
)
from .message import FinishReason, Message, Role, ToolCallPart, ToolResultPart, Usage
from .tools import Decision, PermissionRequest

WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"

#: Longest tool argument / result shown in the view; the store keeps all of it.
_TOOL_TEXT_LIMIT = 4000


@dataclass(frozen=True)
class RunLabels:
    """What the status line says about where a run goes."""

    session: str
    model: str
    #: For a replay, which recorded prompt it answers ("replaying a recorded answer to: …").
    replay: str = ""


class RunView:
    """The live view of one ``%%crush`` prompt, and the agent's observer for it.

    Display it with ``display(view, display_id=True)``: the bundle carries the
    widget plus a text/markdown fallback, and when the run finishes
    ``on_finished`` callbacks get the chance to replace the display with the
    static final answer, so a notebook reopened without a kernel still shows it.
    """

    def __init__(
        self,
        labels: RunLabels,
        *,
        on_stop: Callable[[], None],
        session_id: str = "",
        redraw_rate: float = 30.0,
        answer_format: str = "markdown",
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.labels = labels
        self.session_id = session_id
        # "markdown": the front end renders the answer; "text": shown verbatim.
        self._answer_mime = "text/plain" if answer_format == "text" else "text/markdown"
        self._on_stop = on_stop
        self._min_interval = 1.0 / redraw_rate if redraw_rate > 0 else 0.0
        self._loop = loop
        self._clock = clock

        self.phase = "accepted"  # accepted | queued | folded | running | done | canceled | error
        self.queue_position = 0
        self.finish_reason: FinishReason | None = None
        self.finish_message = ""
        self.usage = Usage()
        self.cost: float | None = None
        self.waiting_permission = False
        self.queued_behind = 0  # prompts of this session waiting for this run
        self._stop_hint = ""
        self.store_note = ""  # what the transcript store could not write yet, if anything
        #: Whether a front end that can click shows this view (permission prompts need one).
        self.interactive = True
        self._created = clock()
        self._started: float | None = None
        self._ended: float | None = None
        # Assistant messages of this turn by id, in the order they first streamed.
        self._messages: dict[str, Message] = {}
        self._tool_calls: dict[str, ToolCallPart] = {}
        self._tool_results: dict[str, ToolResultPart] = {}
        self._finished_callbacks: list[Callable[[RunView], None]] = []
        self._done: asyncio.Future[None] | None = None

        # Loop-thread-only redraw state: one pending timer coalesces every event
        # that arrives before it fires (never a redraw per token).
        self._redraw_handle: asyncio.Handle | None = None
        self._tick_handle: asyncio.Handle | None = None
        self._last_draw = float("-inf")
        self._drawn_answer = ""
        self._content_shown = False  # has any answer or reasoning text been drawn yet?
        self.redraws = 0

        self.status = widgets.HTML()
        self.stop_button = widgets.Button(
            description="Stop",
            icon="stop",
            tooltip="Cancel this prompt (and anything queued before it in this session)",
            layout=widgets.Layout(width="auto", flex="0 0 auto"),
        )
        self.stop_button.on_click(self._stop_clicked)
        take_clicks_where_sent(self.stop_button)
        #: Whether Stop was clicked (set on the click's thread, at once).
        self.stop_requested = False
        # Orders the click's thread against finish() on the loop: "Stopping…" is never
        # written on a run that has already ended. Guards stop_requested and the Stop
        # button's disabled/description, and the _ended check made before writing them.
        self._stop_lock = threading.Lock()
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

    # -- display -----------------------------------------------------------

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = dict(self.root._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = self.to_text()
        bundle["text/markdown"] = self.to_markdown()
        return bundle

    def static_bundle(self) -> dict[str, Any]:
        """The display data of a finished run without the live widget."""
        return {"text/plain": self.to_text(), "text/markdown": self.to_markdown()}

    @property
    def answer_markdown(self) -> str:
        return "\n\n".join(m.text for m in self._messages.values() if m.text)

    @property
    def reasoning_text(self) -> str:
        return "\n\n".join(m.reasoning for m in self._messages.values() if m.reasoning)

    def status_text(self) -> str:
        parts = [f"session {self.labels.session}", self.labels.model]
        if self.labels.replay:
            parts.append(self.labels.replay)
        parts.append(self._phase_text())
        elapsed = self.elapsed
        if elapsed is not None:
            parts.append(f"{elapsed:.1f} s")
        if self.usage.total_tokens:
            parts.append(f"{self.usage.total_tokens} tokens")
        if self.cost is not None:
            parts.append(f"${self.cost:.4f}")
        if self._stop_hint and self._ended is None:
            parts.append(self._stop_hint)
        if self.store_note:
            parts.append(self.store_note)
        return " · ".join(parts)

    @property
    def elapsed(self) -> float | None:
        start = self._started if self._started is not None else self._created
        end = self._ended if self._ended is not None else self._clock()
        return end - start

    def stop_with_interrupt(self) -> None:
        """For a cell that blocks until the answer: point at the interrupt as well.

        A Stop click the page sends on a kernel subshell (JupyterLab 4 and Notebook 7 do)
        lands at once (see :func:`take_clicks_where_sent`), but one sent on the main shell,
        as front ends without comms over subshells do, waits behind this very cell until
        the answer is complete; the interrupt works everywhere.
        """
        self._stop_hint = "or interrupt the kernel (■)"
        self._draw()

    def set_store_note(self, note: str) -> None:
        """Say what the transcript store keeps in memory because the disk refused it."""
        if note != self.store_note:
            self.store_note = note
            self._draw()

    def set_queued_behind(self, count: int) -> None:
        """How many prompts wait for this run (loop thread)."""
        if count != self.queued_behind and self._ended is None:
            self.queued_behind = count
            self._draw()

    def _phase_text(self) -> str:
        text = self._phase_only()
        if self.queued_behind and self._ended is None and self.phase == "running":
            text += f", {self.queued_behind} queued behind"
        return text

    def _phase_only(self) -> str:
        if self.stop_requested and self._ended is None:
            return "stopping"
        if self.phase == "queued":
            return f"queued (position {self.queue_position})"
        if self.phase == "folded":
            return "queued: folded into the running turn"
        if self.waiting_permission and self._ended is None:
            return "waiting for permission"
        if self.phase == "error":
            return f"error: {self.finish_message}" if self.finish_message else "error"
        if self.phase == "canceled":
            return "canceled"
        if self.phase == "done" and self.finish_reason not in (None, FinishReason.END_TURN):
            return f"done ({self.finish_reason})"
        return self.phase

    def to_text(self) -> str:
        answer = self.answer_markdown
        return f"[crush] {self.status_text()}" + (f"\n\n{answer}" if answer else "")

    def to_markdown(self) -> str:
        lines = [f"**crush** · {_md_escape(self.status_text())}"]
        reasoning = self.reasoning_text
        if reasoning:
            lines.append(
                f"<details><summary>Reasoning</summary>\n\n{html.escape(reasoning)}\n\n</details>"
            )
        for call_id, call in self._tool_calls.items():
            result = self._tool_results.get(call_id)
            state = "running" if result is None else ("error" if result.is_error else "ok")
            body = f"<pre>{html.escape(_clip(_pretty_json(call.input)))}</pre>"
            if result is not None:
                body += f"\n<pre>{html.escape(_clip(result.content))}</pre>{_images_html(result)}"
            lines.append(
                f"<details><summary>tool {html.escape(call.name)} · {state}</summary>\n\n"
                f"{body}\n\n</details>"
            )
        answer = self.answer_markdown
        if answer and self._answer_mime == "text/plain":
            lines.append(f"<pre>{html.escape(answer)}</pre>")
        elif answer:
            lines.append(answer)
        return "\n\n".join(lines)

    # -- observer ------------------------------------------------------------

    def on_finished(self, callback: Callable[[RunView], None]) -> None:
        """Call ``callback(view)`` on the loop thread once the run is terminal."""
        self._finished_callbacks.append(callback)

    @property
    def is_finished(self) -> bool:
        return self._ended is not None

    async def wait(self) -> None:
        """Return once the run is terminal (its Finished event has been shown)."""
        if self._ended is not None:
            return
        if self._done is None:
            self._done = self._get_loop().create_future()
        await asyncio.shield(self._done)

    def on_event(self, event: RunEvent) -> None:
        """Agent events, on the loop thread."""
        if isinstance(event, Delta):
            message = event.message
            if message.role == Role.ASSISTANT:
                self._messages[message.id] = message
                for call in message.tool_calls:
                    self._tool_calls[call.id] = call
            if not self._content_shown and (message.text or message.reasoning):
                # The first token goes on screen at once; coalescing starts after it.
                self._content_shown = True
                self._draw_now()
            else:
                self._schedule_redraw()
        elif isinstance(event, ToolStarted):
            self._tool_calls[event.call.id] = event.call
            # Permission was granted (perhaps without a prompt: yolo, allowed tools).
            self.waiting_permission = bool(self.permission.children)
            self._schedule_redraw()
        elif isinstance(event, ToolFinished):
            self._tool_calls[event.call.id] = event.call
            self._tool_results[event.call.id] = event.result
            self._schedule_redraw()
        elif isinstance(event, Queued):
            self.phase = "queued"
            self.queue_position = event.position
            self._draw()
        elif isinstance(event, Folded):
            self.phase = "folded"
            self._draw()
        elif isinstance(event, Started):
            self.phase = "running"
            self._started = self._clock()
            self._draw()
            self._start_ticker()
        elif isinstance(event, PermissionAsked):
            self.waiting_permission = True
            self._draw()
        elif isinstance(event, Finished):
            self.finish(event.reason, event.message, event.usage, event.cost)

    def finish(
        self,
        reason: FinishReason,
        message: str = "",
        usage: Usage | None = None,
        cost: float | None = None,
    ) -> None:
        """Mark the run terminal (loop thread). Idempotent."""
        with self._stop_lock:
            if self._ended is not None:
                return
            self._ended = self._clock()
        self.finish_reason = FinishReason(reason)
        self.finish_message = message
        if usage is not None:
            self.usage = usage
        self.cost = cost
        if self.finish_reason == FinishReason.CANCELED:
            self.phase = "canceled"
        elif self.finish_reason == FinishReason.ERROR:
            self.phase = "error"
        else:
            self.phase = "done"
        self.waiting_permission = False
        self.permission.children = ()
        self.stop_button.disabled = True
        for handle in (self._redraw_handle, self._tick_handle):
            if handle is not None:
                handle.cancel()
        self._redraw_handle = self._tick_handle = None
        self._draw()
        callbacks, self._finished_callbacks = self._finished_callbacks, []
        for callback in callbacks:
            callback(self)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    # -- drawing -------------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _schedule_redraw(self) -> None:
        if self._redraw_handle is not None or self._ended is not None:
            return
        delay = self._last_draw + self._min_interval - self._clock()
        if delay <= 0:
            self._draw()
        else:
            self._redraw_handle = self._get_loop().call_later(delay, self._timed_draw)

    def _timed_draw(self) -> None:
        self._redraw_handle = None
        self._draw()

    def _draw_now(self) -> None:
        if self._redraw_handle is not None:
            self._redraw_handle.cancel()
            self._redraw_handle = None
        self._draw()

    def _start_ticker(self) -> None:
        # The elapsed time keeps moving while the model thinks silently.
        def tick() -> None:
            self._tick_handle = None
            if self._ended is None:
                self.status.value = self._status_html()
                self._tick_handle = self._get_loop().call_later(1.0, tick)

        if self._tick_handle is None:
            self._tick_handle = self._get_loop().call_later(1.0, tick)

    def _status_html(self) -> str:
        return f"<b>crush</b> · {html.escape(self.status_text())}"

    def _draw(self) -> None:
        self._last_draw = self._clock()
        self.redraws += 1
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
        for call_id, call in self._tool_calls.items():
            result = self._tool_results.get(call_id)
            if result is None and not call.finished:
                state = "streaming arguments"
            elif result is None:
                state = "waiting for permission" if self.waiting_permission else "running"
            else:
                state = "error" if result.is_error else "ok"
            title = f"tool {call.name} · {state}"
            body = (
                "<b>arguments</b>"
                f'<pre style="white-space: pre-wrap">'
                f"{html.escape(_clip(_pretty_json(call.input)))}</pre>"
            )
            if result is not None:
                body += (
                    "<b>result</b>"
                    f'<pre style="white-space: pre-wrap">{html.escape(_clip(result.content))}</pre>'
                    + _images_html(result)
                )
            entry = self._tool_widgets.get(call_id)
            if entry is None:
                content = widgets.HTML(body)
                box = widgets.Accordion(children=[content], titles=(title,), selected_index=None)
                self._tool_widgets[call_id] = (box, content)
                added = True
            else:
                box, content = entry
                if content.value != body:
                    content.value = body
                if box.titles != (title,):
                    box.titles = (title,)
        if added:
            self.tools.children = tuple(box for box, _ in self._tool_widgets.values())

    def close(self) -> None:
        """Close the view's widgets once the static answer has replaced it on the page.

        Every widget is a comm the kernel (and the front end) would otherwise keep for the
        rest of the session, one set per prompt.
        """
        close_widgets(self.root)

    # -- stop ------------------------------------------------------------------

    def _stop_clicked(self, _button: widgets.Button) -> None:
        # Runs on the thread the click was delivered to, usually a subshell's: the loop may
        # be held by a blocking cell, so the cancel and the button's "Stopping…" happen here
        # (the iopub socket is thread-safe); the status line follows on the loop.
        self._on_stop()
        with self._stop_lock:
            if self._ended is not None:
                return
            self.stop_requested = True
            self.stop_button.disabled = True
            self.stop_button.description = "Stopping…"
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._draw_stopping)

    def _draw_stopping(self) -> None:
        if self._ended is None:
            self._draw()

    # -- permission prompt ---------------------------------------------------

    def ask_permission(
        self, request: PermissionRequest, decide: Callable[[Decision], None]
    ) -> Callable[[], None]:
        """Show Allow / Allow for session / Deny; ``decide`` gets the click (any thread).

        Returns a function that removes the prompt (loop thread).
        """
        what = request.summary or _pretty_json(json.dumps(request.arguments))
        text = widgets.HTML(
            f"<b>{html.escape(request.tool_name)}</b> wants to run:"
            f'<pre style="white-space: pre-wrap">{html.escape(what)}</pre>'
        )
        buttons = []
        for label, decision, style in (
            ("Allow", Decision.ALLOW, "success"),
            ("Allow for session", Decision.ALLOW_SESSION, "info"),
            ("Deny", Decision.DENY, "danger"),
        ):
            button = widgets.Button(description=label, button_style=style)
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


class WidgetPermissionBroker:
    """The UI end of permission prompts: asks in the run widget of the session's prompt.

    It sits behind :class:`~jupyter_crush.tools.permissions.PermissionPolicy`, which has
    already answered whatever needs no human (yolo, allowed tools, "Allow for session",
    headless runs). ``views`` maps a session id to the view of its active run; the magics
    keep it current.
    """

    def __init__(self, views: dict[str, RunView]) -> None:
        self._views = views

    async def ask(self, request: PermissionRequest) -> Decision:
        view = self._views.get(request.session_id)
        if view is None:
            # No view to click in (a run started from code): nobody can answer.
            return Decision.DENY
        loop = asyncio.get_running_loop()
        decided: asyncio.Future[Decision] = loop.create_future()

        def settle(decision: Decision) -> None:
            if not decided.done():
                decided.set_result(decision)

        def decide(decision: Decision) -> None:
            # Clicks can arrive on a subshell thread; the future belongs to the loop.
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, decision)

        remove = view.ask_permission(request, decide)
        try:
            return await decided
        finally:
            # Also on cancel (Stop while the prompt is open): the buttons go away.
            remove()


def take_clicks_where_sent(button: widgets.Button) -> None:
    """Handle ``button``'s clicks on the kernel subshell the page sent them on.

    ipykernel 7.4 routes a comm message to the subshell of the last message the kernel
    published on that comm (``BaseComm._reply_subshell_for``, asked on the shell-channel
    thread for every ``comm_msg``), so a widget a cell made answers on the main shell
    whatever subshell the page chose. For a button whose click handler is thread-safe,
    clicks keep the page's choice; everything else on the comm (state updates, close)
    keeps ipykernel's routing. A page that sends no subshell (comms over subshells off,
    or a front end without them) still reaches the main shell, as before. Kernels
    without this routing already deliver where the page sends, and are left alone.
    """
    comm = getattr(button, "comm", None)
    route = getattr(comm, "_reply_subshell_for", None)
    if route is None:
        return

    def route_clicks(data: Any, sent_to: str | None) -> str | None:
        if isinstance(data, dict) and data.get("method") == "custom":
            content = data.get("content")
            if isinstance(content, dict) and content.get("event") == "click":
                return sent_to
        return route(data, sent_to)

    comm._reply_subshell_for = route_clicks


def close_widgets(widget: widgets.Widget) -> None:
    """Close ``widget``, its descendants, and their layout and style widgets."""
    for child in getattr(widget, "children", ()):
        close_widgets(child)
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
        if isinstance(part, widgets.Widget):
            part.close()
    widget.close()


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


def _pretty_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (ValueError, TypeError):
        return text


def _images_html(result: ToolResultPart) -> str:
    """The result's images as thumbnails: what the model was shown."""
    tags = []
    for image in result.images:
        try:
            data = base64.b64encode(image.read()).decode("ascii")
        except (OSError, ValueError):
            tags.append(f"<p>{html.escape(image.describe())} (file missing)</p>")
            continue
        tags.append(
            f'<img src="data:{image.media_type};base64,{data}" '
            f'alt="{html.escape(image.describe())}" style="max-width: 480px">'
        )
    return "".join(tags)


def _clip(text: str) -> str:
    if len(text) <= _TOOL_TEXT_LIMIT:
        return text
    return text[:_TOOL_TEXT_LIMIT] + f"\n… ({len(text) - _TOOL_TEXT_LIMIT} more characters)"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|~])")


def _md_escape(text: str) -> str:
    """``text`` shown literally inside Markdown (a session title may hold anything)."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))
