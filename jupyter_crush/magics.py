"""``%%crush`` and ``%crush``: the notebook surface of the agent.

One :class:`Crush` per shell owns the kernel's ``SessionAgent``, its
``TranscriptStore``, the current session and the live run views. A ``%%crush``
cell accepts its prompt (``agent.begin_accepted``) before anything else can
happen, displays a :class:`~jupyter_crush.widget.RunView`, schedules
``agent.run`` on the kernel's running loop and returns, so the kernel is idle
while the answer streams.

The widgets (ipywidgets), the tools and the providers are imported on first use,
not at ``%load_ext``: the provider SDKs alone take longer to import than a user
should wait for an extension to load.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import os
import re
import shlex
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from . import notebook_state
from .agent import Attachment, Finished, Folded, SessionAgent, SessionAgentCall, Started
from .commands import COMMANDS, load_commands, usage_lines
from .compaction import policy_from, session_meter
from .config import CrushConfig
from .images import PromptImages
from .interpolate import interpolate
from .mcp_tools import MCPServers
from .message import FinishReason, Session
from .rerun import Cell, Rerun
from .store import StoreError, TranscriptStore
from .titles import Titler, configured_title_model, prompt_title
from .tools import Decision

if TYPE_CHECKING:
    from .context import SystemPrompt
    from .model import Model
    from .widget import RunView

LINE_USAGE = """\
%crush sessions              list sessions (* marks the current one)
%crush history [SESSION]     show a session's transcript (default: the current session)
%crush cancel [SESSION|--all]  stop the running and queued prompts of a session
%crush use SESSION           make SESSION the current session
%crush new [TITLE]           start a new current session
%crush model [NAME]          show or set the default model ('provider:model')
%crush help                  this text

