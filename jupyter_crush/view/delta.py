"""The delta run view: the kernel sends only what is new, the page appends it.

One anywidget model per run. Its module is a small loader (``delta_view_loader.js``); the
view's own module (``delta_view.js`` and its CSS) goes to the page once per kernel, in a
:class:`ViewModule` model that every run's model names, and the page imports it once.
Everything the run shows travels as custom comm messages:

- kernel -> page ``{"seq": n, "ops": [...]}``, numbered from 1 without gaps. Ops:
  ``["status", {"head", "elapsed", "ticking", "tail"}]`` (the page ticks the elapsed time
  itself), ``["stop", "ready" | "stopping" | "disabled"]``, ``["answer+", text]`` /
  ``["reasoning+", text]`` (appended), ``["answer=", text]`` / ``["reasoning=", text]``
  (replaced: only if a text ever stops being a prefix of its successor), ``["tool", row]``
  (one call, added or changed), ``["ask", prompt]`` / ``["asked", id]`` (a permission
  prompt shown / gone), ``["todo", {"at": i, "content", "status", "active_form"}]`` (one
  item of the plan, added or changed) / ``["todos", n]`` (the plan cut to ``n`` items), and
  ``["question", form]`` (a question form shown, answered or withdrawn; it is small), and
  ``["changes", {"summary", "note"}]`` (at the end of a turn that changed something: what
  it changed, beside an Undo button, and what the undo did).
- the model's state carries ``start = {"snapshot": state, "seq": n}``, the state as of op
  ``n``, read afresh whenever the page asks for the model's state: at comm open (``n`` is
  0) and when a reloaded page restores its models. The page's model keeps the state from
  there on, applying each ops message, so a view renders at once from it, with no round
  trip before the first token.
- page -> kernel ``{"event": "sync", "nonce": …}`` when the model finds a gap in ``seq``;
  the kernel answers ``{"snapshot": state, "seq": n, "for": nonce}`` and the model applies
  the ops after ``n``.
- page -> kernel ``{"event": "click", "target": "stop"}``,
  ``{"event": "click", "target": "decide", "ask": id, "decision": …}``,
  ``{"event": "click", "target": "answer", "question": id, "answers": [...]}`` and
  ``{"event": "click", "target": "undo"}``. Clicks are taken on
  the subshell the page sent them on (:func:`~jupyter_crush.view.comm.take_clicks_where_sent`);
  the page shows "Stopping…" before it sends the click.

A sub-agent's turn (the ``agent`` tool) shows inside its call's tool row, collapsed under the
row's heading (the task and the child's state, ``label`` and ``state`` of the ``tool`` op):
``["child", call_id]`` opens its section, ``["child+", [call_id, text]]`` /
``["child=", [call_id, text]]`` append to / replace its text, and
``["child tool", [call_id, row]]`` adds or changes one of its tool calls.

Why anywidget and not a model in the prebuilt JupyterLab extension: VS Code loads no
JupyterLab extension, but it renders anywidget models, whose module travels in the
models' state; JupyterLab 4 and Notebook 7 get anywidget's prebuilt extension from its
wheel.

The kernel batches: the first token goes out at once, then at most ``redraw_rate``
messages a second, and while fewer than :data:`BATCH_CHARS` characters wait, at most one
every :data:`TRICKLE_INTERVAL` seconds. A message's envelope (header, parent header,
signature) is ~500 bytes, so at 500 tokens/s (~2,700 characters a second, ~700 a message)
the envelopes add ~0.7 bytes per answer character to the 1 of the text itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import ipywidgets as widgets
import traitlets

from ..core.tools import Decision, PermissionRequest
from .base import RunLabels, RunView
from .comm import take_clicks_where_sent
from .permissions import permission_summary

#: Fewer characters than this waiting: send at most every TRICKLE_INTERVAL seconds.
BATCH_CHARS = 4096
TRICKLE_INTERVAL = 0.25

_HERE = Path(__file__).resolve().parent
_MODULE_ESM = (_HERE / "delta_view.js").read_text(encoding="utf-8")
_MODULE_CSS = (_HERE / "delta_view.css").read_text(encoding="utf-8")
#: Names this version of the module in the page, which imports each version once.
MODULE_HASH = hashlib.sha256(f"{_MODULE_ESM}\0{_MODULE_CSS}".encode()).hexdigest()[:16]


class ViewModule(widgets.Widget):
    """The delta view's page module and CSS, on one comm per kernel (a model with no view).

    Sent with each run's model, the module (~21 KB) would cost more than a short answer
    itself; every :class:`RunWidget` names this model instead.
    """

    esm = traitlets.Unicode().tag(sync=True)
    css = traitlets.Unicode().tag(sync=True)


# The kernel's ViewModule, while its comm is open (Widget.close_all() closes it; the next
# run makes another). Loop thread only, as every view is made there.
_view_module: ViewModule | None = None


def view_module() -> ViewModule:
    """The kernel's :class:`ViewModule`, opened on first use."""
    global _view_module
    if _view_module is None or _view_module.comm is None:
        _view_module = ViewModule(esm=_MODULE_ESM, css=_MODULE_CSS)
    return _view_module


