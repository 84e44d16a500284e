"""The ``bash`` tool: one shell command in the workspace, bounded in time and output.

The command runs as ``bash -c`` in its own session (process group), so a
timeout or a Stop kills everything it started — pipelines, ``&`` jobs,
grandchildren — not just the shell. When the shell exits, processes it left
running in the background are killed too: a kernel must not accumulate
orphans behind the user's back.

The subprocess gets the kernel's environment minus credential-like variables
(``*_API_KEY``, ``*TOKEN*``, ...), and stdin is closed, so commands that want a
prompt fail fast instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.model import ToolSpec
from ..core.output import MAX_OUTPUT_CHARS, CappedBuffer, redact, scrubbed_environ
from ..core.tools import Tool, ToolContext, ToolResult

DEFAULT_TIMEOUT = 120.0
MAX_TIMEOUT = 600.0
#: After SIGTERM, how long the group gets before SIGKILL.
KILL_GRACE = 2.0
#: After the shell exits, how long to keep reading output its leftovers still write.
DRAIN_SECONDS = 0.5
_CHUNK = 65536

DESCRIPTION = """\
Run a shell command with bash in the workspace directory (the notebook's folder) and \
return its combined stdout and stderr and exit code. Use it for git, package managers, \
build and test commands, and file operations that the file tools do not cover; prefer \
view/grep/glob/ls for reading files, and the python tool for working with the user's data.

The command times out after `timeout` seconds (default {timeout:g}, max {max_timeout:g}) \
and is killed with everything it started. Background jobs (`&`) are killed when the command \
returns. stdin is closed: never run interactive programs. Output is truncated when long; \
pipe through head/tail/grep to keep it short. Credential environment variables are not \
passed to the command."""


def _bash() -> str:
    return shutil.which("bash") or "/bin/sh"


@dataclass
class BashTool:
    cwd: Path
    timeout: float = DEFAULT_TIMEOUT
    max_timeout: float = MAX_TIMEOUT
    limit: int = MAX_OUTPUT_CHARS
    kill_grace: float = KILL_GRACE

    def tool(self) -> Tool:
        spec = ToolSpec(
            name="bash",
            description=DESCRIPTION.format(timeout=self.timeout, max_timeout=self.max_timeout),
            parameters={
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The command line to run."},
                    "timeout": {
                        "type": "number",
                        "description": f"Seconds before the command is killed "
                        f"(default {self.timeout:g}, max {self.max_timeout:g}).",
                    },
                },
                "required": ["command"],
                "additionalProperties": False,
            },
        )
        return Tool(spec=spec, run=self.run, changes_state=True, summarize=summarize)

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        command = args.get("command")
        if not isinstance(command, str) or not command.strip():
            return ToolResult("bash: 'command' must be a non-empty command line", True)
        timeout = args.get("timeout", self.timeout)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            return ToolResult("bash: 'timeout' must be a positive number of seconds", True)
        timeout = min(float(timeout), self.max_timeout)

        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                _bash(),
                "-c",
                command,
                cwd=self.cwd,
                env=scrubbed_environ(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches everything
            )
        )
        buffer = CappedBuffer(self.limit)
        reader: asyncio.Future[None] | None = None
        try:
            # Shielded: a Stop during the spawn must still find the process to kill its
            # group (asyncio's own cleanup would kill only the shell, orphaning its jobs).
            proc = await asyncio.shield(spawn)
            reader = asyncio.ensure_future(_pump(proc.stdout, buffer))
            timed_out = not await _wait_for_shell(proc, reader, timeout)
        except asyncio.CancelledError:
            await asyncio.shield(self._stop(spawn, reader))
            raise
        except OSError as exc:  # the spawn itself failed: no process to clean up
            return ToolResult(f"bash: could not start the command in {self.cwd}: {exc}", True)
        await self._kill(proc, reader)

        output = redact(buffer.getvalue()).rstrip("\n")
        metadata: dict[str, Any] = {"exit_code": proc.returncode, "timed_out": timed_out}
        if timed_out:
            note = f"Killed: time limit of {timeout:g}s reached."
            return ToolResult(f"{output}\n{note}" if output else note, True, metadata)
        status = f"Exit code {proc.returncode}."
        text = f"{output}\n{status}" if output else f"(no output)\n{status}"
        return ToolResult(text, proc.returncode != 0, metadata)

    async def _stop(
        self,
        spawn: asyncio.Future[asyncio.subprocess.Process],
        reader: asyncio.Future[None] | None,
    ) -> None:
        try:
            proc = await spawn
        except OSError:
            return  # it never started
        await self._kill(proc, reader)

    async def _kill(
        self, proc: asyncio.subprocess.Process, reader: asyncio.Future[None] | None
    ) -> None:
        """Stop the whole process group (TERM, then KILL) and reap the shell."""
        pgid = proc.pid  # start_new_session made the shell its group leader
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGTERM)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.kill_grace
            while _group_alive(pgid) and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if _group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
                # SIGKILL cannot be refused, but dying takes a moment: return only once
                # the group is really gone (bounded, in case of an unkillable D state).
                deadline = loop.time() + self.kill_grace
                while _group_alive(pgid) and loop.time() < deadline:
                    await asyncio.sleep(0.01)
        await proc.wait()
        if reader is None:
            return
        # Everything holding the pipe is gone, so the reader sees EOF promptly.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), 1.0)
        if not reader.done():
            reader.cancel()


async def _wait_for_shell(
    proc: asyncio.subprocess.Process, reader: asyncio.Future[None], timeout: float
) -> bool:
    """Wait until the shell exits (True) or ``timeout`` passes (False).

    ``proc.wait()`` alone is not enough: on Python 3.11 it also waits for the
    pipe to close, which a background job (``sleep 60 &``) holds open.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while proc.returncode is None:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        # EOF on the pipe usually means the shell is gone; otherwise poll its status.
        await asyncio.wait({reader}, timeout=min(remaining, 0.05))
        if reader.done():
            try:
                await asyncio.wait_for(proc.wait(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                return False  # it closed its output but kept running
            return True
    # Leftover background jobs may hold the pipe open; give them a moment to flush,
    # then the caller kills them with the rest of the group.
    await asyncio.wait({reader}, timeout=DRAIN_SECONDS)
    return True


async def _pump(stream: asyncio.StreamReader | None, buffer: CappedBuffer) -> None:
    if stream is None:
        return
    while chunk := await stream.read(_CHUNK):
        buffer.write(chunk.decode("utf-8", errors="replace"))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # Orphans are reparented to PID 1, which in a container may never reap them: a
    # zombie still answers killpg(pgid, 0), so look at the process states instead.
    for entry in proc.iterdir():
        if entry.name.isdigit():
            group, state = process_group_state(int(entry.name))
            if group == pgid and state not in ("Z", "X"):
                return True
    return False


def process_group_state(pid: int) -> tuple[int, str]:
    """(process group, state letter) of ``pid`` from /proc; (-1, "") if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1, ""
    # The command name (field 2) is parenthesized and may contain spaces.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[2]), fields[0]


def summarize(args: dict[str, Any]) -> str:
    """The permission prompt shows the exact command."""
    return str(args.get("command", ""))