SESSION is a session id, a unique id prefix, or a title.
Prompts can use {name}, {obj.attr}, {In[3]} and {Out[2]} from the notebook;
other braces are left alone and {{ writes a literal brace."""

_CODE_BLOCK = re.compile(r"^```[ \t]*([\w+.-]*)[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_PYTHON_FENCES = {"", "python", "py", "python3", "ipython", "ipython3"}


class Crush:
    """The kernel's agent, store and sessions, shared by every ``%%crush`` cell."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.config = CrushConfig(parent=shell)
        # A Model object set from code (tests, notebooks) wins over config.model.
        self.model_override: Model | None = None
        #: Tools for the agent; empty means the default set (config.tools), made with it.
        self.tools: list[Any] = []
        self.permissions: Any = None
        #: The MCP servers whose tools the agent gets (crush.json's "mcp", mcp_servers).
        self.mcp = MCPServers.for_config(self.config)
        self.current_session_id: str | None = None
        self._store: TranscriptStore | None = None
        self._agent: SessionAgent | None = None
        # Resolved models by name, so a cell's -m does not rebuild SDK clients; written only
        # by cells (the loop thread).
        self._models: dict[str, Model] = {}  # by name; cleared when provider settings change
        self.config.observe(
            lambda _change: self._models.clear(),
            names=["api_keys", "base_urls", "crush_config", "max_retries", "request_timeout"],
        )
        # Session id -> the view of its active prompt, for the permission broker; written
        # and read on the loop thread only.
        self.views: dict[str, RunView] = {}
        # Session id -> the model answering its active prompt, for the prompts folded into
        # it; written and read on the loop thread only, with views.
        self._turn_models: dict[str, Model] = {}
        # Session ids whose active prompt ran with --yolo; loop thread only.
        self._yolo_sessions: set[str] = set()
        # Strong references to the run tasks: the loop keeps only weak ones, and a
        # collected task would silently stop its run.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sigint: _InterruptCanceler | None = None
        # The executing cell's context and a count of cells run; written by the shell's
        # pre/post_run_cell hooks and read in _finished, all on the loop thread.
        self._running_cell: contextvars.Context | None = None
        self._cell_serial = 0
        # Final displays of headless runs that ended between cells (see _finished).
        self._headless_updates: list[tuple[Any, dict[str, Any], RunView]] = []
        #: The view of the latest %%crush cell, for code that wants to await it.
        self.last_view: RunView | None = None
        self._closed = False
        self._unpatch_shutdown: Callable[[], None] | None = None
        #: Replays of recorded turns (jupyter_crush.rerun): each session's chain of prompts.
        self.rerun = Rerun()

    # -- lazily built parts --------------------------------------------------------------

    @property
    def store(self) -> TranscriptStore:
        if self._store is None:
            path = os.path.abspath(os.path.expanduser(self.config.data_dir))
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._store = TranscriptStore(path)
            self.config.opened_data_dir = self.config.data_dir
        return self._store

    @property
    def agent(self) -> SessionAgent:
        return self._ensure_agent(None)

    def _ensure_agent(self, model: Model | None) -> SessionAgent:
        """The kernel's agent, made on first use (with ``model`` as its default, if given)."""
        if self._agent is None:
            from .provenance import cell_proposer
            from .tools import default_tools
            from .tools.permissions import PermissionPolicy
            from .widget import WidgetPermissionBroker

            tools = self.tools or default_tools(
                self.shell, include=self.config.tools, propose_cell=cell_proposer(self)
            )
            self.permissions = PermissionPolicy(
                WidgetPermissionBroker(self.views),
                allowed_tools=self.config.allowed_tools,
                headless=_ASKING_HEADLESS.get,
                tools=tools,
            )
            self._agent = SessionAgent(
                model or self.resolve_model(None),
                self.store,
                tools=tools,
                system_prompt=self._system_prompt(tools).text,
                max_steps=self.config.max_steps,
                permissions=_CellPermissions(self),
            )
            self._agent.tool_sources.append(self.mcp)
            self._agent.add_status_listener(self._status_changed)
            self._agent.titler.listeners.append(self._titled)
        return self._agent

    def _system_prompt(self, tools: Iterable[Any]) -> SystemPrompt:
        """The configured system prompt, else the built-in one, then the context files."""
        from .context import build_system_prompt

        names = [tool.name for tool in tools]
        return build_system_prompt(self.config.system_prompt, names, self.shell)

    def _status_changed(self, status: Any) -> None:
        # The running prompt's widget says how many wait behind it (loop thread).
        for session_id, view in self.views.items():
            view.set_queued_behind(status.queued.get(session_id, 0))

    def _titled(self, session_id: str, title: str) -> None:
        # A title made while the session's prompt runs shows in its status line (loop thread).
        view = self.views.get(session_id)
        if view is not None:
            view.labels = replace(view.labels, session=title)

    @property
    def titler(self) -> Titler:
        return self.agent.titler

    def use_model(self, model: Model | str | None) -> None:
        """Set the default model: a Model object, a 'provider:model' name, or None for config."""
        if isinstance(model, str):
            self.resolve_model(model)  # fail now, with the reason, not at the next prompt
            self.config.model = model
            self.model_override = None
        else:
            self.model_override = model

    def resolve_model(self, name: str | None) -> Model:
        """The Model for ``name`` (None: the default). Raises UsageError saying what to do."""
        if name is None and self.model_override is not None:
            return self.model_override
        name = (name or self.config.model).strip()
        cached = self._models.get(name)
        if cached is not None:
            return cached
        if ":" not in name:
            raise UsageError(
                f"Model {name!r} is not 'provider:model' (for example openai:gpt-4o); "
                "set one with %crush model NAME"
            )
        try:
            from .providers import resolve_model
        except ImportError as error:
            raise UsageError(f"Model providers are not available: {error}") from None
        try:
            model = resolve_model(name, settings=self.config.provider_settings())
        except Exception as error:  # provider config errors carry a what-to-do message
            raise UsageError(f"Cannot use model {name!r}: {_one_line(error)}") from None
        self._models[name] = model
        return model

    # -- sessions ------------------------------------------------------------------------

    def find_session(self, ref: str) -> Session:
        """A session by id, title (the newest of that title), or unique id prefix."""
        from .history import SessionNotFoundError, find_session

        try:
            return find_session(self.store, ref)
        except SessionNotFoundError as error:
            if error.ambiguous:
                raise UsageError(
                    f"Session prefix {ref!r} is ambiguous; give more of the id"
                ) from None
            raise UsageError(
                f"No session {ref!r}; list them with %crush sessions, or start one with "
                f"%%crush --new -s {shlex.quote(ref.strip())}"
            ) from None

    def session_for_cell(self, ref: str | None, new: bool, prompt: str) -> Session:
        if new:
            session = self.store.create_session(title=ref or prompt_title(prompt))
        elif ref:
            try:
                session = self.find_session(ref)
            except UsageError:
                if _looks_like_id(ref):
                    raise
                # Naming a session that does not exist yet starts it: `%%crush -s analysis`.
                session = self.store.create_session(title=ref)
        elif self.current_session_id is not None:
            return self.store.get_session(self.current_session_id)
        else:
            session = self.store.create_session(title=prompt_title(prompt))
        return session

    # -- running -------------------------------------------------------------------------

    def submit(
        self,
        prompt: str,
        *,
        session_ref: str | None = None,
        new: bool = False,
        model_name: str | None = None,
        wait: bool | None = None,
        yolo: bool = False,
        fmt: str = "markdown",
        attachments: Iterable[Attachment] = (),
        cell: Cell | None = None,
        compact: bool = False,
    ) -> RunView:
        """Accept ``prompt`` (with ``attachments``), show its view, and run it on the loop.

        ``cell`` (its text, the values filled in, ``--fresh``) lets an unchanged cell replay
        its recorded turn (:mod:`jupyter_crush.rerun`). ``compact`` summarizes the session
        instead (``prompt`` is not recorded).
        """
        if not prompt.strip():
            raise UsageError("The prompt is empty: write what you want after the %%crush line")
        from .providers.replay import for_prompt

        # Before anything is recorded; a replay says which recorded prompt it answers.
        model, replay_note = for_prompt(self.resolve_model(model_name), prompt)
        with store_problems_in_one_line():  # the store opens here (a full disk, a bad path)
            agent = self._ensure_agent(model)
        # Settings changed with %config since the agent was made apply to the next prompt.
        agent.max_steps = self.config.max_steps
        agent.context = policy_from(self.config)
        agent.title_model = configured_title_model(self)
        agent.titles = self.config.titles
        self.permissions.allowed_tools = frozenset(self.config.allowed_tools)
        system = self._system_prompt(agent.tools.values())
        agent.system_prompt = system.text
        for problem in system.problems:
            print(problem)
        with store_problems_in_one_line():  # a damaged journal stops here, before any accept
            session = self.session_for_cell(session_ref, new, prompt)
            self.store.list_messages(session.id)
        self.current_session_id = session.id
        plan = self.rerun.plan(
            self,
            session.id,
            prompt,
            cell,
            model=model,
            tools=agent.tools,
            system=system.text,
            attachments=attachments,
        )

        from .widget import RunLabels

        # Accept first: from here on a cancel from any cell, button or interrupt covers it.
        accepted = agent.begin_accepted(session.id)
        try:
            loop = _kernel_loop()
            view = run_view_class(self.config.run_view)(
                RunLabels(
                    session=session.title or session.id[:8],
                    model=f"{model.provider}:{model.name}",
                    replay=plan.note or replay_note,
                ),
                on_stop=lambda: agent.cancel(session.id),
                session_id=session.id,
                redraw_rate=self.config.redraw_rate,
                loop=loop,
                answer_format="text" if fmt == "text" else "markdown",
            )
            view.interactive = self._interactive()
            plan.show(view)
            call = SessionAgentCall(
                session.id,
                prompt,
                attachments=tuple(attachments),
                accepted=accepted,
                observer=_Tracker(self, view, yolo, model, prompt),
                model=plan.model or model,
                tools=plan.replay.tools(agent.tools) if plan.replay else (),
                metadata=plan.metadata,
                compact=compact,
            )
            handle = _display(view)
            # The cell's context carries its parent header (ipykernel 7): updates sent in it
            # reach this cell's output, whichever task finishes the run.
            cell = (contextvars.copy_context(), self._cell_serial)
            view.on_finished(lambda v: self._finished(v, handle, cell))
            task = loop.create_task(agent.run(call), name=f"crush-cell:{session.id}")
        except BaseException:
            accepted.close()  # nothing will run: the session's accept count must drop back
            raise
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(t, view))
        self.last_view = view
        self._ensure_interrupt_handler()

        blocking = fmt == "code" or (self._should_wait() if wait is None else wait)
        if blocking:
            if view.interactive:
                view.stop_with_interrupt()
            self._wait(loop, view, session.id)
            if fmt == "code" and plan.replay is None:  # a replay's cell is already there
                self._code_to_next_cell(view)
        return view

    def _finished(self, view: RunView, handle: Any, cell: tuple[contextvars.Context, int]) -> None:
        self._yolo_sessions.discard(view.session_id)
        if handle is None:
            view.close()
            return
        # Replace the live widget by the static answer: a notebook reopened without a
        # kernel (or without saved widget state) still shows what the agent said.
        bundle = view.static_bundle()
        context, serial = cell
        context.run(handle.update, bundle, raw=True)
        if view.interactive or serial == self._cell_serial:
            view.close()  # after the update: the page drops the view before the models
            return
        # nbclient only reads messages of the cell it is executing, so a run that ends
        # after its own cell (a --no-wait prompt) is also updated through the cell running
        # now, or else the next one; nbclient applies a display update to every output
        # with that display id.
        running = self._running_cell
        if running is not None:
            running.run(handle.update, bundle, raw=True)
            view.close()
        else:
            self._headless_updates.append((handle, bundle, view))

    def _task_done(self, task: asyncio.Task[Any], view: RunView) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and not view.is_finished:
            view.finish(FinishReason.ERROR, _one_line(error))

    def _should_wait(self) -> bool:
        mode = self.config.wait
        if mode == "always":
            return True
        if mode == "never":
            return False
        if os.environ.get("CRUSH_WAIT", "").strip().lower() in {"1", "true", "yes"}:
            return True
        return not self._interactive()

    def _interactive(self) -> bool:
        """Whether someone can watch and click: a front end that can answer input.

        nbclient (and so papermill and ``nbconvert --execute``) sends every
        execute_request with ``allow_stdin=False``; JupyterLab, Notebook and VS Code send
        ``True``. Without a kernel (terminal IPython) nothing renders the widget at all.
        """
        kernel = getattr(self.shell, "kernel", None)
        if kernel is None:
            return False
        try:
            parent = kernel.get_parent("shell")
        except Exception:
            return True
        return bool((parent or {}).get("content", {}).get("allow_stdin", True))

    def _wait(self, loop: asyncio.AbstractEventLoop, view: RunView, sid: str) -> None:
        """Block the cell until the run is terminal, still serving the loop meanwhile.

        The magic runs inside the kernel's own execute handler, a task on the very loop
        that must keep streaming the answer; stdlib asyncio refuses to re-enter a running
        loop. nest-asyncio2 makes ``run_until_complete`` re-entrant on that loop, so the
        agent, its timers and the kernel's other handlers keep running while this cell
        waits. It is the maintained fork that ipykernel 7.4 itself applies (the archived
        nest-asyncio makes ipykernel warn); running the agent on a second thread instead
        would break the rule that the agent and its widget live on the loop thread.
        """
        if loop.is_running():
            import nest_asyncio2

            nest_asyncio2.apply(loop)
        while not view.is_finished:
            try:
                loop.run_until_complete(view.wait())
            except KeyboardInterrupt:
                # The kernel's ■ while this cell waits: stop the run, then wait for its
                # canceled record so the cell shows the final state.
                self.agent.cancel(sid)

    def _code_to_next_cell(self, view: RunView) -> None:
        code = extract_code(view.answer_markdown)
        if code:
            from .provenance import insert_answer_code

            insert_answer_code(self, view.session_id, code)

    # -- cancel, interrupt, shutdown ------------------------------------------------------

    def cancel(self, session_id: str) -> None:
        self.agent.cancel(session_id)

    def cancel_all(self) -> None:
        if self._agent is not None:
            self._agent.cancel_all()

    def _ensure_interrupt_handler(self) -> None:
        if self._sigint is None:
            self._sigint = _InterruptCanceler(self)
            self._sigint.install(getattr(self.shell, "kernel", None))

    def shutdown(self) -> None:
        """Persist every in-flight and queued prompt as canceled (kernel exit/restart)."""
        if self._closed:
            return
        self._closed = True
        if self._agent is not None:
            self._agent.shutdown()
        self.mcp.shutdown()

    def close(self) -> None:
        """Undo ``install``: record runs in flight as canceled, restore handlers, drop hooks."""
        self.shutdown()
        if self._store is not None:
            self._store.close()
        if self._sigint is not None:
            self._sigint.uninstall()
            self._sigint = None
        atexit.unregister(self.shutdown)
        if self._unpatch_shutdown is not None:
            self._unpatch_shutdown()
            self._unpatch_shutdown = None
        with contextlib.suppress(ValueError):  # already unregistered
            self.shell.events.unregister("pre_run_cell", self._pre_run_cell)
        with contextlib.suppress(ValueError):
            self.shell.events.unregister("post_run_cell", self._post_run_cell)
        if self.config in self.shell.configurables:
            self.shell.configurables.remove(self.config)
        notebook_state.uninstall(self.shell)

    def install(self) -> None:
        self.shell.configurables.append(self.config)
        notebook_state.install(self.shell)
        self.shell.events.register("pre_run_cell", self._pre_run_cell)
        self.shell.events.register("post_run_cell", self._post_run_cell)
        # Kernel shutdown and restart: the shutdown request (handled on the control thread)
        # schedules the canceled records on the kernel's loop, ahead of the loop's stop; atexit
        # covers a process that ends any other way. shutdown() runs once.
        kernel = getattr(self.shell, "kernel", None)
        io_loop = getattr(kernel, "io_loop", None)
        original = getattr(kernel, "do_shutdown", None)
        if io_loop is not None and original is not None:

            def do_shutdown(restart: bool) -> Any:
                io_loop.add_callback(self.shutdown)  # thread-safe, unlike the agent's store
                return original(restart)

            kernel.do_shutdown = do_shutdown
            self._unpatch_shutdown = lambda: setattr(kernel, "do_shutdown", original)
        atexit.register(self.shutdown)

    def _pre_run_cell(self, info: Any) -> None:
        # Runs inside the executing cell's context: remember it (see _finished).
        self._cell_serial += 1
        self._running_cell = contextvars.copy_context()
        updates, self._headless_updates = self._headless_updates, []
        for handle, bundle, view in updates:
            handle.update(bundle, raw=True)
            view.close()

    def _post_run_cell(self, result: Any) -> None:
        self._running_cell = None
        # ■ during a cell raises KeyboardInterrupt in that cell; the agents are stopped too,
        # because the interrupt is the user's way to stop everything the kernel is doing.
        if isinstance(getattr(result, "error_in_exec", None), KeyboardInterrupt):
            self.cancel_all()


# Whether the permission prompt being decided has nobody to answer it. Set by
# _CellPermissions around each policy.ask; a ContextVar so concurrent runs in other
# sessions (other tasks) each see their own value.
_ASKING_HEADLESS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "crush_asking_headless", default=False
)


