"""The base run view: what one prompt's live view holds, and how it follows the run's events.

:class:`RunView` holds what a view shows and follows the agent's events; how it reaches
the page is its subclass's: :class:`~jupyter_crush.view.delta.DeltaRunView` (the default)
sends only what changed to a front-end module that appends it, and
:class:`~jupyter_crush.view.widgets.WidgetsRunView` re-sends ipywidgets values
(``CrushConfig.run_view``).

Threading rules: agent events reach :meth:`RunView.on_event` on the
kernel's event-loop thread, but widget clicks may arrive on a subshell thread
(ipykernel 7 + JupyterLab). Click handlers therefore only call thread-safe
things (``agent.cancel``) and hand everything else to the loop with
``call_soon_threadsafe``; the one exception is the Stop button's own state,
guarded by a lock (see ``RunView._stop_lock``). Output goes through widget
values, comm messages and ``Output.outputs``, never ``with out:`` or ``print`` — from a
background task those land in whichever cell happens to be executing.

Stop while another cell blocks: JupyterLab 4 and Notebook 7 send a widget's
comm messages on a kernel subshell of their comm target, but ipykernel 7.4
reroutes each comm message to the subshell of the last message the *kernel*
published on that comm — for a widget made by a cell, the main shell, where a
click would wait for whatever cell runs there. A view's Stop comm takes clicks on
the subshell the page sent them on (:func:`~jupyter_crush.view.comm.take_clicks_where_sent`),
so the cancel is recorded and the view says "Stopping…" at once, from that
thread. A cell that blocks the main thread also holds the asyncio loop, so the
stream itself stops at the loop's first tick after that cell: no model token is
read meanwhile and none after it.
"""

from __future__ import annotations

import asyncio
import base64
import html
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import ipywidgets as widgets

from ..core.events import (
    ChildEvent,
    Compacted,
    CompactionEvent,
    ContextUsed,
    Delta,
    Finished,
    Folded,
    PermissionAsked,
    Queued,
    RunEvent,
    Spending,
    Started,
    Summarizing,
    ToolFinished,
    ToolStarted,
)
from ..core.markdown import markdown_literal
from ..core.message import FinishReason, Message, Role, ToolCallPart, ToolResultPart, Usage
from ..core.questions import QuestionRequest
from ..core.todos import Todo, plan_from_metadata, plan_markdown
from ..core.tokens import Meter
from ..core.tools import Decision, PermissionRequest
from .child import ChildRun
from .code_blocks import CodeBlocks
from .comm import close_widgets
from .edit_review import EditReview, waiting_edits
from .questions import Answering, Closing, QuestionForms
from .rows import ToolRow, tool_row
from .spending import SpendLine
from .undo import UndoOffer

WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
#: Seconds within which a pending redraw counts as firing when asked: the delay is read on
#: the view's clock and the timer set on the loop's, so two askings for the same moment
#: differ in their last microseconds; without it, about every other token replaced the
#: timer (a cancel and a new timer on the loop's heap per token).
_REDRAW_SLACK = 1e-3


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

    Subclasses put it on the page: :meth:`_draw` (loop thread, rate-limited by
    :meth:`_redraw_delay`), :meth:`_show_stopping` (the click's thread),
    :meth:`ask_permission`, :meth:`_widget` and :meth:`close`.
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
        self.context_meter: Meter | None = None  # tokens of the latest request, of the window
        self.context_note = ""  # a summary made, or turns left out of the request
        self.summarizing = False
        self.spend = SpendLine()  # what was spent against the spending caps, when set
        #: Whether a front end that can click shows this view (permission prompts need one).
        self.interactive = True
        #: The answer's code blocks' Insert below (the kernel gives it the notebook's side).
        self.code_blocks = CodeBlocks()
        #: Accept all, for edit_cell's edits waiting for review (the kernel gives the page).
        self.edit_review = EditReview()
        #: At the end of a turn that changed something: what, and its Undo button.
        self.undo = UndoOffer(self._draw)
        self._created = clock()
        self._started: float | None = None
        self._ended: float | None = None
        # Assistant messages of this turn by id, in the order they first streamed.
        self._messages: dict[str, Message] = {}
        self._tool_calls: dict[str, ToolCallPart] = {}
        self._tool_results: dict[str, ToolResultPart] = {}
        self._tool_images: dict[str, str] = {}  # call id -> its result's thumbnails (HTML)
        self._children: dict[str, ChildRun] = {}  # call id -> the sub-agent's turn it runs
        #: The plan as the latest successful ``todos`` call wrote it.
        self.plan: list[Todo] = []
        #: The ``question`` tool's forms (loop thread; answers arrive on any thread).
        self.forms = QuestionForms()
        self._finished_callbacks: list[Callable[[RunView], None]] = []
        self._done: asyncio.Future[None] | None = None

        # Loop-thread-only redraw state: one pending timer coalesces every event
        # that arrives before it fires (never a redraw per token).
        self._redraw_handle: asyncio.TimerHandle | None = None
        self._last_draw = float("-inf")
        self._content_shown = False  # has any answer or reasoning text been drawn yet?
        self.redraws = 0

        #: Whether Stop was clicked (set on the click's thread, at once).
        self.stop_requested = False
        # Orders the click's thread against finish() on the loop: "Stopping…" is never
        # shown on a run that has already ended. Guards stop_requested, what
        # _show_stopping writes, and the _ended check made before writing them.
        self._stop_lock = threading.Lock()

    # -- display -----------------------------------------------------------

    def _widget(self) -> widgets.Widget:
        """The widget the page displays."""
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | tuple[dict, dict]:
        shown = self._widget()._repr_mimebundle_(**kwargs) or {}
        # ipywidgets returns the data; anywidget returns (data, metadata).
        data, metadata = shown if isinstance(shown, tuple) else (shown, None)
        bundle = {**data, "text/plain": self.to_text(), "text/markdown": self.to_markdown()}
        return bundle if metadata is None else (bundle, metadata)

    def static_bundle(self) -> dict[str, Any]:
        """The display data of a finished run without the live widget.

        A front end someone watches renders the text/markdown, so its text/plain is only the
        status line, not a second copy of the answer; a headless run's (nbconvert,
        papermill) keeps the whole answer for readers of plain text.
        """
        plain = self.to_text() if not self.interactive else f"[crush] {self.status_text()}"
        bundle = {"text/plain": plain, "text/markdown": self.to_markdown()}
        if self._answer_mime == "text/markdown":
            bundle.update(self.code_blocks.answer_data())
        return bundle

    @property
    def answer_markdown(self) -> str:
        return "\n\n".join(m.text for m in self._messages.values() if m.text)

    @property
    def reasoning_text(self) -> str:
        return "\n\n".join(m.reasoning for m in self._messages.values() if m.reasoning)

    def _streamed_chars(self) -> int:
        """Characters of answer and reasoning received so far (cheap: no joins)."""
        return sum(len(m.text) + len(m.reasoning) for m in self._messages.values())

    def status_text(self) -> str:
        head, elapsed, tail = self.status_parts()
        if elapsed is not None:
            head.append(f"{elapsed:.1f} s")
        return " · ".join(head + tail)

    def status_parts(self) -> tuple[list[str], float | None, list[str]]:
        """The status line around its elapsed time: (before, seconds, after)."""
        head = [f"session {self.labels.session}", self.labels.model]
        if self.labels.replay:
            head.append(self.labels.replay)
        head.append(self._phase_text())
        if self.context_meter is not None:
            head.append(str(self.context_meter))
        if self.context_note:
            head.append(self.context_note)
        tail = []
        if self.usage.total_tokens:
            tail.append(f"{self.usage.total_tokens} tokens")
        if self.cost is not None:
            tail.append(f"${self.cost:.4f}")
        spend = self.spend.text(self.cost if self._ended is not None else None)
        if spend:
            tail.append(spend)
        if self._stop_hint and self._ended is None:
            tail.append(self._stop_hint)
        if self.store_note:
            tail.append(self.store_note)
        return head, self.elapsed, tail

    @property
    def context_near_limit(self) -> bool:
        """Whether the context meter is within the model's reserve (views show it amber): the
        session's next request summarizes its older turns, or cuts them, first."""
        return self.context_meter is not None and self.context_meter.near_limit

    @property
    def elapsed(self) -> float | None:
        start = self._started if self._started is not None else self._created
        end = self._ended if self._ended is not None else self._clock()
        return end - start

    @property
    def ticking(self) -> bool:
        """Whether the elapsed time is still moving."""
        return self._ended is None

    def stop_with_interrupt(self) -> None:
        """For a cell that blocks until the answer: point at the interrupt as well.

        A Stop click the page sends on a kernel subshell (JupyterLab 4 and Notebook 7 do)
        lands at once (see :func:`~jupyter_crush.view.comm.take_clicks_where_sent`), but one
        sent on the main shell, as front ends without comms over subshells do, waits behind
        this very cell until the answer is complete; the interrupt works everywhere.
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
        if self.forms.waiting and self._ended is None:
            return "waiting for your answer"
        if self.summarizing and self._ended is None:
            return "summarizing the session"
        if self.phase == "error":
            return f"error: {self.finish_message}" if self.finish_message else "error"
        if self.phase == "canceled":
            return "canceled"
        if self.phase == "done" and self.finish_reason not in (None, FinishReason.END_TURN):
            return f"done ({self.finish_reason})"
        return self.phase

    def tool_rows(self) -> Iterator[ToolRow]:
        """The tool calls of this turn as shown, in call order."""
        for call_id, call in self._tool_calls.items():
            images = self._tool_images.get(call_id, "")
            row = tool_row(call, self._tool_results.get(call_id), self.waiting_permission, images)
            child = self._children.get(call_id)
            if child is not None:  # the row heads the sub-agent's section
                row = replace(row, state=child.status, label=child.heading)
            yield row

    def child_runs(self) -> list[tuple[str, ChildRun]]:
        """The sub-agents' turns of this turn, by the call that runs each, in call order."""
        return list(self._children.items())

    def child_html(self, call_id: str, *, answer: bool = True) -> str:
        """The sub-agent's section under its call's row ("" when the call runs none)."""
        child = self._children.get(call_id)
        return "" if child is None else child.html(answer=answer)

    def to_text(self) -> str:
        answer = self.answer_markdown
        return f"[crush] {self.status_text()}" + (f"\n\n{answer}" if answer else "")

    def to_markdown(self) -> str:
        lines = [f"**crush** · {markdown_literal(self.status_text())}"]
        reasoning = self.reasoning_text
        if reasoning:
            lines.append(
                f"<details><summary>Reasoning</summary>\n\n{html.escape(reasoning)}\n\n</details>"
            )
        if self.plan:
            lines.append(plan_markdown(self.plan, stopped=self.phase == "canceled"))
        for row in self.tool_rows():
            state = {"ok": "ok", "error": "error"}.get(row.state, "running")
            if row.label:  # a sub-agent's section: its task and how it ended
                state = html.escape(f"{row.label} · {row.state}")
            body = f"<pre>{html.escape(row.arguments)}</pre>"
            if row.result is not None:
                body += f"\n<pre>{html.escape(row.result)}</pre>{row.images}"
            body += self.child_html(row.call_id, answer=row.result is None)
            lines.append(
                f"<details><summary>tool {html.escape(row.name)} · {state}</summary>\n\n"
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
            self.waiting_permission = self._prompts_open()
            self._schedule_redraw()
        elif isinstance(event, ToolFinished):
            self._tool_calls[event.call.id] = event.call
            self._tool_results[event.call.id] = event.result
            # Read and encoded once, not at every redraw.
            self._tool_images[event.call.id] = _images_html(event.result)
            self._take_plan(event)
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
            self._on_started()
        elif isinstance(event, PermissionAsked):
            self.waiting_permission = True
            self._draw()
        elif isinstance(event, ChildEvent):
            child = self._children.get(event.call_id)
            if child is None:
                child = self._children[event.call_id] = ChildRun(event.task, event.session_id)
            child.on_event(event.event)
            self._schedule_redraw()
        elif isinstance(event, Finished):
            self.finish(event.reason, event.message, event.usage, event.cost)
        elif isinstance(event, Spending):
            self.spend.update(event)
            self._draw()
        elif isinstance(event, ContextUsed | Summarizing | Compacted):
            self._on_context(event)

    def _take_plan(self, event: ToolFinished) -> None:
        """A successful ``todos`` call's plan replaces the one shown."""
        if event.call.name == "todos" and not event.result.is_error:
            plan = plan_from_metadata(event.result.metadata)
            if plan is not None:
                self.plan = plan

    def _on_context(self, event: CompactionEvent) -> None:
        if isinstance(event, ContextUsed):
            self.context_meter = event.meter
        elif isinstance(event, Summarizing):
            self.summarizing = True
        else:
            self.summarizing = False
            self.context_note = event.note or "summarized the earlier turns"
        self._draw()

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
        if self._redraw_handle is not None:
            self._redraw_handle.cancel()
            self._redraw_handle = None
        self._on_finished()
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

    def _redraw_delay(self) -> float:
        """Seconds until the next coalesced redraw may run (<= 0: now)."""
        return self._last_draw + self._min_interval - self._clock()

    def _schedule_redraw(self) -> None:
        if self._ended is not None:
            return
        delay = self._redraw_delay()
        loop = self._get_loop()
        pending = self._redraw_handle
        if pending is not None:
            if pending.when() <= loop.time() + delay + _REDRAW_SLACK:
                return
            pending.cancel()  # what waits now may go sooner (a batch filled up)
            self._redraw_handle = None
        if delay <= 0:
            self._redraw()
        else:
            self._redraw_handle = loop.call_later(delay, self._timed_draw)

    def _timed_draw(self) -> None:
        self._redraw_handle = None
        self._redraw()

    def _draw_now(self) -> None:
        if self._redraw_handle is not None:
            self._redraw_handle.cancel()
            self._redraw_handle = None
        self._redraw()

    def _redraw(self) -> None:
        self._last_draw = self._clock()
        self.redraws += 1
        self._draw()

    def _draw(self) -> None:
        """Bring the page up to date with this view's state (loop thread)."""
        raise NotImplementedError

    def _on_started(self) -> None:
        """The run left the queue (loop thread)."""

    def _on_finished(self) -> None:
        """The run ended; called before the last :meth:`_draw` (loop thread)."""

    def _prompts_open(self) -> bool:
        """Whether a permission prompt is still shown."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the view's widgets once the static answer has replaced it on the page.

        Every widget is a comm the kernel (and the front end) would otherwise keep for the
        rest of the session, one set per prompt.
        """
        close_widgets(self._widget())

    # -- stop ------------------------------------------------------------------

    def request_stop(self) -> None:
        """The Stop click, on whichever thread delivered it (usually a subshell's).

        The loop may be held by a blocking cell, so the cancel and the view's "Stopping…"
        happen here (the iopub socket is thread-safe); the status line follows on the loop.
        """
        self._on_stop()
        with self._stop_lock:
            if self._ended is not None:
                return
            self.stop_requested = True
            self._show_stopping()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._draw_stopping)

    def _show_stopping(self) -> None:
        """Say "Stopping…" on the page (the click's thread, under ``_stop_lock``)."""
        raise NotImplementedError

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
        raise NotImplementedError

    # -- question forms --------------------------------------------------------

    def ask_questions(self, request: QuestionRequest, answering: Answering) -> Closing:
        """Show a form of the request's questions; ``answering`` gets the answers (any
        thread). Returns what ends the form (loop thread): answered, or withdrawn (``None``).
        """
        close = self.forms.open(request, answering)
        self._draw()

        def end(answers: Any) -> None:
            close(answers)
            self._draw()

        return end

    # -- undo, Accept all, Insert below, as the pages reach them ---------------------------

    @property
    def changes(self) -> str:
        """What the turn changed, beside its Undo button ("" when nothing)."""
        return self.undo.changes

    @property
    def undo_note(self) -> str:
        """What the undo did, or why it did nothing ("" until it ran)."""
        return self.undo.note

    @property
    def offers_undo(self) -> bool:
        """Whether the view shows an Undo button (keep it on the page at the run's end)."""
        return bool(self.undo.changes) and self.interactive

    def request_undo(self) -> None:
        """The Undo click (any thread): see :meth:`UndoOffer.request`."""
        self.undo.request(self._loop)

    def pending_edits(self) -> dict[str, str]:
        """The edit_cell calls waiting for the user's review: call id -> the cell's id."""
        return waiting_edits(self.tool_rows(), self._tool_calls)

    @property
    def edits_shown(self) -> dict[str, str]:
        """The edits waiting for review as last drawn (loop thread)."""
        return self.edit_review.shown

    @edits_shown.setter
    def edits_shown(self, shown: dict[str, str]) -> None:
        self.edit_review.shown = shown

    def accept_edits(self) -> None:
        """Accept all (any thread): the edits drawn as waiting, accepted in their cells."""
        self.edit_review.accept_all()

    def insert_code(self, code: Any) -> None:
        """An Insert below click on one of the answer's code blocks (any thread)."""
        self.code_blocks.insert(code)


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