class RunWidget(anywidget.AnyWidget):
    """The comm of a delta view; its front end is ``delta_view.js``, loaded through
    ``delta_view_loader.js`` from the kernel's :class:`ViewModule`."""

    _esm = _HERE / "delta_view_loader.js"
    #: Version of the message protocol above, for the page to check.
    protocol = traitlets.Int(2).tag(sync=True)
    #: Names this run's state in the page (each view gets the model through a new proxy).
    run_id = traitlets.Unicode().tag(sync=True)
    #: The model id of the kernel's ViewModule, and the version of the module it holds.
    module_id = traitlets.Unicode().tag(sync=True)
    module_hash = traitlets.Unicode(MODULE_HASH).tag(sync=True)
    #: No Layout model (a comm of its own per run): the view sizes itself in its CSS.
    layout = traitlets.Any(None)

    def __init__(self, start: Callable[[], dict[str, Any]], **kwargs: Any) -> None:
        self._start = start
        super().__init__(run_id=uuid.uuid4().hex, module_id=view_module().model_id, **kwargs)

    def get_state(self, key: Any = None, drop_defaults: bool = False) -> dict[str, Any]:
        """The synced traits, and whole (comm open, a page restoring it) the run's
        ``start``: the page state as of now, read when asked rather than kept in sync."""
        state = super().get_state(key, drop_defaults)
        if key is None:
            state["start"] = self._start()
        return state