class _CellPermissions:
    """Per-prompt permission choices in front of the kernel's PermissionPolicy.

    ``%%crush --yolo`` and ``CrushConfig.yolo`` allow at once; otherwise the policy decides,
    told whether the prompt's cell came from a front end that can click (a run started by
    nbclient cannot answer a prompt, so it is denied rather than left hanging).
    """

    def __init__(self, crush: Crush) -> None:
        self._crush = crush

    async def ask(self, request: Any) -> Any:
        crush = self._crush
        if crush.config.yolo or request.session_id in crush._yolo_sessions:
            return Decision.ALLOW
        view = crush.views.get(request.session_id)
        token = _ASKING_HEADLESS.set(view is None or not view.interactive)
        try:
            return await crush.permissions.ask(request)
        finally:
            _ASKING_HEADLESS.reset(token)

    def denial_reason(self, tool_call_id: str) -> str | None:
        """Why the policy denied a call, for the tool result and the transcript."""
        return self._crush.permissions.denial_reason(tool_call_id)


class _Tracker:
    """Observer wrapper: keeps the broker's session → view map current, then forwards."""

    def __init__(self, crush: Crush, view: RunView, yolo: bool, model: Model, prompt: str) -> None:
        self._crush = crush
        self._view = view
        self._yolo = yolo
        self._model = model
        self._prompt = prompt

    def on_event(self, event: Any) -> None:
        session_id = self._view.session_id
        if isinstance(event, Started):
            self._crush.views[session_id] = self._view
            self._crush._turn_models[session_id] = self._model
            if self._yolo:
                self._crush._yolo_sessions.add(session_id)
        elif isinstance(event, Folded) and session_id in self._crush._turn_models:
            # The running turn's model answers a folded prompt: the status line names it (and
            # for a replay, the recorded prompt it answers).
            from .providers.replay import for_prompt

            model, note = for_prompt(self._crush._turn_models[session_id], self._prompt)
            self._view.labels = replace(
                self._view.labels, model=f"{model.provider}:{model.name}", replay=note
            )
        elif isinstance(event, Finished):
            if self._crush.views.get(session_id) is self._view:
                del self._crush.views[session_id]
                del self._crush._turn_models[session_id]
            # Records the disk refused stay in memory; the status line says so.
            pending = self._crush.store.pending_writes(session_id)
            self._view.set_store_note("; ".join(str(p) for p in pending))
        self._view.on_event(event)


