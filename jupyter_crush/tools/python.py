"""The ``python`` tool: run code in the user's namespace, as a cell would.

How it executes, and why
------------------------
The code runs in a **worker thread** against ``shell.user_ns``: IPython's input
transformers turn ``%magics`` and ``!cmd`` into Python first, the last
expression's value is reported like ``Out[n]``, and top-level ``await`` runs
on a private event loop in the worker. The kernel's own event loop stays free
the whole time, so the run widget keeps streaming, the Stop button works, and
other cells can execute.

The alternative — compile and exec on the kernel's main thread — would freeze
the kernel for as long as the code runs, and a time limit would be
unenforceable: nothing can preempt a busy main thread short of SIGINT, which
belongs to the user's own cells. The price of the worker thread:

* code that insists on the main thread fails there (``signal.signal``,
  GUI toolkits, interactive matplotlib backends; the inline/Agg backends work);
* a cell the user runs at the same time shares the namespace without
  coordination, as two threads in one program would.

Time limit and Stop
-------------------
When the limit passes or the run is stopped (the tool coroutine receives
``CancelledError``), a :class:`ToolInterrupted` exception is raised *inside the
worker thread* with ``PyThreadState_SetAsyncExc``. CPython delivers it at the
next bytecode boundary, so Python loops stop at once, but a thread blocked in
C (``time.sleep``, a socket read, a long numpy call) sees it only when that
call returns. A time-limited run waits ``grace`` seconds for that; after that
the result says the code was abandoned: it keeps running in the background,
its output still goes nowhere near the notebook, and it cannot be killed
(threads cannot be). A stop never waits: the ``CancelledError`` propagates at
once and the worker dies at its next bytecode.

Output
------
``print`` output, warnings on stderr and ``display()`` calls *from the worker
thread* are captured into the tool result, routed by thread: while a run is in
flight ``sys.stdout``/``sys.stderr`` and the shell's display publisher are
replaced by proxies that send the worker's writes to its buffer and everyone
else's (a cell running at the same time) to where they went before. Threads
the code itself starts are not captured. Figures the code creates are listed
in the result and then closed: the user does not see them (the inline backend
would otherwise draw them in whichever cell runs next), so the model is told
to propose plotting code with ``insert_cell`` instead.

Images
------
The model sees what the code plotted: each figure the run leaves open, each PNG/JPEG
the code displays, and a last expression that renders as an image (a ``Figure``, a PIL
image, ``IPython.display.Image``) go with the result as images (checked and downscaled
by :mod:`jupyter_crush.core.images`; one that cannot be sent is a line in the text saying why).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import ctypes
import inspect
import os
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

from ..core.images import ImageError, image_from_value, images_from_bundle
from ..core.message import ImagePart
from ..core.model import ToolSpec
from ..core.output import MAX_OUTPUT_CHARS, CappedBuffer, clean, truncate
from ..core.tools import Tool, ToolContext, ToolResult

DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 600.0
#: How long a timed-out run may take to notice the interrupt before it is abandoned.
DEFAULT_GRACE = 2.0
_RESULT_REPR_CHARS = 10_000
_THIS_FILE = __file__

DESCRIPTION = """\
Run Python code in the user's notebook kernel, in the same namespace as their cells: \
variables you define stay defined, and you can read the user's variables (use the \
`variables` tool first to see what exists). IPython syntax works (%magics, !shell).

