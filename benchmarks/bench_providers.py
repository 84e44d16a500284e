"""What the provider layer costs per streamed event, on real recorded bytes.

    .venv/bin/python benchmarks/bench_providers.py [--quick]

For each recording: the official SDK parsing the recorded server-sent events
plus our translation into stream events, served (a) by the in-process replay
transport and (b) by a local HTTP server on 127.0.0.1 (real sockets, chunked
encoding). Prints microseconds per event and per request. Also the cold import
time of the provider package (both SDKs), which the agent pays on first use.
Numbers only: nothing here asserts a threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.replay_server import ReplayServer, recording_steps  # noqa: E402

from jupyter_crush.core.message import Message, Role, TextPart  # noqa: E402
from jupyter_crush.providers import ProviderConfig, ProviderSettings, resolve_model  # noqa: E402
from jupyter_crush.providers.replay import RECORDINGS_DIR, SHORT_NAMES, load_recording  # noqa: E402


async def drain(model) -> int:
    count = 0
    async for _ in model.stream([Message("s", Role.USER, [TextPart("hi")])]):
        count += 1
    return count


async def bench_replay(short: str, rounds: int) -> tuple[int, float]:
    model = resolve_model(f"replay:{short}", settings=ProviderSettings(replay_delay=0))
    events = await drain(model)  # warm: client created, modules imported
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        await drain(model)
        times.append(time.perf_counter() - start)
    return events, statistics.median(times)


async def bench_http(short: str, rounds: int) -> tuple[int, float]:
    path = RECORDINGS_DIR / f"{SHORT_NAMES[short]}.yaml"
    recording = load_recording(path)
    step = recording_steps(path)[0]
    async with ReplayServer([step] * (rounds + 1)) as server:
        provider = "anthropic" if recording.protocol == "anthropic" else "local"
        settings = ProviderSettings(
            api_keys={"anthropic": "bench"},
            base_urls={"anthropic": server.url},
            providers={
                "local": ProviderConfig(
                    "local", "openai-compat", f"{server.url}/v1", requires_key=False
                )
            },
            crush_config=False,
            max_retries=0,
            openai_apis={"local": "responses"} if recording.protocol == "responses" else {},
        )
        model = resolve_model(f"{provider}:{recording.model}", settings=settings)
        events = await drain(model)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            await drain(model)
            times.append(time.perf_counter() - start)
    return events, statistics.median(times)


IMPORT_PROBE = """
import time
t0 = time.perf_counter()
from jupyter_crush.providers import ProviderSettings, resolve_model
t1 = time.perf_counter()
resolve_model("ollama:m", settings=ProviderSettings(crush_config=False))
t2 = time.perf_counter()
resolve_model("anthropic:m", settings=ProviderSettings(api_keys={"anthropic": "k"}))
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def import_times(tries: int) -> list[float]:
    """Cold import of the package, then of each SDK on its first model (best of ``tries``)."""
    runs = [
        [
            float(x)
            for x in subprocess.run(
                [sys.executable, "-c", IMPORT_PROBE],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            ).stdout.split()
        ]
        for _ in range(tries)
    ]
    return [min(column) for column in zip(*runs, strict=True)]


async def main(quick: bool) -> None:
    rounds = 5 if quick else 30  # streams timed per recording and transport
    package, openai_sdk, anthropic_sdk = (t * 1000 for t in import_times(1 if quick else 3))
    print(
        f"cold import: jupyter_crush.providers {package:.0f} ms; first OpenAI model "
        f"+{openai_sdk:.0f} ms; first Anthropic model +{anthropic_sdk:.0f} ms"
    )
    print(
        f"{'recording':<28}{'events':>7}{'replay µs/ev':>14}{'http µs/ev':>12}{'http ms/req':>13}"
    )
    for short in SHORT_NAMES:
        events, replay = await bench_replay(short, rounds)
        _, http = await bench_http(short, rounds)
        print(
            f"{short:<28}{events:>7}{replay / events * 1e6:>14.0f}"
            f"{http / events * 1e6:>12.0f}{http * 1000:>13.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 streams per recording, not 30")
    asyncio.run(main(parser.parse_args().quick))