class DeltaRunView(RunView):
    """A run view that sends the page only what changed since its last message."""

    def __init__(self, labels: RunLabels, **kwargs: Any) -> None:
        super().__init__(labels, **kwargs)
        # Loop thread only: the permission prompts to show, by ask id.
        self._asks: dict[str, dict[str, str]] = {}
        # Ask id -> its decide callback. Written on the loop thread; the click's thread
        # only reads one key (atomic), and a late click on a removed prompt finds none.
        self._deciders: dict[str, Callable[[Decision], None]] = {}
        self._drawn_chars = 0  # _streamed_chars() at the last draw (loop thread)
        # Guards _seq and _sent, and the order of ops messages on the comm: the loop
        # thread draws, the click's thread sends "stopping"; a message's seq and the
        # state it moves _sent to go together.
        self._send_lock = threading.Lock()
        self._seq = 0
        #: What the page has been sent, as of op ``_seq`` (the snapshot of a sync).
        self._sent: dict[str, Any] = {
            "format": "text" if self._answer_mime == "text/plain" else "markdown",
            "status": {},
            "stop": "ready",
            "answer": "",
            "reasoning": "",
            "tools": {},
            "children": {},  # call id -> its sub-agent's section: call_id, answer, tools
            "asks": {},
            "todos": [],
            "questions": {},
            "changes": {"summary": "", "note": ""},
        }
        #: Ops messages sent so far.
        self.messages_sent = 0
        with self._send_lock:
            self._ops()  # the opening state goes in the model's own (comm open), not an op
        self.widget = RunWidget(self.snapshot)
        self.widget.on_msg(self._on_message)
        take_clicks_where_sent(self.widget)

    def _widget(self) -> widgets.Widget:
        return self.widget

    def _prompts_open(self) -> bool:
        return bool(self._asks)

    def _on_finished(self) -> None:
        self._asks.clear()
        self._deciders.clear()

    def _redraw_delay(self) -> float:
        delay = super()._redraw_delay()
        if self._streamed_chars() - self._drawn_chars < BATCH_CHARS:
            delay = max(delay, self._last_draw + TRICKLE_INTERVAL - self._clock())
        return delay

    # -- kernel -> page --------------------------------------------------------

    def _draw(self) -> None:
        self._drawn_chars = self._streamed_chars()
        with self._send_lock:
            ops = self._ops()
            if ops:
                self._send_ops(ops)

    def _ops(self) -> list[list[Any]]:
        """What changed since the last message, applied to ``_sent`` (under _send_lock)."""
        sent = self._sent
        ops: list[list[Any]] = []
        head, elapsed, tail = self.status_parts()
        status = {
            "head": " · ".join(head),
            "tail": " · ".join(tail),
            "ticking": self.ticking,
            # The meter's text, shown amber, when the next request summarizes first.
            "warn": str(self.context_meter) if self.context_near_limit else "",
        }
        if {k: sent["status"].get(k) for k in status} != status:
            status["elapsed"] = round(elapsed or 0.0, 3)
            sent["status"] = status
            ops.append(["status", status])
        for key, text in (("reasoning", self.reasoning_text), ("answer", self.answer_markdown)):
            shown = sent[key]
            if text == shown:
                continue
            if text.startswith(shown):
                ops.append([f"{key}+", text[len(shown) :]])
            else:
                ops.append([f"{key}=", text])
            sent[key] = text
        for row in self.tool_rows():
            fields = dataclasses.asdict(row)
            if sent["tools"].get(row.call_id) != fields:
                sent["tools"][row.call_id] = fields
                ops.append(["tool", fields])
        ops += self._child_ops()
        for ask_id in [a for a in sent["asks"] if a not in self._asks]:
            del sent["asks"][ask_id]
            ops.append(["asked", ask_id])
        for ask_id, ask in self._asks.items():
            if ask_id not in sent["asks"]:
                sent["asks"][ask_id] = ask
                ops.append(["ask", ask])
        ops += self._plan_ops() + self._form_ops()
        changes = {"summary": self.changes, "note": self.undo_note}
        if changes != sent["changes"]:
            sent["changes"] = changes
            ops.append(["changes", changes])
        stop = "disabled" if self._ended is not None else sent["stop"]
        if stop != sent["stop"]:
            sent["stop"] = stop
            ops.append(["stop", stop])
        return ops

    def _plan_ops(self) -> list[list[Any]]:
        """The plan's items that changed, each alone, and a cut if it got shorter."""
        shown: list[dict[str, str]] = self._sent["todos"]
        ops: list[list[Any]] = []
        for at, todo in enumerate(self.plan):
            item = dataclasses.asdict(todo)
            if at >= len(shown) or shown[at] != item:
                shown[at : at + 1] = [item]
                ops.append(["todo", {"at": at, **item}])
        if len(shown) > len(self.plan):
            del shown[len(self.plan) :]
            ops.append(["todos", len(self.plan)])
        return ops

    def _form_ops(self) -> list[list[Any]]:
        """The question forms shown, answered or withdrawn since the last message."""
        shown = self._sent["questions"]
        ops: list[list[Any]] = []
        for form_id, form in self.forms.forms.items():
            drawn = form.as_json()
            if shown.get(form_id) != drawn:
                shown[form_id] = drawn
                ops.append(["question", drawn])
        return ops

    def _child_ops(self) -> list[list[Any]]:
        """The sub-agents' sections: new ones, their text appended, their changed tool rows."""
        ops: list[list[Any]] = []
        for call_id, child in self.child_runs():
            shown = self._sent["children"].get(call_id)
            if shown is None:
                shown = {"call_id": call_id, "answer": "", "tools": {}}
                self._sent["children"][call_id] = shown
                ops.append(["child", call_id])
            text = child.answer
            if text != shown["answer"]:
                if text.startswith(shown["answer"]):
                    ops.append(["child+", [call_id, text[len(shown["answer"]) :]]])
                else:
                    ops.append(["child=", [call_id, text]])
                shown["answer"] = text
            for row in child.rows():
                fields = dataclasses.asdict(row)
                if shown["tools"].get(row.call_id) != fields:
                    shown["tools"][row.call_id] = fields
                    ops.append(["child tool", [call_id, fields]])
        return ops

    def _send_ops(self, ops: list[list[Any]]) -> None:
        """One numbered message (under _send_lock)."""
        if self.widget.comm is None:
            return  # closed: the static answer has replaced the view
        self._seq += 1
        self.messages_sent += 1
        self.widget.send({"seq": self._seq, "ops": ops})

    def _show_stopping(self) -> None:
        with self._send_lock:
            if self._sent["stop"] == "ready":
                self._sent["stop"] = "stopping"
                self._send_ops([["stop", "stopping"]])

    def snapshot(self) -> dict[str, Any]:
        """What the page has been sent, whole, and the seq it stands at (any thread)."""
        with self._send_lock:
            sent = self._sent
            state = {
                **sent,
                "tools": list(sent["tools"].values()),
                "children": [
                    {**shown, "tools": list(shown["tools"].values())}
                    for shown in sent["children"].values()
                ],
                "asks": list(sent["asks"].values()),
                "todos": list(sent["todos"]),  # items are replaced, never changed in place
                "questions": list(sent["questions"].values()),
            }
            return {"snapshot": state, "seq": self._seq}

    def _send_snapshot(self, nonce: str) -> None:
        """Answer a view's sync (loop thread): bring _sent up to date, then send it whole."""
        self._draw()
        if self.widget.comm is not None:
            self.widget.send({**self.snapshot(), "for": nonce})

    # -- page -> kernel ----------------------------------------------------------

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        # Any thread: a click arrives on the subshell the page sent it on.
        if not isinstance(content, dict):
            return
        event, target = content.get("event"), content.get("target")
        if event == "click" and target == "stop":
            self.request_stop()
        elif event == "click" and target == "decide":
            decide = self._deciders.get(str(content.get("ask")))
            if decide is not None and content.get("decision") in set(Decision):
                decide(Decision(content["decision"]))
        elif event == "click" and target == "undo":
            self.request_undo()
        elif event == "click" and target == "insert":
            self.insert_code(content.get("code"))
        elif event == "click" and target == "answer":
            self.forms.answer(str(content.get("question")), content.get("answers"))
        elif event == "sync":
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._send_snapshot, str(content.get("nonce", "")))

    # -- permission prompt ---------------------------------------------------------

    def ask_permission(
        self, request: PermissionRequest, decide: Callable[[Decision], None]
    ) -> Callable[[], None]:
        ask_id = request.tool_call_id or str(id(request))
        self._deciders[ask_id] = decide
        self._asks[ask_id] = {
            "id": ask_id,
            "tool": request.tool_name,
            "what": permission_summary(request),
        }
        self.waiting_permission = True
        self._draw()

        def remove() -> None:
            self._asks.pop(ask_id, None)
            self._deciders.pop(ask_id, None)
            self.waiting_permission = bool(self._asks)
            self._draw()

        return remove
