"""What the store's writers killed at random moments share (crash_writer.py, append_writer.py):
sessions of turns written as the agent does, each write reported once it returned (``S`` a
session, ``M`` a message added, ``F`` a forced or flushed write and the text length it held),
so the killer can check that every acknowledged write survived.

Imported by those scripts, run as ``python tests/support/WRITER.py STORE``: the package is
the one in this checkout (a mutated copy's own, when run there).
"""

import random
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jupyter_crush.store.transcript as store_module
from jupyter_crush.core.message import Message, Role, TextPart


def report(*fields: object) -> None:
    """One line of the writer's report, out before the next write starts."""
    print(*fields, flush=True)


def write_until_killed(
    stream_reply: Callable[[store_module.TranscriptStore, Message], None], most_turns: int
) -> None:
    """Sessions of 1 to ``most_turns`` turns, until the process is killed: a prompt, a reply
    ``stream_reply`` streams (reporting its forced or flushed writes), then a note in the
    session ``shared`` that every writer adds to."""
    store_module.COMPACT_MIN_BYTES = 2048  # compact often, so kills land inside compactions too
    store = store_module.TranscriptStore(sys.argv[1], flush_interval=0.002)
    report("ready")
    while True:
        session = store.create_session()
        report("S", session.id)
        for _turn in range(random.randint(1, most_turns)):
            user = store.add_message(Message(session.id, Role.USER, [TextPart("q" * 50)]))
            report("M", session.id, user.id)
            reply = store.add_message(Message(session.id, Role.ASSISTANT))
            report("M", session.id, reply.id)
            stream_reply(store, reply)
            note = store.add_message(Message("shared", Role.USER, [TextPart("x" * 40)]))
            report("M shared", note.id)
