"""What one provider request may carry; the transcript keeps everything whole.

A prompt can name a 5 MB string, an attachment can be a whole file, a tool can answer with
a whole notebook, a long session collects dozens of figures. The store keeps all of it;
each request sends a bounded view: every text, attachment or tool result longer than
``MAX_PART_CHARS`` goes as its head and tail with the count of characters left out, and
only the newest ``MAX_IMAGES`` images go as images (Anthropic refuses large images in a
request with more than 20), older ones as a one-line description.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from .message import ImagePart, Message, Part, TextPart, ToolResultPart
from .output import truncate

#: One text, attachment or tool result in a request, in characters (about 12k tokens).
MAX_PART_CHARS = 50_000
#: Images in one request, newest first; Anthropic allows 20 at full size.
MAX_IMAGES = 20


def capped(
    messages: Sequence[Message], *, part_chars: int = MAX_PART_CHARS, images: int = MAX_IMAGES
) -> list[Message]:
    """``messages`` as one request sends them: long texts cut, old images described.

    Messages and parts that need no change are the same objects; the others are copies,
    so the transcript's own messages are never altered.
    """
    keep = {id(image) for image in _newest_images(messages, images)}
    out = []
    for message in messages:
        parts = [_capped_part(part, part_chars, keep, images) for part in message.parts]
        changed = any(new is not old for new, old in zip(parts, message.parts, strict=True))
        out.append(replace(message, parts=parts) if changed else message)
    return out


def _newest_images(messages: Sequence[Message], limit: int) -> list[ImagePart]:
    every = [image for message in messages for image in message.images]
    return every[len(every) - limit :] if limit > 0 else []


def _capped_part(part: Part, limit: int, keep: set[int], images: int) -> Part:
    if isinstance(part, TextPart) and len(part.text) > limit:
        return TextPart(truncate(part.text, limit, what="text"))
    if isinstance(part, ImagePart) and id(part) not in keep:
        return TextPart("\n" + _left_out(part, images))  # on a line of its own
    if isinstance(part, ToolResultPart):
        content = truncate(part.content, limit)
        kept = [image for image in part.images if id(image) in keep]
        notes = [_left_out(image, images) for image in part.images if id(image) not in keep]
        if notes:
            content = "\n".join([content, *notes])
        if content != part.content or notes:
            return replace(part, content=content, images=kept)
    return part


def _left_out(image: ImagePart, images: int) -> str:
    return f"{image.describe()} (left out: only the newest {images} images are sent)"
