"""Faults met in a real kernel: a store on a disk that fills up, a damaged journal, a prompt
holding undecodable text. The cell shows one clear line, never a traceback; the session is
usable again once the cause is gone; what was accepted is kept."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from support.kernel_harness import SETUP, Kernel, scripted
from test_store_faults import fill

from jupyter_crush import TranscriptStore

pytestmark = pytest.mark.slow

FAST = scripted(20, None)


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """The kernel's data directory on a 1 MiB tmpfs, so the test can fill it."""
    mount = tmp_path_factory.mktemp("disk")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def data_home(tmp_path_factory) -> Path:
    """The kernels' user data directory, where a store closing on a full disk saves what it
    could not write (never the real one's)."""
    return tmp_path_factory.mktemp("data-home")


@pytest.fixture(scope="module")
def kernel(disk, data_home):
    k = Kernel(disk, env={"XDG_DATA_HOME": str(data_home)})
    k.run(SETUP)
    yield k
    k.shutdown()


def wait_view(kernel: Kernel, timeout: float = 20.0) -> None:
    kernel.run(
        f"import asyncio; await asyncio.wait_for(crush.last_view.wait(), {timeout})",
        timeout=timeout + 5,
    )


def no_traceback(kernel: Kernel) -> None:
    """Nothing the kernel sent so far holds a raw traceback or asyncio's callback report."""
    for msg in kernel.iopub:
        text = str(msg["content"])
        assert "Exception in callback" not in text and "Traceback" not in text, text[:2000]


def test_a_full_disk_mid_turn_is_said_in_the_status_line_and_written_once_freed(kernel, disk):
    kernel.run(FAST)
    kernel.run("%%crush --new -s fulldisk\nfirst")
    wait_view(kernel)
    filler = fill(disk)
    try:
        kernel.run(scripted(3000, None))  # a reply far larger than the free space
        result = kernel.execute("%%crush -s fulldisk\nwhy is the disk full?")
        assert result.reply["content"]["status"] == "ok"
        wait_view(kernel)
        status = kernel.value("crush.last_view.status_text()")
        assert "not yet written to" in status and "No space left on device" in status
        assert kernel.value("crush.agent.is_session_busy(crush.current_session_id)") is False
    finally:
        filler.unlink()
    # Space is back: the next prompt runs and everything kept reaches the disk.
    kernel.run("%%crush -s fulldisk\nand now?")
    wait_view(kernel)
    assert "not yet written" not in kernel.value("crush.last_view.status_text()")
    assert kernel.value("crush.store.pending_writes()") == []
    kernel.run("%crush cancel")  # idle: nothing to stop, no error
    texts = kernel.value("[m.text for m in crush.store.list_messages(crush.current_session_id)]")
    assert "why is the disk full?" in texts and "and now?" in texts
    no_traceback(kernel)


#: The kernel's pending timers of its transcript store (at most one, whatever the refusals).
STORE_TIMERS = (
    "sum(1 for h in __import__('asyncio').get_running_loop()._scheduled "
    "if not h.cancelled() and getattr(h._callback, '__self__', None) is crush.store)"
)


def test_a_disk_full_for_30_s_leaves_the_kernel_answering_and_the_turn_is_written_after(
    kernel, disk
):
    """Before, the store's retry timers doubled on every refusal until the loop did nothing
    else: within seconds no cell ran, the one that would free space included."""
    kernel.run(FAST)
    kernel.run("%%crush --new -s stayfull\nfirst")
    wait_view(kernel)
    sid = kernel.value("crush.current_session_id")
    filler = fill(disk)
    try:
        kernel.run(scripted(3000, None))  # a reply far larger than the free space
        kernel.run("%%crush -s stayfull\nwhile the disk stays full")
        wait_view(kernel)
        assert "No space left on device" in kernel.value("crush.last_view.status_text()")
        full_until = time.monotonic() + 30
        answers = 0
        while time.monotonic() < full_until:
            assert kernel.value("1+1") == 2
            assert kernel.value(STORE_TIMERS) <= 1
            answers += 1
            time.sleep(0.5)
        assert answers > 1
        assert kernel.value("[str(p) for p in crush.store.pending_writes()]")
    finally:
        filler.unlink()
    # Space is back: the store's own retry writes the turn, with no further write asked.
    kernel.run(
        "import asyncio\nwhile crush.store.pending_writes(): await asyncio.sleep(0.1)",
        timeout=10,
    )
    assert kernel.value(STORE_TIMERS) == 0
    with TranscriptStore(disk) as on_disk:
        texts = [m.text for m in on_disk.list_messages(sid)]
    assert texts[-2:] == ["while the disk stays full", "word " * 3000]
    no_traceback(kernel)


