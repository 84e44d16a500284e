"""The transcript's message model: roles, parts and finish reasons.

A message is an ordered list of parts. Every part and message round-trips
through plain JSON (``to_dict``/``from_dict``) so the store never pickles.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"
    SYSTEM = "system"
    #: A summary of a session's older turns, sent in their place (jupyter_crush.compaction).
    SUMMARY = "summary"


class FinishReason(StrEnum):
    END_TURN = "end_turn"
    MAX_TOKENS = "max_tokens"
    TOOL_USE = "tool_use"
    CANCELED = "canceled"
    ERROR = "error"
    CONTENT_FILTER = "content_filter"
    UNKNOWN = "unknown"


#: Finish reasons that end a turn (as opposed to ``tool_use``, which ends a step).
TERMINAL_REASONS = frozenset(
    {
        FinishReason.END_TURN,
        FinishReason.MAX_TOKENS,
        FinishReason.CANCELED,
        FinishReason.ERROR,
        FinishReason.CONTENT_FILTER,
        FinishReason.UNKNOWN,
    }
)

CANCELED_MESSAGE = "User canceled request"


def now() -> float:
    return time.time()


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class TextPart:
    text: str = ""
    type: str = field(default="text", init=False)


@dataclass
class ReasoningPart:
    text: str = ""
    signature: str = ""
    redacted: str = ""  # Anthropic's encrypted redacted_thinking data; sent back verbatim
    started_at: float | None = None
    finished_at: float | None = None
    type: str = field(default="reasoning", init=False)
    #: An OpenAI Responses reasoning item: its id and encrypted content, sent back on the
    #: turn's next step (the ``text`` is its summary). Written only when set.
    item_id: str = ""
    encrypted: str = ""


#: Fields left out of a part's JSON when empty, so the parts of providers without them are
#: stored as before.
_OPTIONAL_FIELDS = {"reasoning": ("item_id", "encrypted"), "tool_call": ("signature",)}


@dataclass
class ToolCallPart:
    id: str
    name: str
    input: str = ""  # the arguments as the model streamed them: a JSON text
    finished: bool = False
    #: Gemini's thought signature of the call (its OpenAI-compatible endpoint's
    #: extra_content), sent back with it; written only when set.
    signature: str = ""
    type: str = field(default="tool_call", init=False)


#: An image file's name: the SHA-256 of its bytes and the extension of its type.
IMAGE_FILE = re.compile(r"[0-9a-f]{64}\.(?:png|jpg)")


@dataclass
class ImagePart:
    """An image the model is shown: a figure, a displayed PNG, a picture named in a prompt.

    The bytes are kept once, in a file of the transcript store's ``images/`` directory named
    by their content hash (``file``); the message records only the reference, so a journal
    line stays small however often the message is rewritten. Until the store has written
    the file the part holds the bytes in memory; a part read back from a store knows the
    directory to read them from (:meth:`read`).
    """

    media_type: str  # image/png or image/jpeg
    file: str  # <sha256>.<png|jpg> in the store's images/ directory
    width: int = 0
    height: int = 0
    size: int = 0  # bytes
    label: str = ""  # what it shows: "Figure 1", "{fig}", "display()"
    type: str = field(default="image", init=False)

    def __post_init__(self) -> None:
        # Not dataclass fields, so never serialized: the bytes before the store has them,
        # and the directory a stored image is read from.
        self.data: bytes | None = None
        self.directory: Path | None = None

    def path_in(self, directory: Path) -> Path:
        """The image's file in ``directory``; refuses a name the store would not write."""
        if not IMAGE_FILE.fullmatch(self.file):
            raise ValueError(f"{self.file!r} is not an image file name of the transcript store")
        return directory / self.file

    def read(self) -> bytes:
        """The image's bytes; ``FileNotFoundError`` when its file has gone from the store."""
        if self.data is not None:
            return self.data
        if self.directory is None:
            raise FileNotFoundError(f"image {self.file} has no bytes and no store directory")
        return self.path_in(self.directory).read_bytes()

    def describe(self) -> str:
        """One line for text-only readers: ``[image Figure 1: 640x480 PNG, 21 KB]``."""
        kind = self.media_type.partition("/")[2].upper()
        name = f" {self.label}" if self.label else ""
        return f"[image{name}: {self.width}x{self.height} {kind}, {max(self.size // 1024, 1)} KB]"


@dataclass
class ToolResultPart:
    tool_call_id: str
    name: str
    content: str
    is_error: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    images: list[ImagePart] = field(default_factory=list)  # figures and displayed images
    type: str = field(default="tool_result", init=False)


@dataclass
class FinishPart:
    reason: FinishReason
    message: str = ""
    details: str = ""
    time: float = field(default_factory=now)
    type: str = field(default="finish", init=False)


@dataclass
class SummaryOfPart:
    """What a summary message stands for: the requests after it send the summary in place
    of every message before ``first_kept`` (the id of the first message sent as it is)."""

    first_kept: str
    covered: int  # messages the summary replaces in the requests
    trigger: str = "auto"  # "auto" near the context limit, "manual" from %crush compact
    type: str = field(default="summary_of", init=False)


Part = (
    TextPart
    | ReasoningPart
    | ImagePart
    | ToolCallPart
    | ToolResultPart
    | FinishPart
    | SummaryOfPart
)

_PART_TYPES: dict[str, type] = {
    "text": TextPart,
    "reasoning": ReasoningPart,
    "image": ImagePart,
    "tool_call": ToolCallPart,
    "tool_result": ToolResultPart,
    "finish": FinishPart,
    "summary_of": SummaryOfPart,
}


