"""jupyter-crush: a Crush-style agent in Jupyter notebooks."""

from .agent.calls import AcceptedRun, SessionAgentCall
from .agent.session import SessionAgent
from .core.message import FinishReason, Message, Role, Session, Usage
from .history import export_session, history, sessions
from .store.transcript import TranscriptStore

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


def __getattr__(name: str):
    """``crush.last_verify``: the report of the running kernel's latest ``%crush verify``
    (None before one finished, or outside a kernel with the extension)."""
    if name == "last_verify":
        from IPython import get_ipython

        crush = getattr(get_ipython(), "_jupyter_crush", None)
        return crush.last_verify if crush is not None else None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the prebuilt JupyterLab extension lives (``jupyter labextension list``)."""
    return [{"src": "labextension", "dest": "jupyter-crush"}]
