"""Long sessions: each request fits the model's window, and nothing the user said is lost.

Before each model request the agent asks :func:`fit_request` for the messages to send. When
the request would leave less than the model's reserve free (see
:mod:`jupyter_crush.core.tokens`), the model is first asked for a summary of the
conversation; the summary is stored in the session as a message of its own role
(``summary``), and from then on each request sends::

    system prompt · the session's first user instruction, verbatim · the summary ·
    the newest turns, as they are

The transcript keeps every original message: only requests change. The summary request is
the previous request with one question appended (same system prompt, same tools, same
messages), so the provider's prompt cache serves all but the question. A summary that fails
(an error, an empty or overlong answer) or is turned off (``auto_compact``) leaves the
oldest turns out instead, with a note to the model and to the user. Requests are cut only
where no tool call is separated from its result.

``%crush compact`` summarizes everything but the newest turn, as Crush's compact does; on a
session with nothing older than that turn it says so and asks the model nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.events import Compacted, CompactionEvent, ContextUsed, Summarizing
from ..core.message import FinishReason, Message, Role, SummaryOfPart, TextPart, Usage
from ..core.model import Model, StreamFinish, TextDelta, closing_stream
from ..core.tokens import (
    CHARS_PER_TOKEN,
    DEFAULT_OUTPUT_TOKENS,
    ContextWindow,
    Meter,
    estimate_message,
    estimate_text,
    message_chars,
    request_tokens,
)
from ..providers.windows import model_window

if TYPE_CHECKING:
    pass

#: Characters of conversation sent with each request when the model's window is unknown
#: (about 4 per token, so ~100k tokens).
DEFAULT_HISTORY_CHARS = 400_000
#: Share of the request budget the newest turns keep, verbatim, beside a summary.
KEEP_SHARE = 0.25
#: Longest useful summary, as a share of the window: a longer one is refused (cut instead).
SUMMARY_SHARE = 0.1

#: The question that ends a summary request. It follows the conversation in the same
#: request (so a prompt cache serves everything before it) and must keep the model from
#: answering or calling the tools that request offers. Sections after Crush's summarizer,
#: for notebook work; the word limit keeps the answer under the longest summary taken.
SUMMARY_REQUEST = """\
Stop here: do not answer or continue the task, and do not call tools. Summarize this \
conversation so far, including any earlier summary in it. Your summary will replace every \
message except the user's first one and the newest few, so what it leaves out is lost: \
write it as a briefing for a colleague who takes over mid-task and must go on without \
asking questions. Use these sections, as Markdown headings:

## Task
What the user asked for after their first message, in their words where it matters; \
their constraints and preferences; what counts as done.

## Progress
What is done, with the results and numbers found; what was under way when you stopped.

## Notebook and files
Variables and DataFrames in the kernel (names, shapes, key columns), files read or written \
(paths), and the code that made what matters.

## What worked, what failed
Code and commands that worked, exactly; errors met and how they were solved; approaches \
tried and dropped, and why.

## Decisions
Choices made and why, assumptions, surprises in the data or the tools.

## Next steps
A numbered list of specific steps: not "clean the data" but "drop the 12 rows of df_sales \
whose region is 'unknown', then redo the March/February comparison".