class _InterruptCanceler:
    """Makes the kernel's interrupt (■, SIGINT) cancel running agents while the kernel is idle.

    ipykernel ignores SIGINT while idle (``SIG_IGN``) and swaps in Python's default
    handler only around each request it handles, restoring the saved handler after.
    So the handler goes where ipykernel restores from: ``kernel.saved_sigint_handler``
    when installed from inside a cell, else the process handler. The handler itself only
    schedules the cancel with ``call_soon_threadsafe``: that wakes the loop out of its
    poll (a plain call would land only when something else woke it) and never takes the
    agent's lock inside a signal handler, where the interrupted code may hold it.
    """

    def __init__(self, crush: Crush) -> None:
        self._crush = crush
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None
        self._kernel: Any = None
        self._installed_in: str | None = None
        self.interrupts = 0

    def install(self, kernel: Any) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no kernel loop (terminal IPython): KeyboardInterrupt reaches the wait
        current = signal.getsignal(signal.SIGINT)
        if (
            kernel is not None
            and current is signal.default_int_handler
            and hasattr(kernel, "saved_sigint_handler")
        ):
            self._kernel = kernel
            self._previous = kernel.saved_sigint_handler
            kernel.saved_sigint_handler = self._handle
            self._installed_in = "kernel"
        else:
            try:
                self._previous = signal.signal(signal.SIGINT, self._handle)
            except ValueError:
                return  # not the main thread: leave interrupts to the kernel
            self._installed_in = "process"

    def uninstall(self) -> None:
        if self._installed_in == "kernel":
            if self._kernel.saved_sigint_handler is self._handle:
                self._kernel.saved_sigint_handler = self._previous
            elif signal.getsignal(signal.SIGINT) is self._handle:
                signal.signal(signal.SIGINT, self._previous)
        elif self._installed_in == "process" and signal.getsignal(signal.SIGINT) is self._handle:
            signal.signal(signal.SIGINT, self._previous)
        self._installed_in = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.interrupts += 1
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._crush.cancel_all)
        previous = self._previous
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)


