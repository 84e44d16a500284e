"""A writer streaming replies as append records, to be killed at random moments:
``python append_writer.py STORE``.

Like crash_writer.py, but its replies grow only by appends between their whole records (no
usage until the finish), so their streamed writes are append records: text, reasoning and a
tool call's arguments, new parts among them. It reports each write once it returned (``M``
added, ``F`` flushed or forced and the text length then held).
"""

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jupyter_crush.store.transcript as store_module
from jupyter_crush.core.message import (
    FinishReason,
    Message,
    Role,
    TextPart,
    ToolCallPart,
    Usage,
)

store_module.COMPACT_MIN_BYTES = 2048  # compact often, so kills land inside compactions too
store = store_module.TranscriptStore(sys.argv[1], flush_interval=0.002)
print("ready", flush=True)
while True:
    session = store.create_session()
    print("S", session.id, flush=True)
    for _turn in range(random.randint(1, 4)):
        user = store.add_message(Message(session.id, Role.USER, [TextPart("q" * 50)]))
        print("M", session.id, user.id, flush=True)
        reply = store.add_message(Message(session.id, Role.ASSISTANT))
        print("M", session.id, reply.id, flush=True)
        for token in range(random.randint(1, 300)):
            if token == 5:
                reply.parts.append(ToolCallPart(f"call-{token}", "run_code"))
            if 5 <= token < 20:
                reply.parts[-1].input += "{x}"
            elif token % 40 < 10:
                reply.append_reasoning("hmm ")
            else:
                reply.append_text("tok ")
            store.update_message(reply)
            if token % 23 == 0:
                store.flush()
                print("F", session.id, reply.id, len(reply.text), flush=True)
        reply.usage = Usage(output_tokens=len(reply.text))
        reply.add_finish(FinishReason.END_TURN)
        store.update_message(reply, force=True)
        print("F", session.id, reply.id, len(reply.text), flush=True)
        note = store.add_message(Message("shared", Role.USER, [TextPart("x" * 40)]))
        print("M shared", note.id, flush=True)
