"""jupyter-crush: a Crush-style agent in Jupyter notebooks."""

from .agent import AcceptedRun, SessionAgent, SessionAgentCall
from .message import FinishReason, Message, Role, Session, Usage
from .store import TranscriptStore

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
]


def load_ipython_extension(ipython) -> None:
    """``%load_ext jupyter_crush``: register ``%%crush`` / ``%crush`` on this shell."""
    # Imported here so a broken magics module can never break `import jupyter_crush`.
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext jupyter_crush``: stop this kernel's runs and remove the hooks."""
    from .magics import unload

    unload(ipython)