def run_view_class(name: str) -> type[RunView]:
    """The view class of ``CrushConfig.run_view``."""
    if name == "widgets":
        from .widgets_view import WidgetsRunView

        return WidgetsRunView
    from .delta_view import DeltaRunView

    return DeltaRunView


def _display(view: RunView) -> Any:
    from IPython.display import display

    return display(view, display_id=True)


def _kernel_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        # Terminal IPython and plain InteractiveShell run cells without a running loop;
        # IPython's own persistent loop is the one its autoawait uses.
        from IPython.core.async_helpers import get_asyncio_loop

        return get_asyncio_loop()


def _looks_like_id(ref: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{32}", ref))


@contextlib.contextmanager
def store_problems_in_one_line() -> Iterator[None]:
    """A damaged transcript file becomes a one-line UsageError naming the file, the byte
    and the command that recovers it, instead of a traceback."""
    try:
        yield
    except StoreError as error:
        raise UsageError(_one_line(error)) from None


def _one_line(error: BaseException | str) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())


def extract_code(markdown: str) -> str:
    """The Python code blocks of an answer, joined; '' when it has none."""
    blocks = [
        body.rstrip("\n")
        for lang, body in _CODE_BLOCK.findall(markdown)
        if lang.lower() in _PYTHON_FENCES
    ]
    return "\n\n".join(b for b in blocks if b.strip())


