"""A local MCP server written with the official SDK, for the MCP tests and benchmark.

    python tests/support/mcp_server.py stdio
    python tests/support/mcp_server.py http PORT      # streamable HTTP on 127.0.0.1:PORT/mcp

Its tools cover what a client must survive: ordinary results (text, structured, image,
a tool error), a slow call that notes its own cancellation, and a server that exits,
hangs, or writes garbage mid-call. ``$MCP_TEST_MARKS`` names a directory where the
server notes what happened (started, cancelled) for the tests to read.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from mcp.server import MCPServer
from mcp.server.mcpserver import Image
from mcp.types import ToolAnnotations

READ_ONLY = ToolAnnotations(read_only_hint=True)
# A 1x1 red PNG.
PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415478"
    "9c63f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)

server = MCPServer("crush-test")


def mark(event: str) -> None:
    marks = os.environ.get("MCP_TEST_MARKS")
    if marks:
        Path(marks, f"{event}-{os.getpid()}").write_text(str(time.time()))


@server.tool(annotations=READ_ONLY)
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def write_note(text: str) -> str:
    """Keep a note (changes state: asks permission)."""
    return f"noted: {text}"


@server.tool(annotations=READ_ONLY)
def pixel() -> Image:
    """A tiny PNG image."""
    return Image(data=PIXEL, format="png")


@server.tool(annotations=READ_ONLY)
def fail(reason: str) -> str:
    """Always fails with the reason."""
    raise ValueError(reason)


@server.tool(annotations=READ_ONLY)
async def slow(seconds: float) -> str:
    """Sleep, noting a cancellation if one arrives."""
    mark("slow")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        mark("cancelled")
        raise
    return f"slept {seconds}"


@server.tool(annotations=READ_ONLY)
def crash() -> str:
    """Exit the whole server in the middle of the call."""
    os._exit(3)


@server.tool(annotations=READ_ONLY)
def hang() -> str:
    """Block the whole server (a sync sleep on its event loop)."""
    time.sleep(3600)
    return "unreachable"


@server.tool(annotations=READ_ONLY)
def garbage() -> str:
    """Write a line that is not JSON-RPC onto the stdio transport, then hang."""
    from mcp.server import stdio

    # The SDK moves the wire off fd 1 (prints go to stderr); write where it serves from.
    os.write(stdio._claims[1].private_fd or 1, b"this is not MCP\n")
    time.sleep(3600)
    return "unreachable"


if __name__ == "__main__":
    mark("started")
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
