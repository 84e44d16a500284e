"""Undo a turn: what its tools changed, put back as far as it can be, and said exactly.

Each turn this kernel runs has a :class:`TurnLog` its tools report to before they change
anything (:mod:`jupyter_crush.core.changes`): the names a ``python`` call can touch, with
their previous bindings and copies (:mod:`jupyter_crush.kernel.snapshot`), the previous bytes
of each file ``write``/``edit`` changed, the cells the turn inserted and the edits of cells
the user accepted.

``%crush undo`` and the run view's Undo button undo the session's latest turn not yet undone
that changed something (turns that changed nothing are passed over): names are rebound,
removed or restored, objects changed in place get their content back, files their bytes,
inserted cells are removed and edits reverted through the JupyterLab extension. A second
undo undoes the turn before. Undo never runs beside a turn of its session: asked while one
runs, it waits until every prompt accepted before it has ended and runs in the last one's
end (on the loop thread, before dispatch starts the next prompt). The transcript keeps the
undo as a system row of the session (which requests carry to the model as a note, so it
knows its work was taken back) and marks the turn's prompt ``undone_by`` it; records of
both kinds read as before in every version of the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.message import Message, Role, TextPart
from ..providers.history import UNDO_EVENT
from .snapshot import NameSnapshot, restore_content, snapshot, touched_names

if TYPE_CHECKING:
    from ..agent.session import SessionAgent
    from ..store.transcript import TranscriptStore

log = logging.getLogger(__name__)

#: Metadata of the prompt of a turn undone (the undo's own row is marked UNDO_EVENT).
UNDONE_KEY = "undone_by"
#: Turns per session whose changes this kernel keeps, newest first: how far undo reaches back.
KEPT_TURNS = 10
#: How long the page has to remove a cell or put its source back.
CELL_TIMEOUT = 3.0


class TurnLog:
    """What one turn changed, as its tools reported it (see :mod:`jupyter_crush.core.changes`).

    Reports arrive on the loop thread (``python``, cells) and on the file tools' worker
    threads; each keeps only the state before the turn's first change of that name, file or
    cell.
    """

    def __init__(self, session_id: str, prompt_id: str, budget: Callable[[], int]) -> None:
        self.session_id = session_id
        self.prompt_id = prompt_id
        self._budget = budget
        self.names: dict[str, NameSnapshot] = {}
        self.files: dict[str, bytes | None] = {}
        self.cells_inserted: list[str] = []
        #: Cell id -> (source before the turn's first accepted edit, after its last).
        self.cells_edited: dict[str, tuple[str, str]] = {}
        self.undone = False

    # -- TurnChanges ---------------------------------------------------------------------

    def before_code(self, namespace: dict[str, Any], code: str) -> None:
        budget = self._budget()
        for name in touched_names(code):
            if name in self.names:
                continue
            try:
                self.names[name] = snapshot(namespace, name, budget)
            except Exception as error:  # an object whose size or copy fails: run the code
                shot = NameSnapshot(name, name in namespace, namespace.get(name))
                shot.not_kept = f"copying it failed: {type(error).__name__}: {error}"
                self.names[name] = shot

    def file_changed(self, path: str, previous: bytes | None) -> None:
        self.files.setdefault(path, previous)

    def cell_inserted(self, cell_id: str) -> None:
        self.cells_inserted.append(cell_id)

    def cell_edited(self, cell_id: str, before: str, after: str) -> None:
        first = self.cells_edited.get(cell_id, (before, after))[0]
        self.cells_edited[cell_id] = (first, after)

    # -- what changed --------------------------------------------------------------------

    def changed_names(self, namespace: dict[str, Any]) -> list[str]:
        """Names whose binding or content differ from before the turn, or may (an object
        changed in place that undo could not copy)."""
        return [
            shot.name
            for shot in self.names.values()
            if shot.binding_changed(namespace) or shot.content_changed() or _may_differ(shot)
        ]

    def changed_files(self) -> list[str]:
        return [path for path, before in self.files.items() if _read(path) != before]

    def summary(self, namespace: dict[str, Any]) -> str:
        """ "changed: 2 cells, 3 variables, 1 file" ("" when nothing changed)."""
        counts = [
            (len(self.cells_inserted) + len(self.cells_edited), "cell"),
            (len(self.changed_names(namespace)), "variable"),
            (len(self.changed_files()), "file"),
        ]
        said = [f"{n} {noun}{'' if n == 1 else 's'}" for n, noun in counts if n]
        return "changed: " + ", ".join(said) if said else ""

    def has_changes(self, namespace: dict[str, Any]) -> bool:
        return bool(self.summary(namespace))


def _may_differ(shot: NameSnapshot) -> bool:
    return bool(shot.present and shot.not_kept)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except OSError:
        return b""  # unreadable now: not what it held, whatever that was


@dataclass
class UndoReport:
    """What an undo restored and what it could not, one list per line of its report."""

    session: str
    prompt: str
    rebound: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)
    in_place: list[str] = field(default_factory=list)
    not_restored: list[str] = field(default_factory=list)
    files_restored: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    cells_removed: list[str] = field(default_factory=list)
    edits_reverted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"Undid the turn {self.prompt!r} of session {self.session}:"]
        for label, items in (
            ("variables rebound to their previous values", self.rebound),
            ("variables removed (the turn created them)", self.removed),
            ("variables restored (the turn deleted them)", self.recreated),
            ("objects restored in place", self.in_place),
            ("files restored", self.files_restored),
            ("files removed (the turn created them)", self.files_removed),
            ("cells removed (the turn inserted them)", self.cells_removed),
            ("cell edits reverted", self.edits_reverted),
            ("changed, not restored", self.not_restored),
            ("could not restore", self.failed),
        ):
            if items:
                lines.append(f"  {label}: {', '.join(items)}")
        if len(lines) == 1:
            lines.append("  nothing it changed was left to restore")
        return "\n".join(lines)


def undo_names(turn: TurnLog, namespace: dict[str, Any], report: UndoReport) -> None:
    """Put the turn's names back as they were before it (see the module docstring)."""
    for shot in turn.names.values():
        name = shot.name
        target = shot.value
        if shot.content_changed():
            try:
                target = restore_content(shot.value, shot.saved)
            except Exception as error:  # an object refusing its old content: say so
                report.failed.append(f"{name} ({type(error).__name__}: {error})")
                continue
            if target is shot.value:
                report.in_place.append(name)
        if not shot.present:
            if name in namespace:
                del namespace[name]
                report.removed.append(name)
            continue
        if name not in namespace:
            namespace[name] = target
            report.recreated.append(name)
        elif namespace[name] is not target:
            namespace[name] = target
            report.rebound.append(name)
        if shot.not_kept:
            report.not_restored.append(f"{name} ({shot.not_kept})")


