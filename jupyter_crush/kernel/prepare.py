"""What a prompt goes through before the agent accepts it.

A ``%%crush`` cell's text becomes the prompt sent (:func:`cell_prompt`: ``{name}``
placeholders filled from the notebook, figures it names attached as images). Then
:func:`prepare` picks the model (a replay recording answers its own prompts), brings the
agent in line with the current settings and the notebook's context files, finds or starts
the session, and decides whether an unchanged cell replays its recorded turn. Everything
here may still refuse the prompt with a one-line UsageError: nothing is recorded yet.

Known secrets never leave here: interpolated values are redacted as they fill the prompt
(:mod:`jupyter_crush.kernel.interpolate`) and text attachments by :func:`prepare`, whose
:attr:`Prepared.attachments` are what is sent and stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ..agent.calls import Attachment
from ..agent.compaction import policy_from
from ..agent.titles import prompt_title
from ..core.images import PromptImages
from ..core.output import redact
from .errors import store_problems_in_one_line
from .interpolate import interpolate
from .models import configured_title_model
from .rerun import Cell, Plan
from .trust_report import check_at_prompt

if TYPE_CHECKING:
    from ..agent.session import SessionAgent
    from ..core.message import Session
    from ..core.model import Model
    from .crush import Crush


@dataclass(frozen=True)
class CellPrompt:
    """A ``%%crush`` cell's prompt: the text sent, the figures it attaches, what the cell held."""

    text: str
    attachments: tuple[Attachment, ...]
    cell: Cell


def cell_prompt(body: str, namespace: Mapping[str, Any], *, fresh: bool = False) -> CellPrompt:
    """Fill the cell's placeholders from ``namespace``; a figure that cannot be sent is one
    printed line and the prompt still goes."""
    template = body.rstrip().lstrip("\n")
    shown = PromptImages()  # figures the prompt names go as images
    values: dict[str, Any] = {}  # what the placeholders were, for replay fingerprints
    text = interpolate(template, namespace, shown, values)
    for problem in shown.problems:  # a broken _repr_png_'s message may quote the value
        print(redact(problem))
    attachments = tuple(Attachment(image.label, image=image) for image in shown.images)
    return CellPrompt(text, attachments, Cell(template, values, fresh))


@dataclass(frozen=True)
class Prepared:
    """A prompt ready to be accepted: who answers it, in which session, and how."""

    agent: SessionAgent
    session: Session
    #: The model asked (for a replay recording, the one answering this prompt).
    model: Model
    #: Replay a recorded turn, or ask with the prompt's fingerprint.
    plan: Plan
    #: For the status line: which recorded turn answers, or why the cell asks again.
    note: str
    #: The prompt's attachments as sent and stored: their text redacted of known secrets.
    attachments: tuple[Attachment, ...] = ()


def prepare(
    crush: Crush,
    prompt: str,
    *,
    session_ref: str | None = None,
    new: bool = False,
    model_name: str | None = None,
    cell: Cell | None = None,
    attachments: Iterable[Attachment] = (),
) -> Prepared:
    """Everything before the accept; raises UsageError saying what to do, recording nothing.

    Makes ``session_ref`` (or the new session) the current one.
    """
    if not prompt.strip():
        raise UsageError("The prompt is empty: write what you want after the %%crush line")
    attachments = tuple(
        replace(a, content=redact(a.content)) if a.content else a for a in attachments
    )
    from ..providers.replay import for_prompt

    check_at_prompt(crush)  # a folder's crush.json: what it may not do yet, said once
    # Before anything is recorded; a replay says which recorded prompt it answers.
    model, replay_note = for_prompt(crush.resolve_model(model_name), prompt)
    with store_problems_in_one_line():  # the store opens here (a full disk, a bad path)
        agent = crush.ensure_agent(model)
    # Settings changed with %config since the agent was made apply to the next prompt.
    config = crush.config
    agent.max_steps = config.max_steps
    agent.context = policy_from(config)
    agent.title_model = configured_title_model(crush)
    agent.titles = config.titles
    crush.permissions.allowed_tools = frozenset(config.allowed_tools)
    system = crush.system_prompt(agent.tools.values())
    agent.system_prompt = system.text
    for problem in system.problems:
        print(problem)
    with store_problems_in_one_line():  # a damaged journal stops here, before any accept
        session = session_for_cell(crush, session_ref, new, prompt)
        crush.store.list_messages(session.id)
    crush.current_session_id = session.id
    plan = crush.rerun.plan(
        crush.store,
        crush.shell,
        config.replay,
        session.id,
        prompt,
        cell,
        model=model,
        tools=agent.tools,
        system=system.text,
        attachments=attachments,
    )
    return Prepared(agent, session, model, plan, plan.note or replay_note, attachments)


def session_for_cell(crush: Crush, ref: str | None, new: bool, prompt: str) -> Session:
    """``--new``, ``-s SESSION`` (a title not seen yet starts it), else the current session."""
    store = crush.store
    if new:
        return store.create_session(title=ref or prompt_title(prompt))
    if ref:
        try:
            return crush.find_session(ref)
        except UsageError:
            if _looks_like_id(ref):
                raise
            # Naming a session that does not exist yet starts it: `%%crush -s analysis`.
            return store.create_session(title=ref)
    if crush.current_session_id is not None:
        return store.get_session(crush.current_session_id)
    return store.create_session(title=prompt_title(prompt))


def _looks_like_id(ref: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{32}", ref))