def part_to_dict(part: Part) -> dict[str, Any]:
    data = asdict(part)
    for name in _OPTIONAL_FIELDS.get(part.type, ()):
        if not data[name]:
            del data[name]
    return data


def part_from_dict(data: dict[str, Any]) -> Part:
    kind = data.get("type")
    cls = _PART_TYPES.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown message part type {kind!r}")
    fields = {k: v for k, v in data.items() if k != "type"}
    if cls is FinishPart:
        fields["reason"] = FinishReason(fields["reason"])
    if cls is ToolResultPart:
        fields["images"] = [part_from_dict(image) for image in fields.get("images", ())]
    return cls(**fields)


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
        )


def _extended(part: TextPart | ReasoningPart, name: str, delta: str) -> str:
    """The part's text field ``name`` with ``delta`` appended, in amortized O(len(delta)).

    ``part.text += delta`` copies the whole text on every token (the attribute and the
    expression both hold the string), which made a token's cost grow with the answer. With
    the attribute's reference dropped first, the interpreter extends the only reference in
    place; should anything else still hold the string, it copies, as before.
    """
    text = getattr(part, name)
    setattr(part, name, "")
    text += delta
    return text


@dataclass
class Message:
    session_id: str
    role: Role
    parts: list[Part] = field(default_factory=list)
    id: str = field(default_factory=new_id)
    model: str = ""
    provider: str = ""
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None
    #: Facts about the message beyond its parts, e.g. a prompt's replay fingerprint
    #: (:mod:`jupyter_crush.rerun`); plain JSON, written only when not empty.
    metadata: dict[str, Any] = field(default_factory=dict)

    # -- reading -----------------------------------------------------------

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def reasoning(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, ReasoningPart))

    @property
    def tool_calls(self) -> list[ToolCallPart]:
        return [p for p in self.parts if isinstance(p, ToolCallPart)]

    @property
    def tool_results(self) -> list[ToolResultPart]:
        return [p for p in self.parts if isinstance(p, ToolResultPart)]

    @property
    def images(self) -> list[ImagePart]:
        """Every image of the message: its own parts and those of its tool results."""
        found: list[ImagePart] = []
        for part in self.parts:
            if isinstance(part, ImagePart):
                found.append(part)
            elif isinstance(part, ToolResultPart):
                found.extend(part.images)
        return found

    @property
    def finish(self) -> FinishPart | None:
        for part in reversed(self.parts):
            if isinstance(part, FinishPart):
                return part
        return None

    @property
    def finish_reason(self) -> FinishReason | None:
        finish = self.finish
        return finish.reason if finish else None

    @property
    def is_finished(self) -> bool:
        return self.finish is not None

    # -- building ----------------------------------------------------------

    def append_text(self, delta: str) -> None:
        last = self.parts[-1] if self.parts else None
        if isinstance(last, TextPart):
            last.text = _extended(last, "text", delta)
        else:
            self.parts.append(TextPart(delta))
        self.touch()

    def append_reasoning(
        self,
        delta: str,
        signature: str = "",
        redacted: str = "",
        *,
        item_id: str = "",
        encrypted: str = "",
    ) -> None:
        last = self.parts[-1] if self.parts else None
        if not isinstance(last, ReasoningPart) or last.finished_at is not None:
            last = ReasoningPart(started_at=now())
            self.parts.append(last)
        last.text = _extended(last, "text", delta)
        last.signature += signature
        last.redacted += redacted
        last.item_id = item_id or last.item_id
        last.encrypted += encrypted
        self.touch()

    def finish_reasoning(self) -> None:
        for part in self.parts:
            if isinstance(part, ReasoningPart) and part.finished_at is None:
                part.finished_at = now()

    def tool_call(self, call_id: str) -> ToolCallPart | None:
        for part in self.parts:
            if isinstance(part, ToolCallPart) and part.id == call_id:
                return part
        return None

    def add_finish(self, reason: FinishReason, message: str = "", details: str = "") -> None:
        """Set the finish part; a message has at most one."""
        self.parts = [p for p in self.parts if not isinstance(p, FinishPart)]
        self.finish_reasoning()
        self.parts.append(FinishPart(FinishReason(reason), message, details))
        self.touch()

    def touch(self) -> None:
        self.updated_at = now()

    # -- JSON --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = {
            "id": self.id,
            "session_id": self.session_id,
            "role": str(self.role),
            "parts": [part_to_dict(p) for p in self.parts],
            "model": self.model,
            "provider": self.provider,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "usage": asdict(self.usage),
            "cost": self.cost,
        }
        if self.metadata:
            data["metadata"] = self.metadata
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        return cls(
            id=data["id"],
            session_id=data["session_id"],
            role=Role(data["role"]),
            parts=[part_from_dict(p) for p in data.get("parts", ())],
            model=data.get("model", ""),
            provider=data.get("provider", ""),
            created_at=data.get("created_at", 0.0),
            updated_at=data.get("updated_at", 0.0),
            usage=Usage(**data.get("usage", {})),
            cost=data.get("cost"),
            metadata=data.get("metadata") or {},
        )


@dataclass
class Session:
    id: str = field(default_factory=new_id)
    title: str = ""
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0
    message_count: int = 0
    #: A sub-agent's session: the session and tool call that ran it ("" for any other).
    parent_session_id: str = ""
    parent_tool_call_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.parent_session_id:  # a session of its own is recorded as before the link
            del data["parent_session_id"], data["parent_tool_call_id"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Session:
        fields = dict(data)
        fields["usage"] = Usage(**fields.get("usage", {}))
        return cls(**fields)