@magics_class
class CrushMagics(Magics):
    def __init__(self, shell: Any, crush: Crush) -> None:
        super().__init__(shell)
        self.crush = crush

    @magic_arguments(name="%crush")
    @argument("-s", "--session", help="session id, id prefix, or title (a new title starts one)")
    @argument("--new", action="store_true", help="start a new session (titled -s if given)")
    @argument("-m", "--model", help="model for this prompt, as 'provider:model'")
    @argument("--wait", action="store_true", help="block the cell until the answer is complete")
    @argument(
        "--no-wait",
        action="store_true",
        help="return at once even when run headless (nbclient, papermill), where cells "
        "otherwise wait for the answer",
    )
    @argument("--yolo", action="store_true", help="allow state-changing tools without asking")
    @argument(
        "-f",
        "--format",
        choices=("markdown", "code", "text"),
        default="markdown",
        help="render the answer as markdown or text; 'code' waits, then puts the answer's "
        "code into a new cell below (not run)",
    )
    @argument(
        "--fix", action="store_true", help="fix the last error; the cell may add an instruction"
    )
    @argument("--fresh", action="store_true", help="ask again even if a recorded turn matches")
    @cell_magic("crush")
    def crush_cell(self, line: str, cell: str) -> None:
        """Ask the agent: the cell is the prompt; the answer streams below while the kernel
        stays free. Stop it with the Stop button, the kernel's interrupt, or %crush cancel.
        """
        args = parse_argstring(self.crush_cell, line)
        if args.wait and args.no_wait:
            raise UsageError("--wait and --no-wait contradict each other; pick one")
        template = cell.rstrip().lstrip("\n")
        shown = PromptImages()  # figures the prompt names go as images
        values: dict[str, Any] = {}  # what the placeholders were, for replay fingerprints
        prompt = interpolate(template, self.shell.user_ns, shown, values)
        for problem in shown.problems:
            print(problem)
        from .fix import submit_fix

        submit = partial(submit_fix, self.crush) if args.fix else self.crush.submit
        submit(
            prompt,
            session_ref=args.session,
            new=args.new,
            model_name=args.model,
            wait=True if args.wait else (False if args.no_wait else None),
            yolo=args.yolo,
            fmt=args.format,
            attachments=[Attachment(image.label, image=image) for image in shown.images],
            cell=Cell(template, values, args.fresh),
        )

    @line_magic("crush")
    def crush_line(self, line: str) -> None:
        try:
            words = shlex.split(line)
        except ValueError as error:
            raise UsageError(f"{error}; see %crush help") from None
        if not words:
            raise UsageError("Say what to do: %crush help lists the commands")
        command, rest = words[0], words[1:]
        handler: Callable[[list[str]], None] | None = getattr(self, f"_cmd_{command}", None)
        if handler is not None:
            handler(rest)
        elif command in COMMANDS:
            COMMANDS[command].run(self.crush, rest)
        else:
            raise UsageError(f"Unknown command {command!r}; %crush help lists the commands")

    # `%crush?` shows both forms: the line commands, then the cell's options.
    crush_line.__doc__ = (
        "Manage sessions and runs.\n\n" + LINE_USAGE + "\n\nThe cell form:\n" + crush_cell.__doc__
    )

    def _cmd_help(self, rest: list[str]) -> None:
        print(help_text())

    def _cmd_sessions(self, rest: list[str]) -> None:
        _no_args("sessions", rest)
        crush = self.crush
        sessions = crush.store.list_sessions()
        if not sessions:
            print("No sessions yet: a %%crush cell starts one.")
            return
        agent = crush._agent
        measure = session_meter(crush)
        for session in sorted(sessions, key=lambda s: s.created_at):
            mark = "*" if session.id == crush.current_session_id else " "
            state = ""
            if agent is not None and agent.is_session_busy(session.id):
                queued = agent.queued_prompts(session.id)
                state = "running" + (f", {queued} queued" if queued else "")
            meter = measure(crush.store.list_messages(session.id)).described() if measure else ""
            print(
                f"{mark} {session.id[:8]}  {session.title or '(untitled)'}  "
                f"{session.message_count} messages"
                + (f"  {meter}" if meter else "")
                + (f"  [{state}]" if state else "")
            )

    def _cmd_history(self, rest: list[str]) -> None:
        if len(rest) > 1:
            raise UsageError("Usage: %crush history [SESSION]")
        crush = self.crush
        with store_problems_in_one_line():
            if rest:
                session = crush.find_session(rest[0])
            elif crush.current_session_id is not None:
                session = crush.store.get_session(crush.current_session_id)
            else:
                print("No current session: a %%crush cell starts one.")
                return
            messages = crush.store.list_messages(session.id)
        print(format_history(session, messages))

    def _cmd_cancel(self, rest: list[str]) -> None:
        crush = self.crush
        if rest == ["--all"]:
            crush.cancel_all()
            return
        if len(rest) > 1:
            raise UsageError("Usage: %crush cancel [SESSION | --all]")
        if rest:
            session_id = crush.find_session(rest[0]).id
        elif crush.current_session_id is not None:
            session_id = crush.current_session_id
        else:
            raise UsageError("No current session to cancel; name one or use --all")
        crush.cancel(session_id)

    def _cmd_use(self, rest: list[str]) -> None:
        if len(rest) != 1:
            raise UsageError("Usage: %crush use SESSION")
        session = self.crush.find_session(rest[0])
        self.crush.current_session_id = session.id
        print(f"Current session: {session.title or '(untitled)'} ({session.id[:8]})")

    def _cmd_new(self, rest: list[str]) -> None:
        session = self.crush.store.create_session(title=" ".join(rest))
        self.crush.current_session_id = session.id
        print(f"New current session {session.id[:8]}")

    def _cmd_model(self, rest: list[str]) -> None:
        crush = self.crush
        if not rest:
            if crush.model_override is not None:
                model = crush.model_override
                print(f"{model.provider}:{model.name} (set from code)")
            else:
                print(crush.config.model)
            return
        if len(rest) != 1:
            raise UsageError("Usage: %crush model [provider:model]")
        crush.use_model(rest[0])
        print(f"Default model: {rest[0]}")


