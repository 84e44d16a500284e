"""What MCP servers cost: first-use start-up of a stdio server and per-call overhead.

    .venv/bin/python benchmarks/bench_mcp.py [--quick]

- first use: ``MCPServers.refresh`` in a process that has not imported the SDK yet (what
  a kernel's first prompt pays: SDK import off the loop, spawn, initialize, tools/list),
  with the lateness of a 10 ms ticker on the loop meanwhile (what cells and the Stop
  button feel), then warm restarts next to the raw SDK doing the same
  (``stdio_client`` + ``ClientSession.initialize`` + ``list_tools``);
- per call: an ``mcp_*`` tool's ``run`` (the agent's path: race against the connection,
  result conversion) next to the raw ``session.call_tool`` on its own connection to the
  same server program.

The server is tests/support/mcp_server.py, written with the SDK's MCPServer.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_crush.core.tools import ToolContext  # noqa: E402
from jupyter_crush.mcp.config import MCPServerConfig  # noqa: E402
from jupyter_crush.mcp.tools import MCPServers  # noqa: E402

SERVER = str(ROOT / "tests" / "support" / "mcp_server.py")
CONFIG = MCPServerConfig("bench", command=sys.executable, args=(SERVER,), timeout=60)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def ticker(lateness: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        lateness.append(time.perf_counter() - start - 0.01)


async def first_use(servers: MCPServers) -> dict:
    assert "mcp" not in sys.modules, "the SDK must not be imported before the first use"
    lateness: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.ensure_future(ticker(lateness, stop))
    tools: dict = {}
    start = time.perf_counter()
    await servers.refresh(tools)
    elapsed = time.perf_counter() - start
    stop.set()
    await tick
    assert "mcp_bench_add" in tools, servers.status()
    print(f"first use (cold: SDK import + spawn + initialize + tools/list): {ms(elapsed)}")
    print(
        f"  loop lateness meanwhile: median {ms(statistics.median(lateness))}, "
        f"max {ms(max(lateness))} ({len(lateness)} ticks of 10 ms)"
    )
    return tools


def raw_params() -> Any:  # the SDK is imported only after the cold measurement
    from mcp.client.stdio import StdioServerParameters

    return StdioServerParameters(command=sys.executable, args=[SERVER])


async def warm_starts(servers: MCPServers, restarts: int) -> None:
    """Ours and the raw SDK alternately, so the machine's load falls on both alike."""
    from mcp import ClientSession
    from mcp.client.stdio import stdio_client

    server = servers.servers["bench"]
    ours, raw = [], []
    for _ in range(restarts):
        server.stop()
        await asyncio.sleep(0.5)  # let the old process go
        start = time.perf_counter()
        await server.restart()
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        async with stdio_client(raw_params()) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            await s.list_tools()
            raw.append(time.perf_counter() - start)
    print(
        f"warm start, ours: median {ms(statistics.median(ours))}; raw SDK: median "
        f"{ms(statistics.median(raw))}  (n={restarts}; mostly the server's own import)"
    )


async def per_call(tools: dict, calls: int) -> None:
    """Ours and the raw SDK call alternately, each on its own connection and server."""
    from mcp import ClientSession
    from mcp.client.stdio import stdio_client

    tool = tools["mcp_bench_add"]
    context = ToolContext("bench", "call")
    await tool.run({"a": 1, "b": 2}, context)  # the SDK compiles the output schema once
    ours, raw = [], []
    async with stdio_client(raw_params()) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()
        await session.call_tool("add", {"a": 1, "b": 2})
        for i in range(calls):
            start = time.perf_counter()
            result = await tool.run({"a": i, "b": 1}, context)
            ours.append(time.perf_counter() - start)
            assert result.content == str(i + 1), result
            start = time.perf_counter()
            await session.call_tool("add", {"a": i, "b": 1})
            raw.append(time.perf_counter() - start)
    ours_median, raw_median = statistics.median(ours), statistics.median(raw)
    print(
        f"per call 'add': ours median {ms(ours_median)}, raw SDK call_tool median "
        f"{ms(raw_median)}; overhead {ms(ours_median - raw_median)}  (n={calls})"
    )
    print(
        f"  p90: ours {ms(statistics.quantiles(ours, n=10)[-1])}, "
        f"raw {ms(statistics.quantiles(raw, n=10)[-1])}"
    )


async def main(quick: bool) -> None:
    servers = MCPServers(lambda: {"bench": CONFIG})
    tools = await first_use(servers)
    await per_call(tools, 30 if quick else 300)
    await warm_starts(servers, 2 if quick else 5)
    servers.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 calls and 2 restarts")
    asyncio.run(main(parser.parse_args().quick))
