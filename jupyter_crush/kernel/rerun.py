"""Reproducible Run All: an unchanged ``%%crush`` cell replays its recorded turn.

Every prompt a ``%%crush`` cell sends carries its
:class:`~jupyter_crush.kernel.fingerprint.Fingerprint` on the user message's metadata
(``{"fingerprint": {...}}``). When a cell runs again and the transcript store holds a
*completed* turn (finish ``end_turn``; never a canceled or failed one) with the same
fingerprint key, the cell replays it instead of asking the provider:

- the recorded steps stream into the widget at once from :class:`RecordedModel` (provider
  ``recorded``, 0 tokens, no cost), through the agent like any turn, so queueing, Stop and
  the transcript work as usual; the user message says ``replay_of`` (the recorded prompt's
  id) and ``replayed_from`` (its time), so the transcript tells a replay from a model turn;
- the ``python`` calls are run again in order, in the kernel, so later cells see the same
  variables; each output is compared with the recorded one and a difference marks the cell
  "diverged" (status line, and the tool result's ``replay`` metadata);
- read-only tools and ``insert_cell`` answer from the record (a replay never inserts a cell
  again, and ``-f code`` does not insert its cell again);
- a recorded call to a tool with effects outside the kernel (``bash``, ``write``, ``edit``,
  an MCP tool) is never run again: its recorded result answers it and the status line says
  so; the file a ``write`` or ``edit`` left must still hold that text, else the replay
  stops there naming the file (:mod:`jupyter_crush.kernel.replay_effects`).

``CrushConfig.replay`` (or ``%crush replay on|off|strict``) picks what happens otherwise:
``auto`` asks afresh when anything changed, saying what ("df changed since the recorded
answer"); ``strict`` refuses with an error naming the cell and what changed, so a CI run
never reaches a provider, and stops a replay before any call with effects outside the
kernel; ``off`` always asks. ``%%crush --fresh`` always asks. ``verify`` (the mode of
``%crush verify``'s fresh kernel) replays as ``auto`` does and refuses every cell that would
ask, ``--fresh`` ones too, in a line the verify report turns into a skipped cell.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ..core.message import FinishReason, Message, Role, ToolCallPart
from ..core.model import (
    ModelError,
    ReasoningDelta,
    ReasoningEnd,
    StreamEvent,
    StreamFinish,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolSpec,
)
from ..core.tools import Tool, ToolContext, ToolResult
from ..notebook.verify_report import NEEDS_MODEL
from ..store.transcript import StoreError
from .fingerprint import Fingerprint
from .replay_effects import RecordedEffects, not_run_note, workspace_of

if TYPE_CHECKING:
    from ..agent.calls import Attachment
    from ..core.model import Model
    from ..store.transcript import TranscriptStore
    from ..view.base import RunView

#: Run again on replay, in the kernel, outputs compared with the recorded ones.
RERUN_TOOLS = frozenset({"python"})
#: Answered from the record on replay: they read, or (insert_cell) their cell is already there.
#: ``agent``'s sub-agent only reads too: its recorded answer stands, its session is not made again.
RECORDED_TOOLS = frozenset(
    {"variables", "notebook", "verify", "view", "glob", "grep", "ls", "insert_cell", "agent"}
)

NO_RECORD = "no recorded answer to this prompt"

MODES = {"on": "auto", "auto": "auto", "off": "off", "strict": "strict"}


@dataclass(frozen=True)
class RecordedTurn:
    """A prompt of the store and the records its turn wrote after it."""

    user: Message
    records: list[Message]
    fingerprint: Fingerprint

    @property
    def completed(self) -> bool:
        answers = [m for m in self.records if m.role is Role.ASSISTANT]
        return bool(answers) and answers[-1].finish_reason is FinishReason.END_TURN

    @property
    def steps(self) -> list[Message]:
        """The assistant messages the model streamed, one per step."""
        return [
            m
            for m in self.records
            if m.role is Role.ASSISTANT and any(p.type != "finish" for p in m.parts)
        ]

    @property
    def results(self) -> dict[str, Any]:
        """Recorded tool results by tool call id."""
        return {r.tool_call_id: r for m in self.records for r in m.tool_results}

    @property
    def calls(self) -> list[ToolCallPart]:
        """The recorded tool calls, in the order they were made."""
        return [c for m in self.steps for c in m.tool_calls]

    @property
    def model(self) -> str:
        step = next(iter(self.steps), None)
        return f"{step.provider}:{step.model}" if step else self.fingerprint.model


def recorded_turns(store: TranscriptStore) -> Iterator[RecordedTurn]:
    """Every fingerprinted prompt the store holds that a model answered (not a replay)."""
    for session in store.list_sessions():
        try:
            messages = store.list_messages(session.id)
        except StoreError:  # a damaged journal holds nothing to replay; its cells say so
            continue
        turn: list[Message] = []
        for message in [*messages, None]:
            if message is None or message.role is Role.USER:
                if turn:
                    found = _recorded(turn)
                    if found is not None:
                        yield found
                turn = []
            if message is not None:
                turn.append(message)


def _recorded(turn: list[Message]) -> RecordedTurn | None:
    user, *records = turn
    meta = user.metadata
    if user.role is not Role.USER or "fingerprint" not in meta or "replay_of" in meta:
        return None
    return RecordedTurn(user, records, Fingerprint.from_dict(meta["fingerprint"]))


def find(store: TranscriptStore, asked: Fingerprint) -> tuple[RecordedTurn | None, list[str]]:
    """The newest completed turn that asked ``asked``, else None and what changed.

    What changed is read against the closest completed turn (same prompt and values but
    another setting, then the same prompt, then the same place in its session's chain);
    without one it says there is no recorded answer.
    """
    exact = None
    closest: tuple[int, RecordedTurn] | None = None
    for turn in recorded_turns(store):
        if not turn.completed:
            continue
        recorded = turn.fingerprint
        if recorded.key == asked.key and not asked.uncertain:
            exact = turn if exact is None or _newer(turn, exact) else exact
            continue
        score = (
            3 * (recorded.shape == asked.shape)
            + 2 * (recorded.template == asked.template)
            + (recorded.previous == asked.previous)
        )
        if score and (closest is None or score >= closest[0]):
            closest = (score, turn)
    if exact is not None:
        return exact, []
    if closest is None or closest[0] < 2:
        return None, [NO_RECORD]
    return None, asked.changes_from(closest[1].fingerprint)


def _newer(a: RecordedTurn, b: RecordedTurn) -> bool:
    return a.user.created_at > b.user.created_at


class RecordedModel:
    """Plays a recorded turn's steps back as a model would stream them: 0 tokens, no cost.

    Step *n* of the turn (counted from the prompt) streams the recorded step *n*. A step
    that called a tool whose effects reach outside the kernel, where the replay must stop
    before it (:meth:`RecordedEffects.stop_before`), streams its text, then ends the turn
    with an error saying why.
    """

    provider = "recorded"

    def __init__(self, replay: Replay) -> None:
        self.turn = replay.turn
        self.effects = replay.effects
        self.name = self.turn.model

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        system: str | None = None,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[StreamEvent]:
        last_prompt = max(i for i, m in enumerate(messages) if m.role is Role.USER)
        step = sum(1 for m in messages[last_prompt:] if m.role is Role.ASSISTANT)
        steps = self.turn.steps
        if step >= len(steps):
            raise ModelError("the recorded turn has no further step to replay")
        recorded = steps[step]
        for part in recorded.parts:
            if part.type == "reasoning":
                yield ReasoningDelta(
                    part.text, part.signature, part.redacted, part.item_id, part.encrypted
                )
                yield ReasoningEnd()
            elif part.type == "text":
                yield TextDelta(part.text)
        stop = self.effects.stop_before(c for c in recorded.tool_calls if outside_kernel(c.name))
        if stop is not None:
            raise ModelError(stop)
        for call in recorded.tool_calls:
            yield ToolCallStart(call.id, call.name, call.signature)
            yield ToolCallDelta(call.id, call.input)
            yield ToolCallEnd(call.id)
        reason = recorded.finish_reason or FinishReason.END_TURN
        yield StreamFinish(reason)


def outside_kernel(tool: str) -> bool:
    """Whether a recorded call to ``tool`` may have had effects outside the kernel: it is
    neither run again in the kernel nor one that only reads."""
    return tool not in RERUN_TOOLS | RECORDED_TOOLS


@dataclass
class Replay:
    """A replay in progress: its record, its view, the calls that came out differently and
    those its record answered without running them."""

    turn: RecordedTurn
    effects: RecordedEffects
    view: RunView | None = None
    diverged: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)  # labels of calls answered from record

    @property
    def note(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.turn.user.created_at))
        note = f"replayed from {when} · 0 tokens · $0"
        if self.not_run:
            note += f" · {not_run_note(self.not_run)}"
        if self.diverged:
            note += f" · diverged: {'; '.join(self.diverged)}"
        return note

    def tools(self, agent_tools: Mapping[str, Tool]) -> list[Tool]:
        """The tools answering the replayed calls: python re-run and compared, the rest
        from the record (those with effects outside the kernel noted as not run again)."""
        names = {c.name for c in self.turn.calls}
        results = self.turn.results
        made = []
        for name in sorted(names - RERUN_TOOLS):
            spec = agent_tools[name].spec if name in agent_tools else ToolSpec(name, "", {})
            answered = self._answered_from_record if outside_kernel(name) else None
            made.append(Tool(spec, _from_record(results, answered)))
        for name in sorted(names & RERUN_TOOLS & agent_tools.keys()):
            real = agent_tools[name]
            made.append(replace(real, run=self._compared(real, results)))
        return made

    def _answered_from_record(self, call_id: str) -> None:
        self.not_run.append(self.effects.label(call_id))
        self._show_note()

    def _show_note(self) -> None:
        if self.view is not None:
            self.view.labels = replace(self.view.labels, replay=self.note)

    def _compared(self, real: Tool, results: Mapping[str, Any]) -> Any:
        async def run(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
            outcome = await real.run(arguments, context)
            recorded = results.get(context.tool_call_id)
            if recorded is not None and (
                outcome.content != recorded.content or outcome.is_error != recorded.is_error
            ):
                calls = [c.id for c in self.turn.calls if c.name == real.name]
                number = calls.index(context.tool_call_id) + 1
                self.diverged.append(f"{real.name} call {number} printed something else")
                outcome.metadata = {
                    **outcome.metadata,
                    "replay": {"diverged": True, "recorded": recorded.content},
                }
                self._show_note()
            return outcome

        return run


def _from_record(results: Mapping[str, Any], answered: Callable[[str], None] | None = None) -> Any:
    """A tool run answering each call with its recorded result; ``answered`` (given for
    tools with effects outside the kernel) hears of each call so answered, by id."""

    async def run(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        recorded = results.get(context.tool_call_id)
        if recorded is None:
            return ToolResult("The recorded turn has no result for this call", is_error=True)
        replay: dict[str, Any] = {"from_record": True}
        if answered is not None:
            replay["not_run"] = True
            answered(context.tool_call_id)
        metadata = {**recorded.metadata, "replay": replay}
        return ToolResult(recorded.content, recorded.is_error, metadata, list(recorded.images))

    return run


@dataclass(frozen=True)
class Cell:
    """What a ``%%crush`` cell held: its text, the values it filled in, ``--fresh``."""

    template: str
    values: Mapping[str, Any] = field(default_factory=dict)
    fresh: bool = False


@dataclass
class Plan:
    """What a ``%%crush`` cell does: replay a recorded turn, or ask with its fingerprint."""

    metadata: dict[str, Any]
    replay: Replay | None = None
    #: For the status line: the replay's note, or why the cell asks again.
    note: str = ""

    @property
    def model(self) -> Model | None:
        return RecordedModel(self.replay) if self.replay else None

    def show(self, view: RunView) -> None:
        if self.replay is not None:
            self.replay.view = view


class Rerun:
    """The kernel's replay state: the latest turn asked in each session, for the chain."""

    def __init__(self) -> None:
        # Session id -> fingerprint key of its latest turn asked in this kernel; the next
        # turn's `previous`. Written and read by cells only (the loop thread).
        self._latest: dict[str, str] = {}

    def plan(
        self,
        store: TranscriptStore,
        shell: Any,
        mode: str,
        session_id: str,
        prompt: str,
        cell: Cell | None,
        *,
        model: Model,
        tools: Mapping[str, Tool],
        system: str | None,
        attachments: Iterable[Attachment] = (),
    ) -> Plan:
        """Replay or ask, in replay ``mode`` (``CrushConfig.replay``) over the turns of
        ``store``; raises UsageError in strict mode when there is nothing to replay."""
        cell = cell or Cell(prompt)
        attachments = list(attachments)
        sent = (a.image.file if a.image else a.content for a in attachments)
        asked = "\0".join([prompt, *sent])
        # A figure sent as an image is told by its picture: the file name is the PNG's hash.
        pictures = {a.image.label.strip("{} "): a.image.file for a in attachments if a.image}
        fingerprint = Fingerprint.of(
            cell.template,
            asked,
            {name: pictures.get(name, value) for name, value in cell.values.items()},
            model=f"{model.provider}:{model.name}",
            tools=(name for name in tools if not name.startswith("mcp_")),
            system=system,
            previous=self._latest.get(session_id),
        )
        self._latest[session_id] = fingerprint.key
        metadata: dict[str, Any] = {"fingerprint": fingerprint.to_dict()}
        if mode == "verify" and cell.fresh:
            raise UsageError(f"{NEEDS_MODEL} the cell says --fresh")
        if cell.fresh or mode == "off":
            return Plan(metadata)
        turn, changes = find(store, fingerprint)
        if turn is not None:
            metadata["replay_of"] = turn.user.id
            metadata["replayed_from"] = turn.user.created_at
            effects = RecordedEffects(
                turn.calls, turn.results, workspace_of(tools), strict=mode == "strict"
            )
            replay = Replay(turn, effects)
            return Plan(metadata, replay, replay.note)
        if mode == "verify":  # %crush verify's fresh kernel: the cell is skipped, noted
            raise UsageError(f"{NEEDS_MODEL} {'; '.join(changes)}")
        if mode == "strict":
            raise UsageError(
                f"Replay is strict and cell {_cell_name(shell, cell.template)} has no recorded "
                f"answer to replay: {'; '.join(changes)}. Ask afresh with %%crush --fresh or "
                "%crush replay on"
            )
        if changes == [NO_RECORD]:
            return Plan(metadata)
        return Plan(metadata, note=f"{', '.join(changes)} since the recorded answer")


def _cell_name(shell: Any, text: str) -> str:
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first if len(first) <= 50 else first[:49] + "…"
    # IPython counts the running cell before running it: it is In[execution_count - 1].
    count = getattr(shell, "execution_count", 1) - 1
    return f"[{count}] “{first}”" if count > 0 else f"“{first}”"