def help_text() -> str:
    """``%crush help``: the built-in commands, those other modules registered, the cell."""
    builtin, _, notes = LINE_USAGE.partition("\n\n")
    registered = usage_lines()
    usage = f"{builtin}\n{registered}\n\n{notes}" if registered else LINE_USAGE
    cell = CrushMagics.crush_cell.__doc__
    return f"Manage sessions and runs.\n\n{usage}\n\nThe cell form:\n{cell}"


def _no_args(command: str, rest: list[str]) -> None:
    if rest:
        raise UsageError(f"%crush {command} takes no arguments")


def format_history(session: Session, messages: list[Any]) -> str:
    """A readable transcript: one block per message."""
    lines = [f"Session {session.title or '(untitled)'} ({session.id[:8]})"]
    for message in messages:
        when = time.strftime("%H:%M:%S", time.localtime(message.created_at))
        head = f"[{when}] {message.role}"
        reason = message.finish_reason
        if reason is not None and str(reason) != "end_turn":
            finish = message.finish
            head += f" ({reason}{': ' + finish.message if finish and finish.message else ''})"
        lines.append(head)
        if message.reasoning:
            lines.append("  (reasoning) " + _indent(message.reasoning))
        if message.text:
            lines.append("  " + _indent(message.text))
        for call in message.tool_calls:
            lines.append(f"  tool call {call.name} {call.input}")
        for result in message.tool_results:
            kind = "error" if result.is_error else "result"
            lines.append(f"  tool {kind} {result.name}: " + _indent(result.content[:500]))
    return "\n".join(lines)


def _indent(text: str) -> str:
    return text.strip().replace("\n", "\n  ")


def load(shell: Any) -> Crush:
    """Register the magics on ``shell`` (once) and return its Crush."""
    crush = getattr(shell, "_jupyter_crush", None)
    if crush is None:
        load_commands()
        crush = Crush(shell)
        crush.install()
        shell._jupyter_crush = crush
        shell.register_magics(CrushMagics(shell, crush))
    return crush


def unload(shell: Any) -> None:
    crush = getattr(shell, "_jupyter_crush", None)
    if crush is None:
        return
    crush.close()
    del shell._jupyter_crush


def current() -> Crush:
    """The Crush of the running IPython (loads the extension if needed)."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("jupyter_crush needs a running IPython kernel or shell")
    return load(shell)
