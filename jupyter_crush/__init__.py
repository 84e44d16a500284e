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