def undo_files(turn: TurnLog, report: UndoReport) -> None:
    """Give each file the turn changed its previous bytes, or remove it if it did not exist."""
    for path, before in turn.files.items():
        shown = _shown_path(path)
        if _read(path) == before:
            continue
        try:
            if before is None:
                os.remove(path)
                report.files_removed.append(shown)
            else:
                _write_bytes(path, before)
                report.files_restored.append(shown)
        except OSError as error:
            report.failed.append(f"{shown} ({error.strerror or error})")


def _write_bytes(path: str, data: bytes) -> None:
    """Replace ``path`` atomically, keeping its mode."""
    tmp = f"{path}.crush-undo.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    if os.path.exists(path):
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    os.replace(tmp, path)


def _shown_path(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


async def undo_cells(shell: Any, turn: TurnLog, report: UndoReport) -> None:
    """Remove the cells the turn inserted and revert its accepted edits, in the live
    document through the JupyterLab / Notebook 7 extension."""
    from ..notebook import labcomm

    for cell_id in reversed(turn.cells_inserted):
        reply = await labcomm.request(
            shell, {"op": "delete_cell", "cell_id": cell_id}, timeout=CELL_TIMEOUT
        )
        _note_cell(reply, cell_id, report.cells_removed, report)
    for cell_id, (before, _after) in turn.cells_edited.items():
        reply = await labcomm.request(
            shell,
            {"op": "set_cell_source", "cell_id": cell_id, "source": before},
            timeout=CELL_TIMEOUT,
        )
        _note_cell(reply, cell_id, report.edits_reverted, report)


def _note_cell(
    reply: dict[str, Any] | None, cell_id: str, done: list[str], report: UndoReport
) -> None:
    if reply is not None and reply.get("ok"):
        done.append(f"cell {cell_id[:8]}")
    elif reply is None:
        report.failed.append(f"cell {cell_id[:8]} (no JupyterLab or Notebook 7 page answered)")
    else:
        report.failed.append(f"cell {cell_id[:8]} ({reply.get('reason') or 'not found'})")


class UndoRefused(Exception):
    """Nothing is undone; the message says why in one line."""


@dataclass(eq=False)
class _Waiting:
    """An undo asked while its session was busy: it runs once ``ahead`` prompts have ended."""

    ahead: int
    say: Callable[[str], None]


class Undo:
    """This kernel's turn logs, by session, and the undos waiting for a busy session.

    Loop thread only: the agent asks for a log as a tool starts, the run tracker reports a
    turn's end, the command and the button's click (moved to the loop) ask for an undo.
    """

    def __init__(
        self,
        shell: Any,
        budget: Callable[[], int],
        store: Callable[[], TranscriptStore],
        agent: Callable[[], SessionAgent | None],
    ) -> None:
        self._shell = shell
        self._budget = budget
        self._store = store
        self._agent = agent
        self._logs: dict[str, dict[str, TurnLog]] = {}  # session -> prompt id -> log, in order
        self._waiting: dict[str, list[_Waiting]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def namespace(self) -> dict[str, Any]:
        return self._shell.user_ns

    def log_for(self, session_id: str, prompt_id: str) -> TurnLog:
        """The log of the turn whose prompt is ``prompt_id`` (made on first use)."""
        logs = self._logs.setdefault(session_id, {})
        turn = logs.get(prompt_id)
        if turn is None:
            turn = logs[prompt_id] = TurnLog(session_id, prompt_id, self._budget)
            # A log holds what its turn replaced (a frame rebound, copies): keep only the
            # newest turns' so that the objects of old ones can be freed.
            while len(logs) > KEPT_TURNS:
                del logs[next(iter(logs))]
        return turn

    def latest(self, session_id: str) -> TurnLog | None:
        """The log of the session's latest turn run in this kernel."""
        logs = self._logs.get(session_id)
        return next(reversed(logs.values())) if logs else None

    def summary(self, session_id: str, prompt_id: str) -> str:
        """What the turn changed, as its run view says at its end ("" if nothing)."""
        turn = self._logs.get(session_id, {}).get(prompt_id)
        return turn.summary(self.namespace) if turn is not None else ""

    # -- asking for an undo --------------------------------------------------------------

    def request(
        self,
        session_id: str,
        say: Callable[[str], None],
        run_now: Callable[[Coroutine[Any, Any, None]], None] | None = None,
    ) -> bool:
        """Undo the session's latest turn now, or once the prompts accepted before this
        have ended (True: it waits). ``say`` gets the report, or why nothing was undone.
        The cells' part (the page's answers) runs as a task, or through ``run_now`` when
        the undo runs at once (a cell running the command waits for it there)."""
        agent = self._agent()
        status = agent.status() if agent is not None else None
        ahead = 0
        if status is not None:
            ahead = (session_id in status.running) + status.queued.get(session_id, 0)
        if ahead:
            self._waiting.setdefault(session_id, []).append(_Waiting(ahead, say))
            return True
        self._run(session_id, say, run_now)
        return False

    def turn_ended(self, session_id: str) -> None:
        """A prompt of the session ended (its Finished event, before the next one starts):
        run the undos that waited for it."""
        waiting = self._waiting.get(session_id, [])
        for entry in list(waiting):
            entry.ahead -= 1
            if entry.ahead <= 0:
                waiting.remove(entry)
                self._run(session_id, entry.say, None)

    # -- undoing -------------------------------------------------------------------------

    def _run(
        self,
        session_id: str,
        say: Callable[[str], None],
        run_now: Callable[[Coroutine[Any, Any, None]], None] | None,
    ) -> None:
        try:
            turn, report = self._undo_kernel_state(session_id)
        except UndoRefused as refused:
            say(str(refused))
            return
        except Exception as error:  # the store or the namespace failing: say it, never raise
            log.warning("undo of session %s failed", session_id, exc_info=True)
            say(f"Undo failed: {type(error).__name__}: {error}")
            return
        if not (turn.cells_inserted or turn.cells_edited):
            self._record(turn, report)
            say(report.text())
            return

        async def cells() -> None:
            await undo_cells(self._shell, turn, report)
            self._record(turn, report)
            say(report.text())

        if run_now is not None:
            run_now(cells())
        else:
            task = asyncio.get_running_loop().create_task(cells())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _undo_kernel_state(self, session_id: str) -> tuple[TurnLog, UndoReport]:
        store = self._store()
        session = store.get_session(session_id)
        name = repr(session.title) if session.title else session_id[:8]
        turn = self._latest_changed(session_id)
        self._check_owner(store, session_id, name, turn)
        if turn is None:
            why = (
                "no turn this kernel ran is left that changed something"
                if session_id in self._logs
                else "this kernel has run none of its turns (undo takes back turns run here)"
            )
            raise UndoRefused(f"Nothing to undo in session {name}: {why}")
        turn.undone = True
        report = UndoReport(name, _prompt_of(store, session_id, turn.prompt_id))
        undo_names(turn, self.namespace, report)
        undo_files(turn, report)
        return turn, report

    def _latest_changed(self, session_id: str) -> TurnLog | None:
        for turn in reversed(self._logs.get(session_id, {}).values()):
            if not turn.undone and turn.has_changes(self.namespace):
                return turn
        return None

    def _check_owner(
        self, store: TranscriptStore, session_id: str, name: str, turn: TurnLog | None
    ) -> None:
        """Refuse when another kernel, still running, ran a turn of the session after the
        one this kernel would undo: that kernel alone knows what its turn changed."""
        prompts = [m for m in store.list_messages(session_id) if m.role is Role.USER]
        for message in reversed(prompts):
            if turn is not None and message.id == turn.prompt_id:
                return
            if UNDONE_KEY in message.metadata:
                continue
            if store.written_elsewhere(session_id, message.id):
                raise UndoRefused(
                    f"Session {name} is used by another kernel, which ran its latest turn: "
                    "undo it from that kernel's notebook"
                )

    def _record(self, turn: TurnLog, report: UndoReport) -> None:
        """The undo as an event of the session, and its turn's prompt marked undone."""
        store = self._store()
        event = Message(
            turn.session_id,
            Role.SYSTEM,
            [TextPart(report.text())],
            metadata={"event": UNDO_EVENT, "turn": turn.prompt_id},
        )
        try:
            store.add_message(event)
            prompt = store.get_message(turn.session_id, turn.prompt_id)
            prompt.metadata[UNDONE_KEY] = event.id
            store.update_message(prompt, force=True)
        except Exception:  # the undo happened; a store that refuses it says so in its log
            log.warning("could not record the undo in the transcript", exc_info=True)


def _prompt_of(store: TranscriptStore, session_id: str, prompt_id: str) -> str:
    try:
        text = store.get_message(session_id, prompt_id).text
    except Exception:
        return prompt_id[:8]
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= 60 else first[:57] + "..."
