"""The ``question`` tool: the model asks the user one to four questions and waits.

Crush's ``question`` semantics: yes/no, one of several choices, several of several, or free
text; the run view shows them as a form inside the turn, and the answers are the tool's
result. A run nobody can answer (nbclient, papermill) is told to decide by itself; a Stop
while the form is open withdraws it (the call ends canceled, like any tool on a Stop).
Not state-changing: no permission prompt, but the turn waits for the answer.
"""

from __future__ import annotations

from typing import Any

from ..core.model import ToolSpec
from ..core.questions import (
    Choice,
    Question,
    QuestionAsker,
    QuestionKind,
    QuestionRequest,
    describe_answer,
)
from ..core.tools import Tool, ToolContext, ToolResult, list_argument

MAX_QUESTIONS = 4
MAX_CHOICES = 6
MAX_QUESTION_CHARS = 300
MAX_DESCRIPTION_CHARS = 600
MAX_LABEL_CHARS = 100

#: The result when nobody can answer.
NO_USER = "no user to ask: decide yourself and say what you assumed"

_KINDS = ", ".join(str(kind) for kind in QuestionKind)

DESCRIPTION = (
    "Ask the user 1 to 4 questions and wait for the answers, shown as a small form in the "
    "notebook. Use it when the request has several valid readings, before a choice the user "
    "should make, or to confirm something destructive; not for what you can find out with "
    "the other tools, and not to ask permission (tools that change things ask for it "
    "themselves). Each question has `type`: yes_no (a proposition to accept or reject, "
    "never A-or-B), single_choice (one of `choices`, also for two named alternatives), "
    "multi_choice (any of `choices`) or free_text; `question` (one short line) and "
    "optionally `description` (context, trade-offs). `choices` (2 to 6, for single_choice "
    "and multi_choice only) are {id, label} objects; the user can always type another "
    "answer beside them, so add no 'Other' choice. If nobody can answer (a notebook run "
    "unattended), the result says so: then decide yourself and say what you assumed."
)

_SCHEMA = {
    "type": "object",
    "properties": {
        "questions": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_QUESTIONS,
            "items": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": [str(kind) for kind in QuestionKind]},
                    "question": {"type": "string", "description": "The question, one line."},
                    "description": {"type": "string", "description": "Context shown below it."},
                    "choices": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "label": {"type": "string"},
                                "description": {"type": "string"},
                            },
                            "required": ["id", "label"],
                        },
                    },
                },
                "required": ["type", "question"],
            },
        }
    },
    "required": ["questions"],
}


def parse_questions(arguments: dict[str, Any]) -> tuple[Question, ...] | str:
    """The questions in ``arguments``, or a one-line error saying what to fix."""
    items = list_argument(arguments.get("questions"))
    if not isinstance(items, list) or not items:
        return "question: 'questions' must be a list of 1 to 4 question objects"
    if len(items) > MAX_QUESTIONS:
        return (
            f"question: {len(items)} questions; ask at most {MAX_QUESTIONS} at once "
            "(ask the rest after the answers)"
        )
    questions = []
    for n, item in enumerate(items, 1):
        question = _parse_question(item)
        if isinstance(question, str):
            return f"question: question {n}: {question}"
        questions.append(question)
    return tuple(questions)


def _parse_question(item: Any) -> Question | str:
    if not isinstance(item, dict):
        return "must be an object with 'type' and 'question'"
    text, description = item.get("question"), item.get("description") or ""
    if not isinstance(text, str) or not text.strip():
        return "needs a non-empty 'question' string"
    if len(text) > MAX_QUESTION_CHARS:
        return f"'question' is {len(text)} characters; keep it under {MAX_QUESTION_CHARS}"
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
        return f"'description' must be a string under {MAX_DESCRIPTION_CHARS} characters"
    try:
        kind = QuestionKind(item.get("type"))
    except ValueError:
        return f"type {item.get('type')!r} is not one of {_KINDS}"
    raw_choices = item.get("choices") or item.get("options") or []
    if kind in (QuestionKind.YES_NO, QuestionKind.FREE_TEXT):
        if raw_choices:
            return f"{kind} takes no 'choices'; use single_choice or multi_choice for choices"
        return Question(kind, text.strip(), description.strip())
    choices = _parse_choices(kind, raw_choices)
    if isinstance(choices, str):
        return choices
    return Question(kind, text.strip(), description.strip(), choices)


def _parse_choices(kind: QuestionKind, raw: Any) -> tuple[Choice, ...] | str:
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_CHOICES:
        return f"{kind} needs 'choices': a list of 2 to {MAX_CHOICES} {{id, label}} objects"
    choices: list[Choice] = []
    for m, entry in enumerate(raw, 1):
        if isinstance(entry, str):
            entry = {"id": entry, "label": entry}  # a bare label is its own id
        if not isinstance(entry, dict):
            return f"choice {m} must be an object with 'id' and 'label'"
        ident, label = entry.get("id"), entry.get("label")
        note = entry.get("description") or ""
        if not isinstance(label, str) or not label.strip():
            return f"choice {m} needs a non-empty 'label'"
        if ident is None:
            ident = label
        if not isinstance(ident, str | int) or not str(ident).strip():
            return f"choice {m} needs a non-empty 'id'"
        if not isinstance(note, str):
            return f"choice {m}'s 'description' must be a string"
        if max(len(label), len(note)) > MAX_LABEL_CHARS:
            return f"choice {m} is longer than {MAX_LABEL_CHARS} characters; shorten it"
        if any(c.id == str(ident).strip() for c in choices):
            return f"choice {m} repeats the id {str(ident).strip()!r}; ids must be unique"
        choices.append(Choice(str(ident).strip(), label.strip(), note.strip()))
    return tuple(choices)


class QuestionTool:
    """Asks through ``asker`` (the kernel's run views); without one nobody can answer."""

    def __init__(self, asker: QuestionAsker | None) -> None:
        self._asker = asker

    def tool(self) -> Tool:
        spec = ToolSpec(name="question", description=DESCRIPTION, parameters=_SCHEMA)
        return Tool(spec=spec, run=self.run)

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        questions = parse_questions(arguments)
        if isinstance(questions, str):
            return ToolResult(questions, is_error=True)
        answers = None
        if self._asker is not None:
            request = QuestionRequest(context.session_id, context.tool_call_id, questions)
            answers = await self._asker.ask(request)
        if answers is None:
            return ToolResult(NO_USER)
        return ToolResult(
            "\n\n".join(
                f"Q{n}: {question.text}\n{describe_answer(question, answer)}"
                for n, (question, answer) in enumerate(zip(questions, answers, strict=True), 1)
            ),
            metadata={"answers": [answer.as_json() for answer in answers]},
        )
