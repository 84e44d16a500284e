"""A transcript-store writer to be killed at random moments: ``python crash_writer.py STORE``.

It streams turns as the agent does, forcing every 17th update, and reports each write once it
returned (see store_writer.py), so the killer can check that every acknowledged write
survived. Used by the kill -9 tests and the scale benchmark.
"""

import random

from store_writer import report, write_until_killed

from jupyter_crush.core.message import Message, Usage
from jupyter_crush.store.transcript import TranscriptStore


def stream(store: TranscriptStore, reply: Message) -> None:
    for token in range(random.randint(1, 80)):
        reply.append_text("tok ")
        reply.usage = Usage(output_tokens=token + 1)
        store.update_message(reply, force=token % 17 == 0)
        if token % 17 == 0:
            report("F", reply.session_id, reply.id, len(reply.text))


write_until_killed(stream, most_turns=6)
