"""Questions the agent asks the user (the ``question`` tool), their answers, and the protocol
of whoever shows them: the tool is above the views, which are above this."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from .output import redact


class QuestionKind(StrEnum):
    YES_NO = "yes_no"
    SINGLE_CHOICE = "single_choice"  # one of several
    MULTI_CHOICE = "multi_choice"  # several of several
    FREE_TEXT = "free_text"


@dataclass(frozen=True)
class Choice:
    id: str
    label: str
    description: str = ""


@dataclass(frozen=True)
class Question:
    kind: QuestionKind
    text: str
    description: str = ""
    choices: tuple[Choice, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """What a page's form is drawn from."""
        return {
            "kind": str(self.kind),
            "text": self.text,
            "description": self.description,
            "choices": [
                {"id": c.id, "label": c.label, "description": c.description} for c in self.choices
            ],
        }


@dataclass(frozen=True)
class Answer:
    """One question's answer; all empty: skipped."""

    yes: bool | None = None  # yes_no
    selected: tuple[str, ...] = ()  # choice ids (single_choice: at most one)
    text: str = ""  # free text, or the "other" text beside the choices

    def as_json(self) -> dict[str, Any]:
        return {"yes": self.yes, "selected": list(self.selected), "text": self.text}


@dataclass(frozen=True)
class QuestionRequest:
    session_id: str
    tool_call_id: str
    questions: tuple[Question, ...] = field(default=())


class QuestionAsker(Protocol):
    """Shows a request's questions and waits for the answers, one per question.

    Returns ``None`` at once when nobody can answer (a headless run, no view). A cancel of
    the run cancels ``ask``; the form is withdrawn then and takes no answer after.
    """

    async def ask(self, request: QuestionRequest) -> list[Answer] | None: ...


def answers_from_page(questions: Sequence[Question], raw: Any) -> list[Answer] | None:
    """The answers a page sent (one object per question), or ``None`` if they do not fit the
    questions (a stale or forged message): the form stays open. A known secret typed into an
    answer is redacted, as in a prompt: the answers go to the model and the transcript."""
    if not isinstance(raw, list) or len(raw) != len(questions):
        return None
    answers = []
    for question, item in zip(questions, raw, strict=True):
        if not isinstance(item, dict):
            return None
        yes, selected, text = item.get("yes"), item.get("selected") or [], item.get("text") or ""
        ids = {c.id for c in question.choices}
        if not isinstance(text, str) or not isinstance(selected, list):
            return None
        if yes is not None and (
            question.kind is not QuestionKind.YES_NO or not isinstance(yes, bool)
        ):
            return None
        if any(s not in ids for s in selected) or len(set(selected)) != len(selected):
            return None
        if question.kind is QuestionKind.SINGLE_CHOICE and len(selected) > 1:
            return None
        answers.append(Answer(yes, tuple(selected), redact(text.strip())))
    return answers


def describe_answer(question: Question, answer: Answer) -> str:
    """The answer as the model reads it (and a finished form shows it)."""
    labels = {c.id: c.label for c in question.choices}
    parts = []
    if answer.yes is not None:
        parts.append(f"User answered: {'yes' if answer.yes else 'no'}")
    if answer.selected:
        chosen = ", ".join(f"{labels.get(i, i)} (id {i})" for i in answer.selected)
        parts.append(f"User selected: {chosen}")
    if answer.text:
        parts.append(f"User wrote: {answer.text}")
    return "\n".join(parts) or "User skipped this question"
