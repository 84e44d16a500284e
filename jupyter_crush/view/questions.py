"""Question forms in the run view: what one form holds, the forms of a view and who takes
their answers, and the asker the ``question`` tool awaits (the kernel's views behind it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..core.questions import (
    Answer,
    Question,
    QuestionRequest,
    answers_from_page,
    describe_answer,
)

#: Called with a form's answers, from any thread (a page's click arrives on a subshell).
Answering = Callable[[list[Answer]], None]
#: Ends a form (loop thread): with its answers, or ``None`` when withdrawn.
Closing = Callable[[list[Answer] | None], None]


@dataclass
class QuestionForm:
    id: str
    questions: tuple[Question, ...]
    state: str = "open"  # open | answered | withdrawn
    answers: list[Answer] | None = None

    def as_json(self) -> dict[str, Any]:
        """What the page draws the form from."""
        shown = None
        if self.answers is not None:
            shown = [
                {**a.as_json(), "shown": describe_answer(q, a)}
                for q, a in zip(self.questions, self.answers, strict=True)
            ]
        return {
            "id": self.id,
            "state": self.state,
            "questions": [q.as_json() for q in self.questions],
            "answers": shown,
        }


class QuestionForms:
    """One view's forms, in the order asked, and the answer callbacks of the open ones.

    Forms are opened and closed on the loop thread; :meth:`answer` runs on the click's
    thread and only reads one key of ``_answering`` (atomic): a late answer to a closed
    form finds nobody to take it.
    """

    def __init__(self) -> None:
        self.forms: dict[str, QuestionForm] = {}
        self._answering: dict[str, Answering] = {}

    @property
    def waiting(self) -> bool:
        """Whether a form waits for the user."""
        return any(form.state == "open" for form in self.forms.values())

    def open(self, request: QuestionRequest, answering: Answering) -> Closing:
        form_id = request.tool_call_id or str(id(request))
        self.forms[form_id] = QuestionForm(form_id, request.questions)
        self._answering[form_id] = answering

        def close(answers: list[Answer] | None) -> None:
            self._answering.pop(form_id, None)
            form = self.forms[form_id]
            form.state = "answered" if answers is not None else "withdrawn"
            form.answers = answers

        return close

    def answer(self, form_id: str, raw: Any) -> bool:
        """A page's answers to an open form (any thread); False if not taken."""
        answering = self._answering.get(form_id)
        form = self.forms.get(form_id)
        if answering is None or form is None:
            return False
        answers = answers_from_page(form.questions, raw)
        if answers is None:
            return False
        answering(answers)
        return True


class QuestionView(Protocol):
    """What :class:`ViewQuestionAsker` needs of a run view."""

    interactive: bool

    def ask_questions(self, request: QuestionRequest, answering: Answering) -> Closing: ...


class ViewQuestionAsker:
    """Asks in the view of the session's running prompt; nobody can answer a run without a
    view or one no front end can click in (nbclient, papermill: the permission prompt's
    rule)."""

    def __init__(self, views: Mapping[str, QuestionView]) -> None:
        self._views = views

    async def ask(self, request: QuestionRequest) -> list[Answer] | None:
        view = self._views.get(request.session_id)
        if view is None or not view.interactive:
            return None
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[list[Answer]] = loop.create_future()

        def settle(answers: list[Answer]) -> None:
            if not answered.done():
                answered.set_result(answers)

        def answering(answers: list[Answer]) -> None:
            # Clicks arrive on a subshell thread; the future belongs to the loop.
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, answers)

        close = view.ask_questions(request, answering)
        answers = None
        try:
            answers = await answered
            return answers
        finally:
            # On a cancel too (Stop while the form is open): withdrawn, no answer after.
            close(answers)
