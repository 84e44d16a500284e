"""How long each fault takes to reach the user, and what is kept meanwhile.

    .venv/bin/python benchmarks/bench_faults.py [--quick]

- a server that accepts the connection and never answers: the whole attempt sequence under
  ``answer_timeout`` (measured at 2 s with 3 attempts of a 30 s read timeout each; the
  default is 60 s), against the read timeout x attempts it took before (printed, not waited);
- a 200 answer with an HTML page: the time to the error naming it;
- a full disk during a streamed reply: the time from the disk filling to ``pending_writes``
  saying so, and from the space coming back to the records being on disk (retry timer);
- a disk that stays full for 10 minutes, a reply streaming at 30 tokens a second through
  the first one: run on virtual time (tests/support/virtual_clock.py: the loop's clock jumps to its
  next timer instead of sleeping, so the 10 minutes take about a second; every retry does
  its real work against the real full disk), it prints the store's timers scheduled and
  pending at most, the write attempts, the CPU the 10 minutes of store work took as a share
  of 10 minutes, and the longest single retry (the most it can delay anything else on the
  loop); then 20 s of the same in real time, with a 10 ms sleep as a probe beside it: the
  process's CPU share and how late the probe woke (median and worst), against 20 s of the
  probe alone;
- a damaged journal: the time for a load to fail with the file, byte and recovery command;
- a journal cut short: the time to open it and warn.

``--quick`` runs the real-time part for 5 s instead of 20.

The server is a local one on 127.0.0.1 (tests/support/replay_server.py) spoken to by the real SDK;
the disk is a small tmpfs (needs root; skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
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

from goals import measured  # noqa: E402
from support.replay_server import ReplayServer, Step, recording_steps  # noqa: E402
from support.virtual_clock import CountingLoop, VirtualTimeLoop  # noqa: E402

from jupyter_crush import Role, TranscriptStore  # noqa: E402
from jupyter_crush.core.message import Message, TextPart  # noqa: E402
from jupyter_crush.core.model import ModelError  # noqa: E402
from jupyter_crush.providers import ProviderSettings, resolve_model  # noqa: E402
from jupyter_crush.providers.replay import RECORDINGS_DIR, SHORT_NAMES  # noqa: E402
from jupyter_crush.store.pending import Writer  # noqa: E402
from jupyter_crush.store.storage import Journal, StoreError  # noqa: E402

#: Minutes of a disk that stays full, on virtual time.
FULL_MINUTES = 10
#: Seconds of the same in real time, with the lag probe (--quick: 5).
FULL_REAL_SECONDS = 20


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


class _Attempts:
    """Counts journal appends (the real ones) and times the store's timer runs."""

    def __init__(self) -> None:
        self.appends = 0
        self.longest_run = 0.0
        self._append = Journal.append
        self._flush_due = Writer._flush_due

    def __enter__(self) -> _Attempts:
        def append(journal: Journal, payload: bytes, *, fsync: bool) -> None:
            self.appends += 1
            self._append(journal, payload, fsync=fsync)

        def flush_due(writer: Writer) -> None:
            start = time.perf_counter()
            self._flush_due(writer)
            self.longest_run = max(self.longest_run, time.perf_counter() - start)

        Journal.append = append  # type: ignore[method-assign]
        Writer._flush_due = flush_due  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Journal.append = self._append  # type: ignore[method-assign]
        Writer._flush_due = self._flush_due  # type: ignore[method-assign]


