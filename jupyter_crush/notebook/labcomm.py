"""The kernel end of the JupyterLab / Notebook 7 extension's comm.

Protocol: JSON over a Jupyter comm with target ``jupyter_crush``.

- browser -> kernel ``{"action": "status"}``: answer with the current counts.
- browser -> kernel ``{"action": "cancel_all"}``: stop every running and queued run.
- kernel -> browser ``{"event": "status", "running": n, "queued": m}``: sent on request and
  pushed whenever the agent's runs start, queue or end. ``n`` counts sessions with an active
  run, ``m`` the prompts waiting behind them.
- kernel -> browser ``{"event": "error", "message": "..."}``: a request it cannot handle.
- kernel -> browser ``{"event": "hello"}`` on a comm the kernel opens and closes at once
  when crush is loaded: pages that tried before (the kernel closes a comm to an unknown
  target) now open theirs.
- kernel -> browser ``{"event": "request", "id": n, "op": ...}`` asks the page about its
  notebook; the page answers ``{"action": "reply", "id": n, ...}`` (or ``"error"``).
  ``op: "cells"`` answers ``{"path", "dirty", "cells": [nbformat cells]}`` with image data
  replaced by its length; ``op: "insert_cell"`` with ``source``, ``metadata`` and
  ``after`` (a cell id) inserts a code cell below that cell (else below the active one)
  and answers ``{"index", "cell_id"}``. See :func:`request`.
- A request that takes the user's time (an edit under review, a cell running) is sent with
  ``wait``: the page acknowledges it at once with ``{"action": "reply", "id": n,
  "pending": true}`` and sends its answer under the same id when it has one. A page that
  closes meanwhile answers ``{"error": ...}`` on its behalf. :func:`notify` sends a request
  whose answer nobody awaits (withdrawing an edit on Stop).

The browser opens the comm when a notebook becomes current, and keeps it.

Threads: under ipykernel 7 JupyterLab sends comm messages on a subshell, so ``comm_open``
and ``comm_msg`` handlers may run on a thread other than the one running the asyncio loop.
``cancel_all`` is called right there (the agent's cancel is safe from any thread, and that
way it lands even while a blocking cell holds the loop), and status requests are answered
there too. Status pushes come from the agent's listener, on the loop thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..agent.session import AgentStatus, SessionAgent

__all__ = ["PAGE_CLOSED", "TARGET", "notify", "register", "request", "status_message"]

TARGET = "jupyter_crush"

log = logging.getLogger(__name__)

#: The answer a waiting request gets when the page it went to closes its comm.
PAGE_CLOSED = "the page showing the notebook closed before it answered"


def status_message(status: AgentStatus | None) -> dict[str, Any]:
    """The ``status`` event for ``status`` (``None``: no agent yet, so nothing runs)."""
    if status is None:
        return {"event": "status", "running": 0, "queued": 0}
    return {
        "event": "status",
        "running": len(status.running),
        "queued": sum(status.queued.values()),
    }


@dataclass(eq=False)
class _Waiting:
    """A request sent to one page, waiting for its answer (and, with ``wait``, its ack)."""

    loop: asyncio.AbstractEventLoop
    answer: asyncio.Future[Any]
    comm_id: str
    acked: asyncio.Future[Any] | None = None


@dataclass(eq=False)
class _Peer:
    """One open comm, and the context of the last request the page sent on it."""

    comm: Any
    # ipykernel routes a page's comm message to the subshell of the *last message the
    # kernel published* on that comm (its parent header). Publishing in the context of
    # the page's last request keeps the page's messages on the subshell it chose, even
    # for status pushed from the loop thread; published from the loop's own context,
    # the next cancel would queue behind whatever cell blocks the main shell.
    context: contextvars.Context


class _LabChannel:
    """Every open ``jupyter_crush`` comm of one kernel, fed by one agent's status."""

    def __init__(self, get_agent: Callable[[], SessionAgent | None]) -> None:
        self._get_agent = get_agent
        # Guards _peers and orders the status events: a status is read *and* sent under
        # it, so the last event a page gets reflects a read made after the last change
        # (a subshell thread answering a request cannot overtake a newer push from the
        # loop with stale counts). It also keeps each peer's context entered by one
        # thread at a time.
        self._lock = threading.Lock()
        self._peers: dict[str, _Peer] = {}
        # Requests to a page waiting for its reply, by request id: added and removed by
        # the awaiting task (loop thread), resolved from whichever thread the reply
        # arrives on. Guarded by _lock too.
        self._pending: dict[int, _Waiting] = {}
        self._request_ids = itertools.count(1)
        # Agents whose status listener is installed. The agent has no way to remove a
        # listener, so this keeps a replaced-then-restored agent from getting a second one.
        # Main thread only (register and the post_run_cell hook).
        self._listening: weakref.WeakSet[SessionAgent] = weakref.WeakSet()

    # -- comm handlers (any thread) ------------------------------------------------------

    def on_open(self, comm: Any, msg: dict[str, Any]) -> None:
        with self._lock:
            self._peers[comm.comm_id] = _Peer(comm, contextvars.copy_context())
        comm.on_msg(lambda msg: self._on_msg(comm, msg))
        comm.on_close(lambda _msg: self._forget(comm.comm_id))
        self._handle(comm.comm_id, msg.get("content", {}).get("data"))

    def _on_msg(self, comm: Any, msg: dict[str, Any]) -> None:
        with self._lock:
            peer = self._peers.get(comm.comm_id)
            if peer is not None:
                peer.context = contextvars.copy_context()
        self._handle(comm.comm_id, msg.get("content", {}).get("data"))

    def _forget(self, comm_id: str) -> None:
        with self._lock:
            self._peers.pop(comm_id, None)
            orphaned = [w for w in self._pending.values() if w.comm_id == comm_id]
        for waiting in orphaned:
            waiting.loop.call_soon_threadsafe(_settle, waiting.answer, {"error": PAGE_CLOSED})

    def _handle(self, comm_id: str, data: Any) -> None:
        action = data.get("action") if isinstance(data, dict) else None
        if action == "reply":
            self._resolve(data)
            return
        if action == "cancel_all":
            agent = self._get_agent()
            if agent is not None:
                agent.cancel_all()
        elif action not in ("status", None):  # an open without data is a subscription
            error = f"unknown action {action!r}: send 'status' or 'cancel_all'"
            with self._lock:
                self._send_locked({"event": "error", "message": error}, only=comm_id)
            return
        # Answered from this thread: a page asking while a blocking cell holds the main
        # shell still gets the counts.
        self.push()

    def _resolve(self, reply: dict[str, Any]) -> None:
        with self._lock:
            waiting = self._pending.get(reply.get("id"))  # type: ignore[arg-type]
        if waiting is None:
            return
        if reply.get("pending") is True and waiting.acked is not None:
            waiting.loop.call_soon_threadsafe(_settle, waiting.acked, reply)
        else:
            waiting.loop.call_soon_threadsafe(_settle, waiting.answer, reply)

    async def request(
        self, data: dict[str, Any], timeout: float, wait: bool = False
    ) -> dict[str, Any] | None:
        """Ask the newest page about its notebook; None when no page answers in time.

        With ``wait`` the page has ``timeout`` seconds to acknowledge, then as long as it
        takes to answer, and a page's error comes back as the reply (``{"error": ...}``).
        """
        loop = asyncio.get_running_loop()
        waiting = _Waiting(loop, loop.create_future(), "", loop.create_future() if wait else None)
        with self._lock:
            if not self._peers:
                return None
            waiting.comm_id = next(reversed(self._peers))
            request_id = next(self._request_ids)
            self._pending[request_id] = waiting
            message = {"event": "request", "id": request_id, **data}
            self._send_locked(message, only=waiting.comm_id)
        try:
            if waiting.acked is None:
                reply = await asyncio.wait_for(waiting.answer, timeout)
            else:
                first = {waiting.acked, waiting.answer}
                await asyncio.wait(first, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not any(f.done() for f in first):
                    return None
                reply = await waiting.answer
        except TimeoutError:
            return None
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
        if isinstance(reply.get("error"), str):
            log.debug("the page could not answer %s: %s", data.get("op"), reply["error"])
            return reply if wait else None
        return reply

    def notify(self, data: dict[str, Any]) -> bool:
        """Send a request to the newest page without awaiting its answer; False: no page."""
        with self._lock:
            if not self._peers:
                return False
            comm_id = next(reversed(self._peers))
            message = {"event": "request", "id": next(self._request_ids), **data}
            self._send_locked(message, only=comm_id)
        return True

    def push(self) -> None:
        """Send the current counts to every open comm."""
        agent = self._get_agent()
        with self._lock:
            self._send_locked(status_message(agent.status() if agent is not None else None))

    def _send_locked(self, data: dict[str, Any], only: str | None = None) -> None:
        for comm_id, peer in list(self._peers.items()):
            if only is not None and comm_id != only:
                continue
            try:
                peer.context.run(peer.comm.send, data)
            except Exception:  # a comm torn down mid-send must not stop the others
                log.debug("could not send to comm %s", comm_id, exc_info=True)
                del self._peers[comm_id]

    # -- main thread ---------------------------------------------------------------------

    def subscribe(self, *_args: Any) -> None:
        """Follow the status of the kernel's agent, if one was made (or replaced) since.

        Agents are made and replaced by cells, so checking at registration and after each
        cell is enough; the listener itself is then called on the loop thread.
        """
        agent = self._get_agent()
        if agent is None or agent in self._listening:
            return
        self._listening.add(agent)
        ref = weakref.ref(agent)
        agent.add_status_listener(lambda _status: self._on_status(ref))
        # Runs may have started before the listener was in place.
        self.push()

    def _on_status(self, agent: weakref.ref[SessionAgent]) -> None:
        # A replaced agent keeps its listener; only the current one speaks for the kernel.
        if agent() is self._get_agent():
            self.push()

    def announce(self) -> None:
        """Tell pages already showing this kernel that crush is loaded now.

        A comm opened and closed at once: each page then opens its own comm (on the
        subshell it picks), which the kernel answers and keeps.
        """
        from comm import create_comm

        comm = create_comm(target_name=TARGET, data={"event": "hello"})
        comm.close()


def _settle(future: asyncio.Future[Any], reply: dict[str, Any]) -> None:
    if not future.done():
        future.set_result(reply)


async def request(
    kernel_or_shell: Any, data: dict[str, Any], timeout: float = 2.0, wait: bool = False
) -> dict[str, Any] | None:
    """Ask the page showing this kernel's notebook (see the protocol above).

    ``None`` at once when no page with the extension is connected (nbclient, a console,
    classic Notebook), or after ``timeout`` seconds without an answer (with ``wait``:
    without an acknowledgement; the answer itself may take as long as the user does).
    """
    channel = _channel(kernel_or_shell)
    if channel is None:
        return None
    return await channel.request(data, timeout, wait)


def notify(kernel_or_shell: Any, data: dict[str, Any]) -> bool:
    """Send the page a request whose answer nobody awaits; False when no page is connected.
    Safe where awaiting is not (a task being cancelled)."""
    channel = _channel(kernel_or_shell)
    return channel is not None and channel.notify(data)


def _channel(kernel_or_shell: Any) -> _LabChannel | None:
    kernel = getattr(kernel_or_shell, "kernel", kernel_or_shell)
    return getattr(kernel, "_jupyter_crush_lab", None)


def register(kernel_or_shell: Any, get_agent: Callable[[], SessionAgent | None]) -> None:
    """Register the ``jupyter_crush`` comm target on this kernel (once; later calls no-op).

    ``get_agent`` returns the kernel's agent, or ``None`` while none has been made; it is
    called from the comm's threads too, so it must only read. Outside a Jupyter kernel
    (terminal IPython) there are no comms and this does nothing.
    """
    kernel = getattr(kernel_or_shell, "kernel", kernel_or_shell)
    comm_manager = getattr(kernel, "comm_manager", None)
    shell = getattr(kernel, "shell", None)
    if comm_manager is None or shell is None:
        return
    if getattr(kernel, "_jupyter_crush_lab", None) is not None:
        return
    channel = _LabChannel(get_agent)
    kernel._jupyter_crush_lab = channel
    comm_manager.register_target(TARGET, channel.on_open)
    # A cell may make the agent (the first %%crush) or replace it (a model change).
    shell.events.register("post_run_cell", channel.subscribe)
    channel.subscribe()
    channel.announce()
