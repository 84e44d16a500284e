"""jupyter-crush: a Crush-style agent in Jupyter notebooks.

The public API. The agent and the transcript store are imported on first use (``from
jupyter_crush import TranscriptStore`` works as ever), so ``%load_ext jupyter_crush`` does not
pay for them before a cell needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core.message import FinishReason, Message, Role, Session, Usage
from .history import export_session, history, sessions

if TYPE_CHECKING:
    from .agent.calls import AcceptedRun, SessionAgentCall
    from .agent.session import SessionAgent
    from .store.transcript import TranscriptStore

# The public names imported on first use, and their modules.
_ON_FIRST_USE = {
    "AcceptedRun": ".agent.calls",
    "SessionAgentCall": ".agent.calls",
    "SessionAgent": ".agent.session",
    "TranscriptStore": ".store.transcript",
}


def __getattr__(name: str) -> Any:
    """The public names imported on first use, and ``crush.last_verify``: the report of the
    running kernel's latest ``%crush verify`` (None before one finished, or outside a kernel
    with the extension)."""
    if name == "last_verify":
        from IPython import get_ipython

        crush = getattr(get_ipython(), "_jupyter_crush", None)
        return crush.last_verify if crush is not None else None
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # imported once: later lookups find it here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_ON_FIRST_USE})


__all__ = [
    "AcceptedRun",
    "FinishReason",
    "Message",
    "Role",
    "Session",
    "SessionAgent",
    "SessionAgentCall",
    "TranscriptStore",
    "Usage",
    "export_session",
    "history",
    "sessions",
]


def load_ipython_extension(ipython) -> None:
    """``%load_ext jupyter_crush``: register ``%%crush`` / ``%crush`` on this shell."""
    # Imported here so a broken magics module can never break `import jupyter_crush`.
    from .magics import load
    from .notebook import labcomm

    load(ipython)
    # The JupyterLab / Notebook 7 extension's comm: its stop command and status bar.
    labcomm.register(ipython, lambda: _made_agent(ipython))


def _made_agent(ipython):
    """The kernel's agent once a cell has made one; never makes one (comm threads call it)."""
    crush = getattr(ipython, "_jupyter_crush", None)
    return crush._agent if crush is not None else None


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext jupyter_crush``: stop this kernel's runs and remove the hooks."""
    from .magics import unload

    unload(ipython)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the prebuilt JupyterLab extension lives (``jupyter labextension list``)."""
    return [{"src": "labextension", "dest": "jupyter-crush"}]