async def stays_full(disk: Path, loop: CountingLoop, seconds: float, probe: bool) -> dict:
    """A disk full for ``seconds`` of the loop's clock, a reply streaming through the first
    minute; what it cost, counted from the first refused write."""
    store = TranscriptStore(disk / f"store-{id(loop)}", clock=loop.time)
    sid = store.create_session().id
    reply = Message(sid, Role.ASSISTANT, [TextPart("")])
    store.add_message(reply)
    filler = fill(disk)
    lags: list[float] = []
    with _Attempts() as attempts:
        while not store.pending_writes(sid):  # the last free bytes of the disk go first
            reply.parts = [TextPart(reply.text + "token " * 50)]
            store.update_message(reply)
            await asyncio.sleep(1 / 30)
        timers, appends = loop.timers_scheduled(store._writer), attempts.appends
        most_pending = 0
        cpu, start = time.process_time(), loop.time()
        while loop.time() - start < seconds:
            if loop.time() - start < 60:
                reply.parts = [TextPart(reply.text + "token ")]
                store.update_message(reply)
            asked = loop.time()
            await asyncio.sleep(0.01 if probe else 1 / 30)
            lags.append(loop.time() - asked - (0.01 if probe else 1 / 30))
            most_pending = max(most_pending, loop.timers_pending(store._writer))
        cpu = time.process_time() - cpu
        result = {
            "timers": loop.timers_scheduled(store._writer) - timers,
            "most_pending": most_pending,
            "appends": attempts.appends - appends,
            "cpu": cpu,
            "longest_run": attempts.longest_run,
            "lags": sorted(lags),
        }
    filler.unlink()
    store.flush()
    assert store.pending_writes() == []
    store.close()
    return result


async def probe_alone(seconds: float) -> tuple[float, list[float]]:
    loop = asyncio.get_running_loop()
    lags = []
    cpu, start = time.process_time(), loop.time()
    while loop.time() - start < seconds:
        asked = loop.time()
        await asyncio.sleep(0.01)
        lags.append(loop.time() - asked - 0.01)
    return time.process_time() - cpu, sorted(lags)


def full_for_minutes(disk: Path, real_seconds: int) -> None:
    seconds = FULL_MINUTES * 60
    loop = VirtualTimeLoop()
    try:
        cost = loop.run_until_complete(stays_full(disk, loop, seconds, probe=False))
    finally:
        loop.close()
    print(
        f"disk full for {FULL_MINUTES} minutes (virtual time), a reply streaming at 30 "
        f"tokens/s through the first: {cost['timers']} store timers scheduled, at most "
        f"{cost['most_pending']} pending; {cost['appends']} write attempts; the store's work "
        f"took {cost['cpu']:.2f} s of CPU = {100 * cost['cpu'] / seconds:.3f}% of "
        f"{FULL_MINUTES} minutes; longest retry {cost['longest_run'] * 1000:.2f} ms"
    )
    measured("faults.full_disk_cpu_percent", 100 * cost["cpu"] / seconds)
    measured("faults.full_disk_pending_timers", cost["most_pending"])
    real = CountingLoop()
    try:
        cost = real.run_until_complete(stays_full(disk, real, real_seconds, probe=True))
        alone_cpu, alone_lags = real.run_until_complete(probe_alone(real_seconds))
    finally:
        real.close()
    lags = cost["lags"]
    print(
        f"disk full for {real_seconds} s (real time), a 10 ms sleep as a probe: process "
        f"CPU {100 * cost['cpu'] / real_seconds:.2f}%, probe late by median "
        f"{lags[len(lags) // 2] * 1000:.2f} ms, worst {lags[-1] * 1000:.2f} ms; "
        f"{cost['timers']} store timers, at most {cost['most_pending']} pending, "
        f"{cost['appends']} write attempts"
    )
    alone_share = 100 * alone_cpu / real_seconds
    print(
        f"  the probe alone for {real_seconds} s: CPU {alone_share:.2f}%, late by median "
        f"{alone_lags[len(alone_lags) // 2] * 1000:.2f} ms, worst {alone_lags[-1] * 1000:.2f} ms"
    )


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


def stays_full_main(real_seconds: int) -> None:
    disk = mount_tmpfs("512k")
    if disk is None:
        print("disk full for minutes: skipped (mounting a tmpfs needs root)")
        return
    try:
        full_for_minutes(disk, real_seconds)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
        disk.rmdir()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 s of the real-time full disk")
    quick = parser.parse_args().quick
    asyncio.run(main())
    stays_full_main(5 if quick else FULL_REAL_SECONDS)  # on loops of its own
