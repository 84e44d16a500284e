"""Reading one crush.json (its top-level object, or a one-line error saying what to fix), and
the errors of a provider configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ProviderConfigError(ValueError):
    """A model name or provider configuration cannot be used; the message says how to fix it."""


class MissingAPIKeyError(ProviderConfigError):
    pass


class CrushConfigError(ProviderConfigError):
    pass


def read_crush_json(path: Path) -> dict[str, Any]:
    """The top-level object of one crush.json, or a one-line error saying what to fix."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CrushConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse_crush_json(path, raw)


def parse_crush_json(path: Path, raw: bytes) -> dict[str, Any]:
    """The top-level object of ``raw``, the bytes of ``path``."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CrushConfigError(f"{path} is not UTF-8 text; fix the file or remove it") from None
    except json.JSONDecodeError as exc:
        raise CrushConfigError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "fix the file or remove it"
        ) from None
    if not isinstance(data, dict):
        raise CrushConfigError(f"{path}: the top level must be a JSON object")
    return data