def test_a_kernel_shut_down_on_a_full_disk_leaves_its_turn_to_the_next_kernel(disk, data_home):
    """The store's last records go to a fallback journal in the user's data directory when
    the kernel shuts down; the next kernel's store folds them in and says so in one line."""
    home = disk / "shutdown"
    home.mkdir()
    env = {"CRUSH_DATA_DIR": str(home / "store"), "XDG_DATA_HOME": str(data_home)}
    saved_before = set(data_home.rglob("*.jsonl"))
    first = Kernel(home, env=env)
    filler = None
    try:
        first.run(SETUP + FAST)
        first.run("%%crush --new -s kept\nhello")
        wait_view(first)
        sid = first.value("crush.current_session_id")
        filler = fill(disk)
        first.run(scripted(3000, None))
        first.run("%%crush -s kept\nwritten after the kernel stopped")
        wait_view(first)
        assert first.value("[str(p) for p in crush.store.pending_writes()]")
    finally:
        first.shutdown()
        if filler is not None:
            filler.unlink()
    [saved] = set(data_home.rglob("*.jsonl")) - saved_before
    second = Kernel(home, env=env)
    try:
        second.run(SETUP)
        opened = second.execute("crush.store")
        stderr = "".join(m["content"]["text"] for m in opened.outputs if m["msg_type"] == "stream")
        assert stderr.count("\n") == 1, stderr
        assert "UnwrittenRecordsWarning" in stderr and str(saved) in stderr
        assert "folded back into it" in stderr
        texts = second.value(f"[m.text for m in crush.store.list_messages({sid!r})]")
        assert texts[-2:] == ["written after the kernel stopped", "word " * 3000]
        assert not saved.exists()
        no_traceback(second)
    finally:
        second.shutdown()


def test_a_damaged_journal_is_one_line_in_the_cell_and_the_session_recovers(kernel, disk):
    kernel.run(FAST)
    kernel.run("%%crush --new -s damaged\nhello")
    wait_view(kernel)
    sid = kernel.value("crush.current_session_id")
    journal = Path(kernel.value(f"str(crush.store.journal_path({sid!r}))"))
    intact = journal.stat().st_size
    with open(journal, "ab") as f:
        f.write(b"#garbage#\n")
    for cell in ("%%crush -s damaged\nare you there?", "%crush history"):
        result = kernel.execute(cell)
        reply = result.reply["content"]
        assert reply["status"] == "error" and reply["ename"] == "UsageError"
        assert reply["traceback"] == []
        stderr = "".join(m["content"]["text"] for m in result.outputs if m["msg_type"] == "stream")
        assert stderr.count("\n") == 1, stderr
        assert str(journal) in stderr and f"byte {intact}" in stderr
        assert f"head -c {intact}" in stderr
    assert kernel.value(f"crush.agent.is_session_busy({sid!r})") is False
    # Recovered as the message says: the session takes prompts again.
    journal.write_bytes(journal.read_bytes()[:intact])
    kernel.run("%%crush -s damaged\nback?")
    wait_view(kernel)
    texts = kernel.value(f"[m.text for m in crush.store.list_messages({sid!r})]")
    assert texts[0] == "hello" and "back?" in texts
    no_traceback(kernel)


def test_a_prompt_with_undecodable_text_is_kept(kernel):
    kernel.run(FAST)
    kernel.run("name = b'caf\\xe9 \\xff.csv'.decode('utf-8', 'surrogateescape')")
    kernel.run("%%crush --new\nwhat is in {name}?")
    wait_view(kernel)
    assert kernel.value("crush.last_view.phase") == "done"
    stored = kernel.value(
        "[m.text.encode('utf-8', 'surrogateescape').hex() for m in "
        "crush.store.list_messages(crush.current_session_id)][0]"
    )
    assert bytes.fromhex(stored) == b"what is in caf\xe9 \xff.csv?"
    no_traceback(kernel)


def test_a_store_that_cannot_open_on_a_full_disk_is_one_line_then_opens_once_freed(disk):
    (disk / "fresh").mkdir()
    filler = fill(disk)
    fresh = Kernel(disk / "fresh", env={"CRUSH_DATA_DIR": str(disk / "fresh" / "store")})
    try:
        fresh.run(SETUP + FAST)
        result = fresh.execute("%%crush\nhello")
        reply = result.reply["content"]
        assert reply["status"] == "error" and reply["ename"] == "UsageError"
        stderr = "".join(m["content"]["text"] for m in result.outputs if m["msg_type"] == "stream")
        assert stderr.count("\n") == 1 and "No space left on device" in stderr, stderr
        filler.unlink()
        fresh.run("%%crush\nhello again")
        wait_view(fresh)
        assert fresh.value("crush.last_view.phase") == "done"
        no_traceback(fresh)
    finally:
        filler.unlink(missing_ok=True)
        fresh.shutdown()
