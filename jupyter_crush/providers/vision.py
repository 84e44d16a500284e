"""Which models take images, and what an image becomes in a request.

Neither the SDKs nor the price table (genai-prices) say whether a model takes image input,
so the rule is the model's name, checked against the families the providers document as
vision-capable; any other model (an unknown OpenAI-compatible server, an older model) is
sent a one-line description of each image instead, which never fails a request.
``ProviderSettings.image_input`` overrides the rule either way.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from ..core.message import ImagePart

_VISION_MODELS = re.compile(
    r"""
    claude-(?:3|(?:sonnet|opus|haiku)-[4-9])      # every Claude from 3 on
  | gpt-4o | gpt-4\.1 | gpt-4\.5 | gpt-4-turbo | gpt-4-vision | gpt-5 | chatgpt-4o
  | (?<![a-z0-9])o1(?!-mini)(?![0-9]) | (?<![a-z0-9])o3(?!-mini)(?![0-9]) | (?<![a-z0-9])o4-mini
  | gemini | llava | llama-?4 | llama-3\.2-(?:11|90)b-vision | pixtral | gemma-?3(?!:1b)
  | -vl\b | vision | minicpm-v | moondream
    """,
    re.VERBOSE | re.IGNORECASE,
)


def accepts_images(model: str, override: bool | None = None) -> bool:
    """Whether ``model`` is sent images (``override``: ``ProviderSettings.image_input``)."""
    if override is not None:
        return override
    return _VISION_MODELS.search(model) is not None


@dataclass(frozen=True)
class WireImage:
    media_type: str
    base64: str


def wire_image(image: ImagePart, accepted: bool) -> WireImage | str:
    """The image as a request sends it, or the text that stands in for it."""
    if not accepted:
        return f"{image.describe()} (not shown: this model does not take images)"
    try:
        data = image.read()
    except (OSError, ValueError):
        return f"{image.describe()} (not shown: its file is missing from the transcript store)"
    return WireImage(image.media_type, base64.b64encode(data).decode("ascii"))
