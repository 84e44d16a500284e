"""Submitting one prompt: prepare it, accept it before anything else can happen, show its run
view, schedule ``agent.run`` on the kernel's running loop and return (or wait, headless),
so the kernel is idle while the answer streams."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..agent.calls import Attachment, SessionAgentCall
from .display import (
    RunTracker,
    code_to_next_cell,
    interactive,
    kernel_loop,
    run_view_class,
    should_wait,
    wait_for,
)
from .prepare import prepare

if TYPE_CHECKING:
    from ..view.base import RunView
    from .crush import Crush
    from .rerun import Cell


def submit(
    crush: Crush,
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
    its recorded turn (:mod:`jupyter_crush.kernel.rerun`). ``compact`` summarizes the session
    instead (``prompt`` is not recorded).
    """
    prepared = prepare(
        crush,
        prompt,
        session_ref=session_ref,
        new=new,
        model_name=model_name,
        cell=cell,
        attachments=attachments,
    )
    agent, session, plan = prepared.agent, prepared.session, prepared.plan
    model = prepared.model

    from ..view.base import RunLabels

    # Accept first: from here on a cancel from any cell, button or interrupt covers it.
    accepted = agent.begin_accepted(session.id)
    try:
        loop = kernel_loop()
        view = run_view_class(crush.config.run_view)(
            RunLabels(
                session=session.title or session.id[:8],
                model=f"{model.provider}:{model.name}",
                replay=prepared.note,
            ),
            on_stop=lambda: agent.cancel(session.id),
            session_id=session.id,
            redraw_rate=crush.config.redraw_rate,
            loop=loop,
            answer_format="text" if fmt == "text" else "markdown",
        )
        view.interactive = interactive(crush.shell)
        plan.show(view)
        call = SessionAgentCall(
            session.id,
            prompt,
            attachments=prepared.attachments,
            accepted=accepted,
            observer=RunTracker(crush, view, yolo, model, prompt),
            model=plan.model or model,
            tools=plan.replay.tools(agent.tools) if plan.replay else (),
            metadata=plan.metadata,
            compact=compact,
        )
        crush.outputs.show(view, lambda v: crush.yolo_sessions.discard(v.session_id))
        task = loop.create_task(agent.run(call), name=f"crush-cell:{session.id}")
    except BaseException:
        accepted.close()  # nothing will run: the session's accept count must drop back
        raise
    crush.keep_run(task, view)

    blocking = fmt == "code" or (should_wait(crush.config, crush.shell) if wait is None else wait)
    if blocking:
        if view.interactive:
            view.stop_with_interrupt()
        wait_for(loop, view, lambda: crush.agent.cancel(session.id))
        if fmt == "code" and plan.replay is None:  # a replay's cell is already there
            code_to_next_cell(crush, view)
    return view
