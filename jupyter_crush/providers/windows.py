"""A model's context window: from an override, the model's entry in crush.json (Crush's
``context_window`` and ``default_max_tokens``), or the model metadata of genai-prices (the
price table already used for costs), most specific first. The arithmetic on a window is in
:mod:`jupyter_crush.core.tokens`."""

from __future__ import annotations

from typing import Any

from ..core.tokens import DEFAULT_OUTPUT_TOKENS, ContextWindow


def model_window(model: Any, override: int | None = None) -> ContextWindow | None:
    """The limits of ``model`` (a :class:`~jupyter_crush.core.model.Model`), or None if unknown."""
    output = _configured_output(model)
    listed = _crush_json_entry(model)
    window = override or listed.get("context_window") or _price_table_window(model)
    if not window:
        return None
    output = output or listed.get("default_max_tokens") or DEFAULT_OUTPUT_TOKENS
    return ContextWindow(int(window), min(int(output), int(window) // 2))


def _configured_output(model: Any) -> int | None:
    settings = getattr(model, "settings", None)
    return getattr(settings, "max_tokens", None)


def _crush_json_entry(model: Any) -> dict[str, int]:
    """The model's entry under its provider's ``models`` in crush.json, if one is listed."""
    settings = getattr(model, "settings", None)
    if settings is None:
        return {}
    from .config import CrushConfigError, crush_config_files, read_crush_json

    try:
        paths = crush_config_files(getattr(settings, "crush_config", None))
    except CrushConfigError:
        return {}  # resolving the model already said what to fix
    found: dict[str, int] = {}
    for path in paths:
        # Read without trust: model lists and their windows apply from any file (trust.py).
        try:
            data = read_crush_json(path)
        except CrushConfigError:
            continue  # the provider layer already reports a broken crush.json
        provider = (data.get("providers") or {}).get(getattr(model, "provider", ""))
        entries = provider.get("models") if isinstance(provider, dict) else None
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, dict) and entry.get("id") == model.name:
                found.update({k: v for k, v in entry.items() if isinstance(v, int) and v > 0})
    return found


def _price_table_window(model: Any) -> int | None:
    if getattr(model, "settings", None) is None:
        return None  # not a provider's model (a scripted one): the table cannot know it
    from .prices import model_info

    info = model_info(getattr(model, "provider", ""), getattr(model, "name", ""))
    return getattr(info, "context_window", None)