Quote names, paths, values and error messages exactly. Leave out a section with nothing \
in it. Be complete, in at most {words} words. Answer with the summary only."""

#: What a manual compaction says when the session has no turn older than its newest.
NOTHING_TO_SUMMARIZE = "nothing to summarize: the session has no turn before its newest"

#: How the summary is sent in place of the messages it covers.
SUMMARY_INTRO = (
    "The messages between the user's first one and the newest ones were summarized to fit "
    "the context window. The summary:\n\n"
)


def summary_request(most_tokens: int) -> str:
    """The summary question for a summary of at most ``most_tokens`` tokens, as estimated:
    English words of ~5.7 characters with their space make ~1.4 estimated tokens each, so
    0.6 words a token, rounded down to a round number a model keeps to."""
    words = max(most_tokens * 3 // 5 // 50 * 50, 50)
    return SUMMARY_REQUEST.format(words=f"{words:,}")


@dataclass
class ContextPolicy:
    """How requests are fitted to the window."""

    auto_compact: bool = True  # summarize near the limit; False cuts old turns instead
    context_window: int | None = None  # overrides the model's known window
    history_chars: int = DEFAULT_HISTORY_CHARS  # the budget when the window is unknown


def policy_from(config: Any) -> ContextPolicy:
    """The policy a :class:`~jupyter_crush.kernel.config.CrushConfig` sets."""
    return ContextPolicy(
        auto_compact=config.auto_compact,
        context_window=config.context_window or None,
        history_chars=config.history_chars,
    )


class SummaryFailed(Exception):
    """The model gave no usable summary; the message says why, for the user."""


@dataclass
class RequestShaper:
    """Fits one turn's requests; the agent gives it the turn's moving parts."""

    model: Model
    system: str | None
    tools: Sequence[Any]
    policy: ContextPolicy
    record: Callable[[Message], None]  # stores a new summary in the session
    emit: Callable[[CompactionEvent], None]
    #: Raises CancelledError once a cancel covers the turn (NOTHING-STARTS-WHEN-COVERED).
    stop_if_covered: Callable[[], None]
    #: Called with each request's messages before it is sent: raises to send nothing (a
    #: spending cap's :class:`~jupyter_crush.agent.budget.CapReached`).
    before_request: Callable[[list[Message]], None] = lambda _messages: None

    @property
    def limits(self) -> ContextWindow | None:
        return model_window(self.model, self.policy.context_window)

    async def fit_request(self, history: list[Message], *, force: bool = False) -> list[Message]:
        """The messages to send for ``history`` (the session so far); may summarize first,
        appending the stored summary to ``history``. ``force`` summarizes whatever the size."""
        limits = self.limits
        if limits is None and not force:
            return fallback_request(history, self.policy.history_chars)[1]
        limits = limits or self._chars_window()
        request = request_view(history)
        used = self._tokens(history, request)
        self.emit(ContextUsed(Meter(used, limits)))
        if used <= limits.budget and not force:
            return request
        note = "summaries are off (auto_compact)"
        if self.policy.auto_compact or force:
            try:
                summary = await self.summarize(history, limits, request, used, force=force)
            except SummaryFailed as failed:
                note = str(failed)
            else:
                request, used = self._keep(summary, history, limits)
                if used <= limits.budget:
                    return request
                note = "the newest turns alone are longer than the window"
        fitted = cut_to_chars(request, limits.budget * CHARS_PER_TOKEN, _head(history, request))
        left_out = len(request) - len(fitted) + 1 if fitted is not request else 0
        if left_out:
            self.emit(Compacted(None, f"{_cut_note(left_out)}: {note}"))
        elif force:  # a compaction asked for: say why none was made
            self.emit(Compacted(None, note))
        return fitted

    async def compact(self, history: list[Message]) -> Message | None:
        """Summarize all of ``history`` but its newest turn now, whatever its size
        (``%crush compact``); the summary is stored and appended to ``history``. None, said
        in a :class:`Compacted` note without asking the model, when no older turn is left to
        summarize. Raises :class:`SummaryFailed`."""
        if _newest_turn_start(history) <= _first_kept_index(history):
            self.emit(Compacted(None, NOTHING_TO_SUMMARIZE))
            return None
        limits = self.limits or self._chars_window()
        request = request_view(history)
        used = self._tokens(history, request)
        summary = await self.summarize(history, limits, request, used, force=True)
        self._keep(summary, history, limits)
        return summary

    def _chars_window(self) -> ContextWindow:
        """A window the size of the character budget, for a model whose window is unknown."""
        return ContextWindow(self.policy.history_chars // CHARS_PER_TOKEN, DEFAULT_OUTPUT_TOKENS)

    def _keep(
        self, summary: Message, history: list[Message], limits: ContextWindow
    ) -> tuple[list[Message], int]:
        """Store ``summary`` in the session; the request from now on, and its tokens."""
        self.stop_if_covered()  # a Stop may have landed as the summary's stream ended
        self.record(summary)
        history.append(summary)
        request = request_view(history)
        used = self._tokens(history, request)
        if self.limits is not None:  # a window the model has (else the chars budget's)
            self.emit(ContextUsed(Meter(used, limits)))
        self.emit(Compacted(summary, ""))
        return request, used

    def _tokens(self, history: list[Message], request: list[Message]) -> int:
        return request_tokens(request, self.system, self.tools, since=_summary_time(history))

    async def summarize(
        self,
        history: list[Message],
        limits: ContextWindow,
        request: list[Message],
        used: int,
        *,
        force: bool = False,
    ) -> Message:
        """Ask the model for a summary of ``history``; the summary message, not yet stored.

        A ``force``d (manual) summary covers everything before the newest turn; an automatic
        one keeps as many of the newest turns verbatim as fit in a share of the budget."""
        if force:
            keep_from: int | None = _newest_turn_start(history)
        else:
            keep_from = _keep_from(history, int(limits.budget * KEEP_SHARE))
        previous = _first_kept_index(history)
        if keep_from is None or keep_from <= previous:
            raise SummaryFailed(
                NOTHING_TO_SUMMARIZE
                if force
                else "nothing older than the newest turns to summarize"
            )
        most = max(int(limits.window * SUMMARY_SHARE), 1)
        if used + most > limits.window:  # the whole request leaves no room to answer: older part
            request = request_view(history[:keep_from])
        session_id = history[-1].session_id
        question = Message(session_id, Role.USER, [TextPart(summary_request(most))])
        self.emit(Summarizing())
        text, usage, cost = await self._stream_text([*request, question])
        if not text.strip():
            raise SummaryFailed("the model's summary was empty")
        if estimate_text(text) > most:
            raise SummaryFailed(f"the model's summary was longer than {most} tokens")
        covered = sum(1 for m in history[previous:keep_from] if m.role is not Role.SUMMARY)
        trigger = "manual" if force else "auto"
        return Message(
            session_id,
            Role.SUMMARY,
            [TextPart(text.strip()), SummaryOfPart(history[keep_from].id, covered, trigger)],
            model=self.model.name,
            provider=self.model.provider,
            usage=usage,
            cost=cost,
        )

    async def _stream_text(self, messages: list[Message]) -> tuple[str, Usage, float | None]:
        chunks: list[str] = []
        finish: StreamFinish | None = None
        self.stop_if_covered()
        self.before_request(messages)
        stream = self.model.stream(messages, system=self.system, tools=self.tools)
        try:
            async with closing_stream(stream):
                async for event in stream:
                    self.stop_if_covered()
                    if isinstance(event, TextDelta):
                        chunks.append(event.text)
                    elif isinstance(event, StreamFinish):
                        finish = event
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as error:  # the provider failed: the caller cuts instead
            from .records import describe

            raise SummaryFailed(f"the summary request failed ({describe(error)})") from error
        if finish is None:
            raise SummaryFailed("the summary stream ended without a finish")
        if finish.reason not in (FinishReason.END_TURN, FinishReason.TOOL_USE):
            raise SummaryFailed(f"the summary ended with {finish.reason}")
        return "".join(chunks), finish.usage, finish.cost


# -- the request a history sends ---------------------------------------------------------------


def request_view(history: Sequence[Message]) -> list[Message]:
    """What ``history`` sends: everything, or — after a summary — the first user
    instruction, the newest summary, and the messages it keeps."""
    last = _last_summary(history)
    if last is None:
        return list(history)
    summary = history[last]
    start = _first_kept_index(history)
    kept = [m for m in history[start:] if m.role is not Role.SUMMARY]
    first = next((m for m in history if m.role is Role.USER), None)
    head = [first] if first is not None and first not in kept else []
    sent = Message(
        summary.session_id,
        Role.USER,
        [TextPart(SUMMARY_INTRO + summary.text)],
        id=summary.id,
        created_at=summary.created_at,
    )
    return [*head, sent, *kept]


def fallback_request(
    history: Sequence[Message], budget: int
) -> tuple[list[Message], list[Message]]:
    """The view of ``history`` and the part of it that fits in ``budget`` characters."""
    view = request_view(history)
    return view, cut_to_chars(view, budget, _head(history, view))


def cut_to_chars(request: list[Message], budget: int, head: int = 0) -> list[Message]:
    """The newest messages of ``request`` that fit in ``budget`` characters, after its
    ``head`` (the user's first instruction, the summary) and a note of what is left out.

    Cuts only before a user message, so no tool result is ever separated from its call,
    and always keeps the last one (the prompt being answered) whatever its size.
    """
    total = 0
    cut = None
    for index in range(len(request) - 1, head - 1, -1):
        total += message_chars(request[index])
        if request[index].role is Role.USER:
            if total > budget and cut is not None:
                break
            cut = index
    else:
        if total <= budget:
            return request  # all of it fits
    if cut is None or cut <= head:
        return request
    note = Message(request[cut].session_id, Role.USER, [TextPart(f"({_cut_note(cut - head)}.)")])
    return [*request[:head], note, *request[cut:]]


def _head(history: Sequence[Message], request: list[Message]) -> int:
    """How many messages at the start of ``request`` are never cut: the first instruction
    and the summary after it."""
    last = _last_summary(history)
    if last is not None:
        ids = [m.id for m in request]
        return ids.index(history[last].id) + 1
    return 1 if request and request[0].role is Role.USER else 0


def _cut_note(count: int) -> str:
    return f"{count} earlier messages of this conversation are left out to fit"


def _last_summary(history: Sequence[Message]) -> int | None:
    for index in range(len(history) - 1, -1, -1):
        if history[index].role is Role.SUMMARY:
            return index
    return None


def _summary_of(summary: Message) -> SummaryOfPart | None:
    return next((p for p in summary.parts if isinstance(p, SummaryOfPart)), None)


def _first_kept_index(history: Sequence[Message]) -> int:
    """Index of the first message the newest summary keeps (0 without a summary)."""
    last = _last_summary(history)
    if last is None:
        return 0
    of = _summary_of(history[last])
    ids = [m.id for m in history]
    return ids.index(of.first_kept) if of is not None and of.first_kept in ids else last + 1


def _summary_time(history: Sequence[Message]) -> float:
    last = _last_summary(history)
    return history[last].created_at if last is not None else 0.0


def _newest_turn_start(history: Sequence[Message]) -> int:
    """Index of the prompt that opened the newest turn (0 for an empty history). A prompt
    folded into a running turn follows that turn's tool results, so it opens no turn."""
    start = 0
    previous: Role | None = None
    for index, message in enumerate(history):
        if message.role is Role.USER and previous is not Role.TOOL:
            start = index
        previous = message.role
    return start


def _keep_from(history: Sequence[Message], budget: int) -> int | None:
    """Where the newest turns kept beside a summary start: the earliest message at which a
    request may begin (a user message, or an assistant one: never a tool result) with the
    messages from it on within ``budget`` tokens; at least the newest such start."""
    chosen = None
    total = 0
    for index in range(len(history) - 1, 0, -1):
        message = history[index]
        if message.role is Role.SUMMARY:
            continue
        total += estimate_message(message)
        if message.role in (Role.USER, Role.ASSISTANT):
            if total > budget and chosen is not None:
                break
            chosen = index
    return chosen
