"""Models the kernel's configuration picks beside a prompt's own: the title model, and the
default model's meter of how full a session's next request would be."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..agent.compaction import _summary_time, policy_from, request_view
from ..core.message import Message
from ..core.tokens import Meter, request_tokens
from ..providers.windows import model_window

if TYPE_CHECKING:
    from ..core.model import Model
    from .crush import Crush


def session_meter(crush: Crush) -> Callable[[Sequence[Message]], Meter] | None:
    """How full a session's next request would be with the kernel's default model, as a
    function of the session's messages; None when no model is set up or its window is unknown.

    ``%crush sessions`` and ``crush.sessions()`` both measure with it. A listing never makes
    the kernel's agent: before the first prompt of this kernel, a session without any
    provider count is estimated without the system prompt and tool specs.
    """
    try:
        model = crush.resolve_model(None)
    except Exception:  # no model configured yet: nothing to measure against
        return None
    limits = model_window(model, policy_from(crush.config).context_window)
    if limits is None:
        return None
    agent = crush._agent
    system = agent.system_prompt if agent is not None else None
    specs = [tool.spec for tool in agent.tools.values()] if agent is not None else []

    def measure(history: Sequence[Message]) -> Meter:
        request = request_view(history)
        return Meter(request_tokens(request, system, specs, since=_summary_time(history)), limits)

    return measure


def configured_title_model(crush: Crush) -> Model | None:
    """``title_model``, else crush.json's ``models.small``; None: the session's own model."""
    from ..providers.config import ProviderConfigError, load_crush_config

    name = crush.config.title_model.strip()
    if not name:
        try:
            config = crush.config
            found = load_crush_config(
                config.crush_config or None, trust_all=config.trust_project_config
            )
            small = "small" in found.models
        except ProviderConfigError:
            small = False  # the prompt's own model reports a broken crush.json
        if not small:
            return None
        name = "crush:small"
    return crush.resolve_model(name)
