"""How long each fault takes to reach the user, and what is kept meanwhile.

    .venv/bin/python benchmarks/bench_faults.py

- a server that accepts the connection and never answers: the whole attempt sequence under
  ``answer_timeout`` (measured at 2 s with 3 attempts of a 30 s read timeout each; the
  default is 60 s), against the read timeout x attempts it took before (printed, not waited);
- a 200 answer with an HTML page: the time to the error naming it;
- a full disk during a streamed reply: the time from the disk filling to ``pending_writes``
  saying so, and from the space coming back to the records being on disk (retry timer);
- a damaged journal: the time for a load to fail with the file, byte and recovery command;
- a journal cut short: the time to open it and warn.

The server is a local one on 127.0.0.1 (tests/replay_server.py) spoken to by the real SDK;
the disk is a small tmpfs (needs root; skipped with a note otherwise).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from replay_server import ReplayServer, Step, recording_steps  # noqa: E402

from jupyter_crush import Role, TranscriptStore  # noqa: E402
from jupyter_crush.core.message import Message, TextPart  # noqa: E402
from jupyter_crush.core.model import ModelError  # noqa: E402
from jupyter_crush.providers import ProviderSettings, resolve_model  # noqa: E402
from jupyter_crush.providers.replay import RECORDINGS_DIR, SHORT_NAMES  # noqa: E402
from jupyter_crush.store.storage import StoreError  # noqa: E402


def openai_model(url: str, **settings: object):
    options = {"api_keys": {"openai": "sk-bench-0123456789"}, "base_urls": {"openai": url}}
    options.update(crush_config=False, **settings)
    return resolve_model("openai:gpt-4o", settings=ProviderSettings(**options))


async def time_to_error(step: Step, **settings: object) -> tuple[float, str]:
    async with ReplayServer([step] * 3) as server:
        model = openai_model(f"{server.url}/v1", **settings)
        start = time.perf_counter()
        try:
            async for _ in model.stream([Message("s", Role.USER, [TextPart("hi")])]):
                pass
        except ModelError as error:
            return time.perf_counter() - start, str(error)
    raise AssertionError("the stream did not fail")


def mount_tmpfs(size: str) -> Path | None:
    mount = Path(tempfile.mkdtemp(prefix="crush-bench-disk-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    return mount if done.returncode == 0 else None


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for size in (65536, 4096, 64, 1):
        while True:
            try:
                os.write(fd, b"\0" * size)
            except OSError:
                break
    os.close(fd)
    return filler


async def full_disk(disk: Path) -> tuple[float, float, int]:
    store = TranscriptStore(disk / "store", flush_interval=1 / 30)
    sid = store.create_session().id
    reply = Message(sid, Role.ASSISTANT, [TextPart("")])
    store.add_message(reply)
    filler = fill(disk)
    start = time.perf_counter()
    while not store.pending_writes(sid):
        reply.parts = [TextPart(reply.text + "token " * 50)]
        store.update_message(reply)
        await asyncio.sleep(0.001)
    surfaced = time.perf_counter() - start
    kept = len(reply.text)
    filler.unlink()
    start = time.perf_counter()
    while store.pending_writes():
        await asyncio.sleep(0.01)
    written = time.perf_counter() - start
    store.close()
    with TranscriptStore(disk / "store") as reopened:
        assert reopened.list_messages(sid)[0].text == reply.text
    return surfaced, written, kept


def damaged_and_cut(tmp: Path) -> tuple[float, float]:
    with TranscriptStore(tmp / "s") as store:
        sid = store.create_session().id
        for i in range(1000):
            store.add_message(Message(sid, Role.USER, [TextPart(f"message {i}")]))
        journal = store.journal_path(sid)
    intact = journal.read_bytes()
    journal.write_bytes(intact + b"#garbage#\n")
    with TranscriptStore(tmp / "s") as store:
        start = time.perf_counter()
        try:
            store.list_messages(sid)
        except StoreError:
            damaged = time.perf_counter() - start
    journal.write_bytes(intact[: len(intact) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        with TranscriptStore(tmp / "s") as store:
            store.list_messages(sid)
        cut = time.perf_counter() - start
    assert caught, "no warning for the cut journal"
    return damaged, cut


async def main() -> None:
    body = recording_steps(RECORDINGS_DIR / f"{SHORT_NAMES['openai-simple']}.yaml")[0].body
    took, message = await time_to_error(
        Step(body, fault="stall_head"), read_timeout=30, max_retries=2, answer_timeout=2
    )
    print(f"stalled server, answer_timeout=2 s: surfaced in {took:.2f} s — {message}")
    print("  before: read_timeout x attempts = 300 s x 3 = 900 s with the defaults")
    portal = Step("<html>login</html>", headers={"content-type": "text/html"})
    took, message = await time_to_error(portal)
    print(f"200 with an HTML page: surfaced in {took * 1000:.0f} ms — {message}")
    with tempfile.TemporaryDirectory() as tmp:
        damaged, cut = damaged_and_cut(Path(tmp))
    print(f"damaged journal (1000 messages): error in {damaged * 1000:.1f} ms")
    print(f"journal cut in half (1000 messages): opened and warned in {cut * 1000:.1f} ms")
    disk = mount_tmpfs("512k")
    if disk is None:
        print("full disk: skipped (mounting a tmpfs needs root)")
        return
    try:
        surfaced, written, kept = await full_disk(disk)
        print(
            f"full disk mid-stream: pending_writes said so {surfaced * 1000:.1f} ms after the "
            f"disk filled, {kept} characters kept in memory; written {written * 1000:.0f} ms "
            "after space came back (retry timer, no further write)"
        )
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
        disk.rmdir()


if __name__ == "__main__":
    asyncio.run(main())