Returns printed output, the value of the last expression (like a cell's Out[]), \
display() output summarized as text, figures created, and the full traceback if the \
code raises. Figures, displayed PNG/JPEG images and a last value that is an image \
come back as images you can look at. Output is truncated when long, so print \
summaries (df.head(), len(x)) rather than whole objects.

The code runs with a time limit (`timeout` seconds, default {timeout:g}, at most \
{max_timeout:g}); prefer small steps. Code that blocks in C (sleep, network) can \
outlive the limit. The user does not see this code's output or figures (figures are \
described, then closed): to show the user something, propose the code with insert_cell."""


class ToolInterrupted(BaseException):
    """Raised inside the worker thread when the time limit passes or the run is stopped.

    A ``BaseException`` so that ``except Exception`` in the user's code does not
    swallow it.
    """


# -- routing output by thread --------------------------------------------------------


class _Router:
    """Sends stdout/stderr/display writes from capturing threads to their buffers.

    Proxies are installed while at least one thread captures and removed when the
    last one leaves, so an idle kernel has its own streams untouched.
    """

    def __init__(self) -> None:
        # Guards _sinks and the installed-proxy state together: a proxy is installed
        # exactly while _sinks is non-empty.
        self._lock = threading.Lock()
        self._sinks: dict[int, CappedBuffer] = {}
        self._installed: dict[str, Any] = {}
        # id(display publisher) -> (publisher, {method name: its own instance attribute
        # or None}), to undo the patch exactly.
        self._shells: dict[int, tuple[Any, dict[str, Any]]] = {}

    def sink(self) -> CappedBuffer | None:
        # Lock-free on purpose (every print goes through here): a dict lookup is atomic
        # under the GIL, and a thread's own entry only changes from that thread.
        return self._sinks.get(threading.get_ident())

    def enter(self, sink: CappedBuffer, shell: Any) -> None:
        with self._lock:
            if not self._sinks:
                self._install()
            self._sinks[threading.get_ident()] = sink
            self._patch_display(shell)

    def leave(self) -> None:
        with self._lock:
            self._sinks.pop(threading.get_ident(), None)
            if not self._sinks:
                self._uninstall()

    def _install(self) -> None:
        for name in ("stdout", "stderr"):
            original = getattr(sys, name)
            proxy = _RoutedStream(original, self)
            self._installed[name] = proxy
            setattr(sys, name, proxy)

    def _uninstall(self) -> None:
        for name, proxy in self._installed.items():
            # Someone may have replaced the stream after us (a cell's redirect_stdout);
            # leave theirs alone. Our proxy, if restored later, just forwards.
            if getattr(sys, name) is proxy:
                setattr(sys, name, proxy.original)
        self._installed.clear()
        for pub, own in self._shells.values():
            for name, attribute in own.items():
                if attribute is None:
                    pub.__dict__.pop(name, None)
                else:
                    setattr(pub, name, attribute)
        self._shells.clear()

    def _patch_display(self, shell: Any) -> None:
        """Route ``display()`` and ``clear_output()`` of capturing threads away from the cell."""
        pub = getattr(shell, "display_pub", None)
        if pub is None or id(pub) in self._shells:
            return
        own = {name: pub.__dict__.get(name) for name in ("publish", "clear_output")}
        publish, clear_output = pub.publish, pub.clear_output
        router = self

        def routed_publish(data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            sink = router.sink()
            if sink is None:
                return publish(data, *args, **kwargs)
            sink.write(_summarize_display(data) + "\n")
            images = getattr(_RUN_IMAGES, "images", None)
            if images is not None:
                found, notes = images_from_bundle(data, "display()")
                images.extend(found)
                for note in notes:
                    sink.write(note + "\n")
            return None

        def routed_clear_output(*args: Any, **kwargs: Any) -> Any:
            # Clearing would wipe whichever cell the kernel is busy with: drop it.
            if router.sink() is None:
                return clear_output(*args, **kwargs)
            return None

        pub.publish = routed_publish
        pub.clear_output = routed_clear_output
        self._shells[id(pub)] = (pub, own)


_ROUTER = _Router()
#: The images of the run on this thread (a worker's own list while its code runs).
_RUN_IMAGES = threading.local()


class _RoutedStream:
    """Stands in for ``sys.stdout``/``sys.stderr`` while a run captures output."""

    def __init__(self, original: Any, router: _Router) -> None:
        self.original = original
        self._router = router

    def write(self, text: str) -> int:
        sink = self._router.sink()
        if sink is not None:
            return sink.write(text)
        return self.original.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._router.sink() is None:
            self.original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


def _summarize_display(data: dict[str, Any]) -> str:
    plain = data.get("text/plain", "")
    if isinstance(plain, list):
        plain = "".join(plain)
    others = [mime for mime in data if mime != "text/plain"]
    label = f"[display {', '.join(others)}]" if others else "[display]"
    return f"{label} {truncate(str(plain), 2_000)}".rstrip()


# -- one run in a worker thread ------------------------------------------------------


@dataclass
class _Outcome:
    output: str = ""
    has_result: bool = False
    result: str = ""
    error: BaseException | None = None
    traceback: str = ""
    figures: list[str] = field(default_factory=list)
    images: list[ImagePart] = field(default_factory=list)


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> int:
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


class _Worker:
    """Runs one piece of code in its own thread and can interrupt it."""

    def __init__(self, shell: Any, code: str, loop: asyncio.AbstractEventLoop, limit: int):
        self.shell = shell
        self.code = code
        self.loop = loop
        self.buffer = CappedBuffer(limit)
        self.done: asyncio.Future[_Outcome] = loop.create_future()
        # Guards _in_user_code and async-exception delivery: an interrupt is only ever
        # raised while the thread is inside the user's code, never in our bookkeeping.
        self._lock = threading.Lock()
        self._in_user_code = False
        self.interrupt_reason = ""
        self.thread = threading.Thread(target=self._main, name="crush-python", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def interrupt(self, reason: str) -> None:
        with self._lock:
            self.interrupt_reason = self.interrupt_reason or reason
            if self._in_user_code and self.thread.ident is not None:
                _set_async_exc(self.thread.ident, ToolInterrupted)

    # -- worker thread --

    def _main(self) -> None:
        outcome = _Outcome()
        _RUN_IMAGES.images = outcome.images
        _ROUTER.enter(self.buffer, self.shell)
        try:
            self._run(outcome)
        finally:
            _ROUTER.leave()
            _RUN_IMAGES.images = None
            outcome.output = self.buffer.getvalue()
            # RuntimeError: the kernel's loop closed while this run was abandoned.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._resolve, outcome)

    def _resolve(self, outcome: _Outcome) -> None:
        if not self.done.done():
            self.done.set_result(outcome)

    def _enter_user_code(self) -> None:
        with self._lock:
            if self.interrupt_reason:
                # Stopped before the thread got this far: the code must not start at all.
                raise ToolInterrupted
            self._in_user_code = True

    def _leave_user_code(self) -> None:
        # An interrupt sent just as the code finished may be pending or may fire
        # anywhere up to the point the flag is cleared; retry until it is cleared
        # with nothing pending, after which interrupt() no longer raises.
        while True:
            try:
                with self._lock:
                    self._in_user_code = False
                    _set_async_exc(threading.get_ident(), None)
                return
            except ToolInterrupted:
                continue

    def _run(self, outcome: _Outcome) -> None:
        figures_before = _figure_numbers()
        try:
            try:
                self._enter_user_code()
                value, has_value = _execute(self.shell, self.code)
            finally:
                self._leave_user_code()
            if has_value and value is not None:  # like Out[]: None is not shown
                outcome.has_result = True
                outcome.result = _format_result(self.shell, value)
                outcome.result += _value_image(value, outcome.images)
        except BaseException as exc:
            outcome.error = exc
            outcome.traceback = _format_exception(exc)
        outcome.figures = _new_figures(figures_before, outcome.images)


def _transformed(shell: Any, code: str) -> str:
    """``code`` as Python: IPython's transforms (``%magics``, ``!cmd``) applied."""
    return shell.transform_cell(code) if shell is not None else code


def _execute(shell: Any, code: str) -> tuple[Any, bool]:
    """Compile ``code`` like a cell and run it; returns (last expression value, whether any)."""
    source = _transformed(shell, code)
    filename = _register_source(shell, source)
    tree = ast.parse(source, filename=filename)
    last: ast.expr | None = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body.pop().value
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    global_ns = shell.user_global_ns if shell is not None else {}
    local_ns = shell.user_ns if shell is not None else global_ns
    if tree.body:
        _eval(compile(tree, filename, "exec", flags=flags), global_ns, local_ns)
    if last is None:
        return None, False
    expr = ast.Expression(last)
    return _eval(compile(expr, filename, "eval", flags=flags), global_ns, local_ns), True


def _eval(code: Any, global_ns: dict[str, Any], local_ns: dict[str, Any]) -> Any:
    value = eval(code, global_ns, local_ns)
    if code.co_flags & inspect.CO_COROUTINE:
        # Top-level await: this thread has no loop of its own, so give it one.
        value = asyncio.run(value)
    return value


def _register_source(shell: Any, source: str) -> str:
    """Make the source visible to tracebacks (linecache) under a stable name."""
    compiler = getattr(shell, "compile", None)
    if compiler is not None and hasattr(compiler, "cache"):
        return compiler.cache(source)
    return "<crush-python>"


def _format_result(shell: Any, value: Any) -> str:
    rich = _rich_mimetypes(value)
    try:
        formatter = getattr(shell, "display_formatter", None)
        if formatter is not None:
            data, _ = formatter.format(value, include=("text/plain",))
            text = data.get("text/plain", "") or repr(value)
        else:
            text = repr(value)
    except Exception as exc:  # a broken __repr__ must not lose the run's output
        text = f"<{type(value).__name__} object; repr failed: {exc!r}>"
    text = truncate(text, _RESULT_REPR_CHARS, what="repr")
    if rich:
        text += f"\n[rich output: {', '.join(rich)}]"
    return text


_RICH = {
    "_repr_html_": "text/html",
    "_repr_markdown_": "text/markdown",
    "_repr_svg_": "image/svg+xml",
    "_repr_png_": "image/png",
    "_repr_jpeg_": "image/jpeg",
    "_repr_latex_": "text/latex",
    "_repr_json_": "application/json",
    "_repr_mimebundle_": "mimebundle",
}


def _rich_mimetypes(value: Any) -> list[str]:
    kinds = [mime for attr, mime in _RICH.items() if _has_method(value, attr)]
    if type(value).__module__.startswith("matplotlib.") and "image/png" not in kinds:
        kinds.append("image/png")
    return kinds


def _has_method(value: Any, attr: str) -> bool:
    try:
        return callable(getattr(type(value), attr, None))
    except Exception:
        return False


def _format_exception(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(type(exc), exc))
    # Drop the leading frames of this module and of asyncio.run (top-level await) so
    # the model sees only its own code.
    tb = exc.__traceback__
    while tb is not None and _is_machinery(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


_ASYNCIO_DIR = os.path.dirname(asyncio.__file__)


def _is_machinery(filename: str) -> bool:
    return filename == _THIS_FILE or filename.startswith(_ASYNCIO_DIR + os.sep)


def _figure_numbers() -> set[int]:
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return set()
    try:
        return set(pyplot.get_fignums())
    except Exception:
        return set()


def _value_image(value: Any, images: list[ImagePart]) -> str:
    """Add the image ``value`` renders as to ``images``; a note if it cannot be sent."""
    try:
        image = image_from_value(value, "Out")
    except ImageError as error:
        return f"\n[image not sent: {error}]"
    except Exception as error:  # a broken _repr_png_ must not lose the run's output
        return f"\n[image not sent: rendering it failed: {error!r}]"
    if image is not None:
        images.append(image)
    return ""


def _new_figures(before: set[int], images: list[ImagePart]) -> list[str]:
    """Describe, render into ``images``, then close the figures the run left open.

    Closed because the inline backend would otherwise draw them at the end of
    whichever cell the user runs next, in that cell's output.
    """
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return []
    described = []
    for number in sorted(_figure_numbers() - before):
        try:
            fig = pyplot.figure(number)
            axes = fig.get_axes()
            titles = [ax.get_title() for ax in axes if ax.get_title()]
            width, height = (fig.get_size_inches() * fig.dpi).round().astype(int)
            label = f"<matplotlib Figure {number}: {width}x{height} px, {len(axes)} axes"
            label += f", titles {titles!r}>" if titles else ">"
            try:
                images.append(image_from_value(fig, f"Figure {number}"))
            except ImageError as error:
                label += f" [image not sent: {error}]"
            described.append(label)
            pyplot.close(fig)
        except Exception as exc:  # a broken figure must not lose the run's output
            described.append(f"<matplotlib figure {number}: {exc!r}>")
    return described


# -- the tool --------------------------------------------------------------------------


@dataclass
class PythonTool:
    """Runs model-written code in ``shell``'s user namespace (see the module docstring)."""

    shell: Any
    timeout: float = DEFAULT_TIMEOUT
    max_timeout: float = MAX_TIMEOUT
    grace: float = DEFAULT_GRACE
    limit: int = MAX_OUTPUT_CHARS

    def tool(self) -> Tool:
        spec = ToolSpec(
            name="python",
            description=DESCRIPTION.format(timeout=self.timeout, max_timeout=self.max_timeout),
            parameters={
                "type": "object",
                "properties": {
                    "code": {"type": "string", "description": "The Python code to run."},
                    "timeout": {
                        "type": "number",
                        "description": f"Seconds before the code is interrupted "
                        f"(default {self.timeout:g}, max {self.max_timeout:g}).",
                    },
                },
                "required": ["code"],
                "additionalProperties": False,
            },
        )
        return Tool(spec=spec, run=self.run, changes_state=True, summarize=summarize)

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        code = args.get("code")
        if not isinstance(code, str) or not code.strip():
            return ToolResult("python: 'code' must be a non-empty string of Python", True)
        timeout = args.get("timeout", self.timeout)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            return ToolResult("python: 'timeout' must be a positive number of seconds", True)
        timeout = min(float(timeout), self.max_timeout)

        if self.shell is not None:  # what undo restores: the names this code can touch
            ctx.changes.before_code(self.shell.user_ns, _transformed(self.shell, code))
        worker = _Worker(self.shell, code, asyncio.get_running_loop(), self.limit)
        worker.start()
        try:
            outcome = await asyncio.wait_for(asyncio.shield(worker.done), timeout)
        except TimeoutError:
            outcome = await self._stop_after_timeout(worker, timeout)
        except asyncio.CancelledError:
            # Stop: interrupt and propagate at once; the thread dies at its next bytecode.
            worker.interrupt("canceled")
            raise
        return self._result(outcome, worker, timeout)

    async def _stop_after_timeout(self, worker: _Worker, timeout: float) -> _Outcome | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        # Re-raise every tick: code that catches the first interrupt still gets the next.
        while loop.time() < deadline:
            worker.interrupt(f"time limit of {timeout:g}s reached")
            done, _ = await asyncio.wait({worker.done}, timeout=0.05)
            if done:
                return worker.done.result()
        return None

    def _result(self, outcome: _Outcome | None, worker: _Worker, timeout: float) -> ToolResult:
        if outcome is None:
            text = worker.buffer.getvalue()
            note = (
                f"Interrupted: time limit of {timeout:g}s reached and the code did not stop "
                f"within {self.grace:g}s (it is blocked outside Python, e.g. in sleep or I/O). "
                "It was abandoned and may still be running in the background."
            )
            body = f"{text}\n{note}" if text else note
            return ToolResult(clean(body, self.limit), True, {"timed_out": True, "abandoned": True})

        sections = []
        if outcome.output:
            sections.append(outcome.output.rstrip("\n"))
        if outcome.figures:
            sections.append("Figures created (now closed): " + ", ".join(outcome.figures))
        if outcome.has_result:
            sections.append(f"Out: {outcome.result}")
        interrupted = isinstance(outcome.error, ToolInterrupted)
        if interrupted:
            sections.append(f"Interrupted: {worker.interrupt_reason or 'stopped'}.")
        elif outcome.error is not None:
            sections.append(outcome.traceback.rstrip("\n"))
        text = "\n".join(sections) if sections else "(no output)"
        metadata: dict[str, Any] = {"timed_out": interrupted}
        if outcome.error is not None and not interrupted:
            metadata["exception"] = type(outcome.error).__name__
        # One image per distinct picture: a figure displayed and left open is the same bytes.
        distinct: dict[str, ImagePart] = {}
        for image in outcome.images:
            distinct.setdefault(image.file, image)
        images = list(distinct.values())
        return ToolResult(clean(text, self.limit), outcome.error is not None, metadata, images)


def summarize(args: dict[str, Any]) -> str:
    """The permission prompt shows the exact code."""
    return str(args.get("code", ""))
