"""The kernel's agent, transcript store, sessions and live runs, shared by every cell.

One :class:`Crush` per shell owns the kernel's ``SessionAgent``, its ``TranscriptStore``,
the current session, the live run views and their tasks, the MCP servers and the replay
chain: the kernel's state. Submitting a prompt is :mod:`jupyter_crush.kernel.submit`, which
reads and updates this state; nothing here calls back into it.

Each part (the agent with its tools and providers, the store, the MCP servers, the replay
chain, the undo log) is built, and its modules imported, on first use, not at ``%load_ext``,
which stays within 50 ms (benchmarks/bench_load_ext.py): the provider SDKs alone take longer
to import than a user should wait for an extension to load.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import shlex
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ..core.message import FinishReason, Session
from ..core.remote import ALLOW_LISTS, looks_remote
from ..notebook import state as notebook_state
from ..notebook.interrupt import InterruptCanceler, take_cell_interrupt
from .config import CrushConfig
from .errors import one_line
from .outputs import CellOutputs

if TYPE_CHECKING:
    from ..agent.budget import SpendingCaps
    from ..agent.session import SessionAgent
    from ..agent.titles import Titler
    from ..core.model import Model
    from ..mcp.tools import MCPServers
    from ..notebook.verify_report import VerifyReport
    from ..store.transcript import TranscriptStore
    from ..view.base import RunView
    from .context import SystemPrompt
    from .rerun import Rerun
    from .undo import Undo


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
        self.current_session_id: str | None = None
        self._store: TranscriptStore | None = None
        self._agent: SessionAgent | None = None
        # Resolved models by name, so a cell's -m does not rebuild SDK clients; written only
        # by cells (the loop thread).
        self._models: dict[str, Model] = {}  # by name; cleared when provider settings change
        self.config.observe(
            lambda _change: self.forget_models(),
            names=[
                "api_keys",
                "base_urls",
                "openai_apis",
                "crush_config",
                "max_retries",
                "request_timeout",
            ],
        )
        # Session id -> the view of its active prompt, for the permission broker; written
        # and read on the loop thread only.
        self.views: dict[str, RunView] = {}
        # Session id -> the model answering its active prompt, for the prompts folded into
        # it; written and read on the loop thread only, with views.
        self.turn_models: dict[str, Model] = {}
        # Session ids whose active prompt ran with --yolo; loop thread only.
        self.yolo_sessions: set[str] = set()
        # Strong references to the run tasks: the loop keeps only weak ones, and a
        # collected task would silently stop its run.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sigint: InterruptCanceler | None = None
        #: Where each run's view is displayed, and its answer put at its end.
        self.outputs = CellOutputs()
        #: The view of the latest %%crush cell, for code that wants to await it.
        self.last_view: RunView | None = None
        self._closed = False
        self._unpatch_shutdown: Callable[[], None] | None = None
        #: The report of the latest %crush verify that finished (kernel/verify.py).
        self.last_verify: VerifyReport | None = None
        #: How to stop the kernel's runs other than the agent's (a %crush verify in the
        #: background): cancel_all calls each, from the loop thread.
        self.other_runs: set[Callable[[], None]] = set()

    # -- lazily built parts (and their modules imported then, which loading does not need) --

    @functools.cached_property
    def mcp(self) -> MCPServers:
        """The MCP servers whose tools the agent gets (crush.json's "mcp", mcp_servers)."""
        from ..mcp.tools import MCPServers

        return MCPServers.for_config(self.config)

    @functools.cached_property
    def rerun(self) -> Rerun:
        """Replays of recorded turns (jupyter_crush.kernel.rerun): each session's chain of
        prompts."""
        from .rerun import Rerun

        return Rerun()

    @functools.cached_property
    def undo(self) -> Undo:
        """What each turn changed, and %crush undo (jupyter_crush.kernel.undo)."""
        from .undo import Undo

        return Undo(
            self.shell,
            lambda: self.config.undo_copy_limit,
            lambda: self.store,
            lambda: self._agent,
        )

    @property
    def store(self) -> TranscriptStore:
        if self._store is None:
            from ..store.transcript import TranscriptStore

            path = os.path.abspath(os.path.expanduser(self.config.data_dir))
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._store = TranscriptStore(path)
            self.config.opened_data_dir = self.config.data_dir
        return self._store

    @property
    def agent(self) -> SessionAgent:
        return self.ensure_agent(None)

    def ensure_agent(self, model: Model | None) -> SessionAgent:
        """The kernel's agent, made on first use (with ``model`` as its default, if given)."""
        if self._agent is None:
            from ..agent.session import SessionAgent
            from ..notebook.provenance import call_origin, cell_proposer
            from ..tools import default_tools
            from ..tools.agent import AgentTool
            from ..tools.permissions import PermissionPolicy
            from ..view.permissions import WidgetPermissionBroker
            from ..view.questions import ViewQuestionAsker
            from .cell_permissions import ASKING_HEADLESS, CellPermissions

            tools = self.tools or default_tools(
                self.shell,
                include=self.config.tools,
                propose_cell=cell_proposer(self.store, self.shell),
                cell_origin=call_origin(self.store),
                sub_agent=AgentTool(
                    lambda: self.agent,
                    model=self.agent_model,
                    allowed=lambda session_id, tool: self.agent.permissions.runs_without_asking(
                        session_id, tool
                    ),
                    with_context=lambda prompt: self.system_prompt((), prompt).text,
                ),
                ask_questions=ViewQuestionAsker(self.views),
                store_dir=lambda: self.config.data_dir,
            )
            self.permissions = PermissionPolicy(
                WidgetPermissionBroker(self.views),
                allowed_tools=self.config.allowed_tools,
                headless=ASKING_HEADLESS.get,
                tools=tools,
            )
            self._agent = SessionAgent(
                model or self.resolve_model(None),
                self.store,
                tools=tools,
                system_prompt=self.system_prompt(tools).text,
                max_steps=self.config.max_steps,
                permissions=CellPermissions(
                    self.config, self.views, self.yolo_sessions, self.permissions
                ),
            )
            self._agent.tool_sources.append(self.mcp)
            self._agent.turn_changes = self.undo.log_for
            self._agent.add_status_listener(self._status_changed)
            self._agent.titler.listeners.append(self._titled)
            self._agent.budget.caps = self.spending_caps
        return self._agent

    def agent_model(self) -> Model | None:
        """The ``agent`` tool's sub-agent model: ``agent_model``, else None (the turn's own)."""
        name = self.config.agent_model.strip()
        return self.resolve_model(name) if name else None

    def spending_caps(self) -> SpendingCaps:
        """The caps in force now: ``%config`` changes them for the next request."""
        from ..agent.budget import SpendingCaps

        return SpendingCaps(self.config.max_cost, self.config.max_cost_per_day)

    def system_prompt(self, tools: Iterable[Any], base: str = "") -> SystemPrompt:
        """The configured system prompt, else the built-in one (``base``: this one instead,
        a sub-agent's), then the context files."""
        from .context import build_system_prompt

        names = [tool.name for tool in tools]
        return build_system_prompt(base or self.config.system_prompt, names, self.shell)

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

    def forget_models(self) -> None:
        """Resolve models afresh from now on: their settings or crush.json changed."""
        self._models.clear()

    def resolve_model(self, name: str | None) -> Model:
        """The Model for ``name`` (None: the default). Raises UsageError saying what to do."""
        if name is None and self.model_override is not None:
            return self.model_override
        if name is None and self.config.nothing_reached_a_remote_kernel():
            raise UsageError(
                "No API key and no CRUSH_MODEL reached this remote kernel: "
                + ALLOW_LISTS
                + " (or pick a model here with %crush model NAME)"
            )
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
            from ..providers import MissingAPIKeyError, resolve_model
        except ImportError as error:
            raise UsageError(f"Model providers are not available: {error}") from None
        try:
            model = resolve_model(name, settings=self.config.provider_settings())
        except Exception as error:  # provider config errors carry a what-to-do message
            remote = isinstance(error, MissingAPIKeyError) and looks_remote()
            hint = f"; for this remote kernel, {ALLOW_LISTS}" if remote else ""
            raise UsageError(f"Cannot use model {name!r}: {one_line(error)}{hint}") from None
        self._models[name] = model
        return model

    # -- sessions ------------------------------------------------------------------------

    def find_session(self, ref: str) -> Session:
        """A session by id, title (the newest of that title), or unique id prefix."""
        from ..store.lookup import SessionNotFoundError, find_session

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

    # -- runs --------------------------------------------------------------------------

    def keep_run(self, task: asyncio.Task[Any], view: RunView) -> None:
        """Hold ``task`` (a run of ``view``) until it ends: the loop keeps only weak references,
        and a collected task would silently stop its run."""
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(t, view))
        self.last_view = view
        self.ensure_interrupt_handler()

    def _task_done(self, task: asyncio.Task[Any], view: RunView) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and not view.is_finished:
            view.finish(FinishReason.ERROR, one_line(error))

    # -- cancel, interrupt, shutdown ------------------------------------------------------

    def cancel(self, session_id: str) -> None:
        self.agent.cancel(session_id)

    def cancel_all(self) -> None:
        for stop in list(self.other_runs):
            stop()
        if self._agent is not None:
            self._agent.cancel_all()

    def ensure_interrupt_handler(self) -> None:
        if self._sigint is None:
            self._sigint = InterruptCanceler(self.cancel_all)
            self._sigint.install(getattr(self.shell, "kernel", None))

    def shutdown(self) -> None:
        """Persist every in-flight and queued prompt as canceled (kernel exit/restart)."""
        if self._closed:
            return
        self._closed = True
        if self._agent is not None:
            self._agent.shutdown()
        if "mcp" in vars(self):  # servers run only once something used them
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
        # Runs inside the executing cell's context (see CellOutputs).
        self.outputs.pre_run_cell()

    def _post_run_cell(self, result: Any) -> None:
        self.outputs.post_run_cell()
        # ■ during a cell raises KeyboardInterrupt in that cell; the agents are stopped too,
        # because the interrupt is the user's way to stop everything the kernel is doing.
        # A run_cell's Stop interrupts its cell the same way, and stops only its own run.
        if isinstance(
            getattr(result, "error_in_exec", None), KeyboardInterrupt
        ) and not take_cell_interrupt(self.shell):
            self.cancel_all()
