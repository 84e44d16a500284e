"""A transcript-store writer to be killed at random moments: ``python crash_writer.py STORE``.

It streams turns as the agent does and reports each write once it returned (``M`` added,
``F`` a forced update and the text length it held), so the killer can check that every
acknowledged write survived. Used by the kill -9 tests and the scale benchmark.
"""

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jupyter_crush.store.transcript as store_module
from jupyter_crush.core.message import Message, Role, TextPart, Usage

store_module.COMPACT_MIN_BYTES = 2048  # compact often, so kills land inside compactions too
store = store_module.TranscriptStore(sys.argv[1], flush_interval=0.002)
print("ready", flush=True)
while True:
    session = store.create_session()
    print("S", session.id, flush=True)
    for _turn in range(random.randint(1, 6)):
        user = store.add_message(Message(session.id, Role.USER, [TextPart("q" * 50)]))
        print("M", session.id, user.id, flush=True)
        reply = store.add_message(Message(session.id, Role.ASSISTANT))
        print("M", session.id, reply.id, flush=True)
        for token in range(random.randint(1, 80)):
            reply.append_text("tok ")
            reply.usage = Usage(output_tokens=token + 1)
            store.update_message(reply, force=token % 17 == 0)
            if token % 17 == 0:
                print("F", session.id, reply.id, len(reply.text), flush=True)
        note = store.add_message(Message("shared", Role.USER, [TextPart("x" * 40)]))
        print("M shared", note.id, flush=True)
