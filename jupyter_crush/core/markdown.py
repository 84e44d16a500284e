"""Text made safe to show inside Markdown: the run view's static answer and session exports."""

from __future__ import annotations

import json
import re

# Characters that would start Markdown or HTML markup; CommonMark lets any ASCII
# punctuation be backslash-escaped, so each is shown as itself.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~&])")


def markdown_literal(text: str) -> str:
    """``text`` shown literally, on one line (a session title or model name may hold anything)."""
    return _MD_SPECIAL.sub(r"\\\1", text.replace("\n", " "))


def pretty_json(text: str) -> str:
    """JSON text indented for reading; anything else (arguments cut off mid-stream) as is."""
    try:
        return json.dumps(json.loads(text), ensure_ascii=False, indent=2)
    except (ValueError, TypeError):
        return text


def fenced(text: str, language: str) -> str:
    """``text`` as a fenced code block whose fence no backtick run inside can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip(chr(10))}\n{fence}"
