"""Long sessions through the official SDKs: what titles and summaries cost.

Every model request here goes through the official ``openai`` / ``anthropic`` SDK to
tests/support/replay_server.py on 127.0.0.1, which answers with recorded provider streams
(jupyter_crush/recordings); nothing is scripted below the SDK.

1. First-token latency of a session's first prompt with and without a title request
   beside it, for each SDK. The title model has its own server (a small model's endpoint);
   both servers (each in a process of its own) pace the recorded events ``EVENT_DELAY``
   apart, so the title stream runs while the answer streams. Both variants alternate in
   one run, after a warm-up.
2. The token estimate (about four characters a token) against the provider's own count,
   on every recorded request: the estimate alone, and the count the agent uses on a
   second step (the provider's count of the first step plus an estimate of what followed).
3. A summary of a ~150k-token session on claude-sonnet-4 (``%crush compact``): the
   local time it costs against a plain prompt on the same session, the tokens of the
   summary request and of the request after it, the usage the provider stream reported,
   and the price of the summary request with the prompt cache serving the previous
   request's prefix (the breakpoints the Anthropic provider sets) and without.

    .venv/bin/python benchmarks/bench_compaction.py [--quick]

``--quick``: 6 first-token runs per variant instead of 60, one summary instead of 5.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.replay_server import ReplayServer, Step, recording_steps  # noqa: E402

from jupyter_crush import SessionAgent, SessionAgentCall, TranscriptStore  # noqa: E402
from jupyter_crush.agent.compaction import SUMMARY_SHARE, request_view, summary_request  # noqa: E402
from jupyter_crush.agent.titles import prompt_title  # noqa: E402
from jupyter_crush.core.events import Delta  # noqa: E402
from jupyter_crush.core.message import (  # noqa: E402
    Message,
    ReasoningPart,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from jupyter_crush.core.model import StreamFinish, ToolSpec  # noqa: E402
from jupyter_crush.core.tokens import estimate_fixed, estimate_message, request_tokens  # noqa: E402
from jupyter_crush.kernel.prompt import notebook_prompt  # noqa: E402
from jupyter_crush.providers import ProviderConfig, ProviderSettings, resolve_model  # noqa: E402
from jupyter_crush.providers.prices import step_cost  # noqa: E402
from jupyter_crush.providers.replay import (  # noqa: E402
    RECORDINGS_DIR,
    SHORT_NAMES,
    load_recording,
)
from jupyter_crush.providers.windows import model_window  # noqa: E402
from jupyter_crush.tools import default_tools  # noqa: E402

WARMUP = 3
EVENT_DELAY = 0.002  # seconds between recorded events, for the answer and the title alike
PROMPT = "Why did the sales in March drop so much compared to February?"
KEY = "bench-key"
#: protocol -> (model, the recording that answers its prompts)
MODELS = {
    "openai": ("openai:gpt-4o", "openai-simple"),
    "anthropic": ("anthropic:claude-sonnet-4-20250514", "anthropic-simple"),
}
SESSION_TOKENS = 150_000


def settings_for(url: str) -> ProviderSettings:
    return ProviderSettings(
        api_keys={"openai": KEY, "anthropic": KEY},
        base_urls={"openai": f"{url}/v1", "anthropic": url},
        providers={
            "local": ProviderConfig("local", "openai-compat", f"{url}/v1", requires_key=False)
        },
        crush_config=False,
        max_retries=0,
    )


def recorded_step(short: str, **overrides: Any) -> Step:
    return recording_steps(RECORDINGS_DIR / f"{SHORT_NAMES[short]}.yaml", **overrides)[0]


def percentile(values: list[float], share: float) -> float:
    return sorted(values)[min(int(len(values) * share), len(values) - 1)]


# -- 1. first token with and without a title request -------------------------------------------


class FirstToken:
    def __init__(self) -> None:
        self.at: float | None = None

    def on_event(self, event: object) -> None:
        if isinstance(event, Delta) and self.at is None and event.message.text:
            self.at = time.perf_counter()


async def first_token(agent: SessionAgent, store: TranscriptStore) -> tuple[float, float, bool]:
    """Milliseconds to the first token of a new session's first prompt and to its answer's
    end; whether the title request, if any, was stored before that end."""
    session = store.create_session(title=prompt_title(PROMPT))
    watcher = FirstToken()
    start = time.perf_counter()
    await agent.run(SessionAgentCall(session.id, PROMPT, observer=watcher))
    ended = time.perf_counter()
    titled_meanwhile = store.get_session(session.id).title != prompt_title(PROMPT)
    while agent.titler.running(session.id):  # never overlap the next run
        await asyncio.sleep(0.001)
    assert watcher.at is not None
    return (watcher.at - start) * 1000, (ended - start) * 1000, titled_meanwhile


@contextlib.contextmanager
def provider_process(short: str, count: int) -> Iterator[str]:
    """A replay server answering ``count`` requests with recording ``short``, in a process
    of its own (as a provider is: its work never holds this process's loop or GIL); its URL."""
    command = [sys.executable, __file__, "--serve", short, str(count)]
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    try:
        yield server.stdout.readline().strip()
    finally:
        server.stdin.close()  # the server's signal to stop
        server.wait(10)


async def serve(short: str, count: int) -> None:
    """``--serve``: the server side of :func:`provider_process`, until stdin closes."""
    async with ReplayServer([recorded_step(short, event_delay=EVENT_DELAY)] * count) as server:
        print(server.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def bench_first_token(protocol: str, store: TranscriptStore, runs: int) -> None:
    name, short = MODELS[protocol]
    count = (WARMUP + runs) * 2
    with provider_process(short, count) as answers, provider_process(short, count) as small:
        agents = {}
        for titles in (False, True):
            agent = SessionAgent(resolve_model(name, settings=settings_for(answers)), store)
            agent.titles = titles
            agent.title_model = resolve_model(name, settings=settings_for(small))
            agents[titles] = agent
        firsts: dict[bool, list[float]] = {False: [], True: []}
        ends: dict[bool, list[float]] = {False: [], True: []}
        titled = 0
        for run in range(WARMUP + runs):
            for titles in (False, True) if run % 2 else (True, False):  # alternate the order
                first, end, meanwhile = await first_token(agents[titles], store)
                if run >= WARMUP:
                    firsts[titles].append(first)
                    ends[titles].append(end)
                    titled += meanwhile
    for titles in (False, True):
        print(
            f"  {protocol:<9} titles {'on ' if titles else 'off'}: first token median "
            f"{statistics.median(firsts[titles]):.2f} ms, p90 "
            f"{percentile(firsts[titles], 0.9):.2f} ms; answer ended median "
            f"{statistics.median(ends[titles]):.2f} ms"
        )
    print(f"  {protocol:<9} titles stored before the answer ended: {titled}/{runs}")


# -- 2. the estimate against the provider's count ----------------------------------------------


def recorded_request(body: dict[str, Any]) -> tuple[str, list[ToolSpec], list[Message]]:
    """A recorded request body (OpenAI chat or Anthropic messages) as the system prompt, tool
    specs and messages the agent would have held to send it."""
    system = body.get("system") or ""
    if isinstance(system, list):
        system = "".join(block.get("text", "") for block in system)
    tools = []
    for tool in body.get("tools") or []:
        spec = tool.get("function") or tool
        schema = spec.get("parameters") or spec.get("input_schema") or {}
        tools.append(ToolSpec(spec["name"], spec.get("description", ""), schema))
    messages = []
    for wire in body.get("messages") or []:
        role, content = wire["role"], wire.get("content")
        if role == "system":
            system += content if isinstance(content, str) else ""
            continue
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        parts: list[Any] = []
        for block in blocks or []:
            kind = block.get("type")
            if kind == "text":
                parts.append(TextPart(block["text"]))
            elif kind == "thinking":
                parts.append(ReasoningPart(block.get("thinking", "")))
            elif kind == "tool_use":
                parts.append(ToolCallPart(block["id"], block["name"], json.dumps(block["input"])))
            elif kind == "tool_result":
                text = block.get("content")
                text = text if isinstance(text, str) else json.dumps(text)
                parts.append(ToolResultPart(block["tool_use_id"], "", text))
        for call in wire.get("tool_calls") or []:
            function = call["function"]
            parts.append(ToolCallPart(call["id"], function["name"], function["arguments"]))
        if role == "tool":
            parts = [ToolResultPart(wire["tool_call_id"], "", content)]
        ours = {"user": Role.USER, "assistant": Role.ASSISTANT, "tool": Role.TOOL}[role]
        if parts and ours is Role.USER and isinstance(parts[0], ToolResultPart):
            ours = Role.TOOL
        messages.append(Message("s", ours, parts))
    return system, tools, messages


def model_for(recording: Any, url: str) -> Any:
    if recording.protocol == "anthropic":
        provider = "anthropic"
    elif recording.host == "api.openai.com":
        provider = "openai"
    else:
        provider = "local"
    return resolve_model(f"{provider}:{recording.model}", settings=settings_for(url))


async def provider_counts(path: Path) -> list[tuple[Usage, str]]:
    """Each recorded response's usage and text, as the SDK and our provider read them."""
    recording = load_recording(path)
    async with ReplayServer(recording_steps(path)) as server:
        model = model_for(recording, server.url)
        counted = []
        for _ in recording.interactions:
            text, usage = [], Usage()
            async for event in model.stream([Message("s", Role.USER, [TextPart("hi")])]):
                text.append(getattr(event, "text", "") or "")
                if isinstance(event, StreamFinish):
                    usage = event.usage
            counted.append((usage, "".join(text)))
    return counted


def prompt_tokens(usage: Usage) -> int:
    return usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens


async def bench_estimate() -> None:
    print(f"  {'recording':<20}{'step':>5}{'provider':>9}{'estimate':>9}{'error':>8}{'agent':>8}")
    errors, agent_errors = [], []
    for short, stem in SHORT_NAMES.items():
        path = RECORDINGS_DIR / f"{stem}.yaml"
        if load_recording(path).protocol == "responses":
            continue  # recorded_request reads chat and Anthropic bodies, not Responses input
        counts = await provider_counts(path)
        previous: Message | None = None
        for index, (interaction, (usage, answer)) in enumerate(
            zip(load_recording(path).interactions, counts, strict=True)
        ):
            system, tools, messages = recorded_request(json.loads(interaction.request_body))
            real = prompt_tokens(usage)
            estimate = request_tokens(messages, system, tools)
            error = (estimate - real) / real
            errors.append(error)
            agent = ""
            if previous is not None:  # the agent's count: last step's usage + estimate since
                replaced = [*messages]
                answered = [i for i, m in enumerate(replaced) if m.role is Role.ASSISTANT][-1]
                replaced[answered] = previous
                counted = (request_tokens(replaced, system, tools) - real) / real
                agent_errors.append(counted)
                agent = f"{counted:+.0%}"
            print(f"  {short:<20}{index + 1:>5}{real:>9}{estimate:>9}{error:>+8.0%}{agent:>8}")
            previous = Message("s", Role.ASSISTANT, [TextPart(answer)], usage=usage)
    print(
        f"  estimate alone: median error {statistics.median(errors):+.0%}, range "
        f"{min(errors):+.0%} .. {max(errors):+.0%} ({len(errors)} requests); agent's count "
        f"on second steps: median {statistics.median(agent_errors):+.0%}, range "
        f"{min(agent_errors):+.0%} .. {max(agent_errors):+.0%} ({len(agent_errors)})"
    )


# -- 3. a summary of a ~150k-token session -----------------------------------------------------


def table(rows: int, seed: int) -> str:
    """A DataFrame's printout: what a data session's tool results mostly are."""
    rng = random.Random(seed)
    lines = ["      date        region    product    units    revenue   margin"]
    for row in range(rows):
        lines.append(
            f"{row:>6}  2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}  "
            f"{rng.choice(['north', 'south', 'east', 'west']):<8}  "
            f"{rng.choice(['widget', 'gadget', 'gizmo', 'doohickey']):<9}  "
            f"{rng.randint(1, 900):>5}  {rng.uniform(10, 90000):>9.2f}  {rng.uniform(0, 1):.3f}"
        )
    return "\n".join(lines)


def seed_session(store: TranscriptStore, tokens: int, system: str, specs: list[Any]) -> str:
    """A session of data-analysis turns (prompt, a bash call with a table as its result,
    an answer) until its next request holds about ``tokens`` tokens (as estimated)."""
    session = store.create_session(title="sales analysis")
    history: list[Message] = []
    turn = 0
    while request_tokens(history, system, specs) < tokens:
        call = ToolCallPart(f"call-{turn}", "bash", json.dumps({"command": f"python q{turn}.py"}))
        answer = (
            f"Turn {turn}: the March revenue in the {['north', 'south'][turn % 2]} region fell "
            f"because fewer widgets shipped; the margin stayed near 0.4. " * 6
        )
        for message in (
            Message(session.id, Role.USER, [TextPart(f"Look at slice {turn} of df_sales.")]),
            Message(session.id, Role.ASSISTANT, [TextPart("Reading it."), call]),
            Message(session.id, Role.TOOL, [ToolResultPart(call.id, "bash", table(200, turn))]),
            Message(session.id, Role.ASSISTANT, [TextPart(answer)]),
        ):
            store.add_message(message)
            history.append(message)
        turn += 1
    return session.id


def without_cache_marks(value: Any) -> Any:
    """``value`` (a request's JSON) without its cache breakpoints, which move each request."""
    if isinstance(value, dict):
        return {k: without_cache_marks(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [without_cache_marks(v) for v in value]
    return value


async def timed_run(agent: SessionAgent, call: SessionAgentCall) -> float:
    start = time.perf_counter()
    result = await agent.run(call)
    assert result is not None and result.reason.value == "end_turn", result
    return (time.perf_counter() - start) * 1000


def price(name: str, usage: Usage) -> float:
    provider, model = name.split(":", 1)
    cost = step_cost(provider, model, usage)
    assert cost is not None, f"no price for {name}"
    return cost


async def bench_summary(store: TranscriptStore, workspace: Path, runs: int) -> None:
    name, short = MODELS["anthropic"]
    tools = default_tools(workspace=workspace)
    system = notebook_prompt([t.name for t in tools], cwd=str(workspace))
    specs = [t.spec for t in tools]
    step = recorded_step(short)
    plain_ms, summary_ms, after_ms = [], [], []
    async with ReplayServer([step] * (runs * 3)) as server:
        model = resolve_model(name, settings=settings_for(server.url))
        agent = SessionAgent(model, store, tools, system_prompt=system)
        agent.titles = False
        for _ in range(runs):
            session_id = seed_session(store, SESSION_TOKENS, system, specs)
            plain_ms.append(await timed_run(agent, SessionAgentCall(session_id, "And April?")))
            compact = SessionAgentCall(session_id, "(compact the session)", compact=True)
            summary_ms.append(await timed_run(agent, compact))
            after_ms.append(await timed_run(agent, SessionAgentCall(session_id, "And May?")))
        plain, ask, after = (seen.json() for seen in server.requests[-3:])
    history = store.list_messages(session_id)
    (summary,) = [m for m in history if m.role is Role.SUMMARY]
    asked = history.index(summary)
    before_plain = next(i for i, m in enumerate(history) if m.text == "And April?")
    plain_tokens = request_tokens(history[: before_plain + 1], system, specs)
    # The summary request as sent: the session, the plain prompt's answer, the question.
    question = summary_request(int(model_window(model).window * SUMMARY_SHARE))
    ask_messages = [*history[:asked], Message(session_id, Role.USER, [TextPart(question)])]
    ask_tokens = estimate_fixed(system, specs) + sum(estimate_message(m) for m in ask_messages)
    view = request_view(history[: history.index(summary) + 2])  # and the next prompt
    after_tokens = estimate_fixed(system, specs) + sum(estimate_message(m) for m in view)

    # The prompt cache serves the summary request the previous request's prefix only if
    # the summary request begins with it, byte for byte: system prompt, tools, messages.
    same = (plain["system"], plain["tools"]) == (ask["system"], ask["tools"])
    sent_before = without_cache_marks(plain["messages"])
    assert same and without_cache_marks(ask["messages"])[: len(sent_before)] == sent_before
    assert ask["messages"][-1]["content"][-1]["text"] == question

    # Cache reuse: the plain prompt's request was written to the cache at its last breakpoint;
    # the summary request reads that prefix and writes what follows it. Without reuse (a
    # request of another shape, e.g. another system prompt) all of it is new input.
    cached = Usage(
        0, 0, cache_read_tokens=plain_tokens, cache_write_tokens=ask_tokens - plain_tokens
    )
    fresh = Usage(ask_tokens, 0)
    print(
        f"  session: {plain_tokens:,} tokens in the plain prompt's request "
        f"({len(json.dumps(plain)) / 1e6:.2f} MB of JSON); summary request {ask_tokens:,} "
        f"tokens; the request after the summary {after_tokens:,} tokens "
        f"({len(json.dumps(after)) / 1e3:.0f} kB)"
    )
    print(
        f"  local time ({runs} sessions, median): plain prompt "
        f"{statistics.median(plain_ms):.0f} ms, summary {statistics.median(summary_ms):.0f} ms, "
        f"prompt after the summary {statistics.median(after_ms):.0f} ms"
    )
    print(
        f"  the summary's stored usage is the provider stream's: "
        f"{summary.usage.input_tokens} in, {summary.usage.output_tokens} out, "
        f"${summary.cost:.5f} (the recorded stream's own numbers)"
    )
    print(
        f"  summary request input on {name}: with cache reuse ${price(name, cached):.4f} "
        f"({plain_tokens:,} read, {cached.cache_write_tokens:,} written), without "
        f"${price(name, fresh):.4f}; its output ${price(name, Usage(0, 1000)):.3f} per 1,000 "
        f"tokens of summary"
    )


async def main(quick: bool) -> None:
    runs = 6 if quick else 60
    with tempfile.TemporaryDirectory() as tmp:
        store = TranscriptStore(Path(tmp) / "store")
        print(f"1. first token of a first prompt ({runs} runs each, alternating, official SDKs)")
        for protocol in MODELS:
            await bench_first_token(protocol, store, runs)
        print("2. estimated tokens against the recorded provider counts")
        await bench_estimate()
        print(f"3. a summary of a ~{SESSION_TOKENS // 1000}k-token session (%crush compact)")
        workspace = Path(tmp) / "work"
        workspace.mkdir()
        await bench_summary(store, workspace, 1 if quick else 5)
        store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, one summary")
    parser.add_argument("--serve", nargs=2, metavar=("RECORDING", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve[0], int(args.serve[1])))
    else:
        asyncio.run(main(args.quick))
