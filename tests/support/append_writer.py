"""A writer streaming replies as append records, to be killed at random moments:
``python append_writer.py STORE``.

Like crash_writer.py, but its replies grow only by appends between their whole records (no
usage until the finish), so their streamed writes are append records: text, reasoning and a
tool call's arguments, new parts among them. It reports each write once it returned (see
store_writer.py).
"""

import random

from store_writer import report, write_until_killed

from jupyter_crush.core.message import FinishReason, Message, ToolCallPart, Usage
from jupyter_crush.store.transcript import TranscriptStore


def stream(store: TranscriptStore, reply: Message) -> None:
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
            report("F", reply.session_id, reply.id, len(reply.text))
    reply.usage = Usage(output_tokens=len(reply.text))
    reply.add_finish(FinishReason.END_TURN)
    store.update_message(reply, force=True)
    report("F", reply.session_id, reply.id, len(reply.text))


write_until_killed(stream, most_turns=4)
