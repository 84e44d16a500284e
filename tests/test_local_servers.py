"""Local servers found on request: fake Ollama, LM Studio, llama.cpp and vLLM servers on free
ports of 127.0.0.1 (tests/support/local_servers.py, in the shapes those servers document),
a closed port and one that never answers; ``%crush model --local`` lists what answered and
nothing is probed unless asked; ``-m ollama:NAME`` reaches Ollama with nothing configured."""

from __future__ import annotations

from typing import Any

from support.bounded import within
from support.local_servers import (
    FakeServer,
    closed_port,
    ollama_routes,
    openai_models,
    serving,
    silent_port,
)
from test_magics import messages, run

from jupyter_crush.commands.local_models import local_models_report
from jupyter_crush.providers import ProviderSettings, resolve_model
from jupyter_crush.providers.local import LocalModel, LocalServer, discover
from jupyter_crush.providers.replay import RECORDINGS_DIR, SHORT_NAMES, load_recording

OLLAMA_MODELS = {
    "llama3.1:8b": ["completion", "tools"],
    "gemma2:2b": ["completion"],
    "nomic-embed-text:latest": ["embedding"],
}


def settings(**base_urls: str) -> ProviderSettings:
    return ProviderSettings(base_urls=base_urls, crush_config=False)


def models_of(servers: list[LocalServer]) -> dict[str, Any]:
    return {s.provider: s.models for s in servers}


async def test_discovery_finds_ollama_and_vllm_and_skips_a_closed_and_a_silent_port():
    ollama = FakeServer(ollama_routes(OLLAMA_MODELS))
    vllm = FakeServer({"/v1/models": openai_models("Qwen/Qwen2.5-7B-Instruct")})
    with serving(ollama), serving(vllm), silent_port() as silent:
        found = await within(
            discover(
                settings(
                    ollama=f"{ollama.url}/v1",
                    lmstudio=f"http://127.0.0.1:{closed_port()}/v1",
                    llamacpp=f"http://127.0.0.1:{silent}/v1",
                    vllm=f"{vllm.url}/v1",
                ),
                timeout=0.3,
            )
        )
    assert models_of(found) == {
        # the embedding model cannot answer a prompt: not listed
        "ollama": (LocalModel("llama3.1:8b", True), LocalModel("gemma2:2b", False)),
        "lmstudio": None,
        "llamacpp": None,
        "vllm": (LocalModel("Qwen/Qwen2.5-7B-Instruct", None),),  # vLLM does not say
    }
    assert [name for _, name, _ in ollama.requests] == [
        "/api/tags",
        "/api/show",
        "/api/show",
        "/api/show",
    ]


async def test_lm_studio_and_llama_cpp_say_which_models_call_tools():
    lmstudio = FakeServer(
        {
            "/v1/models": openai_models("qwen2.5-7b-instruct", "phi-2"),
            "/api/v0/models": {
                "data": [
                    {"id": "qwen2.5-7b-instruct", "type": "llm", "capabilities": ["tool_use"]},
                    {"id": "phi-2", "type": "llm", "capabilities": []},
                ]
            },
        }
    )
    llamacpp = FakeServer(
        {
            "/v1/models": openai_models("gpt-oss-20b"),
            "/props": {"chat_template_caps": {"supports_tool_calls": False}},
        }
    )
    closed = f"http://127.0.0.1:{closed_port()}/v1"
    with serving(lmstudio), serving(llamacpp):
        found = await within(
            discover(
                settings(
                    ollama=closed,
                    lmstudio=f"{lmstudio.url}/v1",
                    llamacpp=f"{llamacpp.url}/v1",
                    vllm=closed,
                )
            )
        )
    assert models_of(found)["lmstudio"] == (
        LocalModel("qwen2.5-7b-instruct", True),
        LocalModel("phi-2", False),
    )
    assert models_of(found)["llamacpp"] == (LocalModel("gpt-oss-20b", False),)


def test_the_report_names_models_as_they_are_used_and_marks_those_without_tools():
    servers = [
        LocalServer(
            "ollama",
            "Ollama",
            "http://127.0.0.1:11434/v1",
            (LocalModel("llama3.1:8b", True), LocalModel("gemma2:2b", False)),
        ),
        LocalServer("lmstudio", "LM Studio", "http://127.0.0.1:1234/v1"),
        LocalServer("vllm", "vLLM", "http://127.0.0.1:8000/v1", (LocalModel("qwen", None),)),
    ]
    assert local_models_report(servers).splitlines() == [
        "Ollama at 127.0.0.1:11434:",
        "  ollama:llama3.1:8b",
        "  ollama:gemma2:2b    cannot call tools",
        "vLLM at 127.0.0.1:8000:",
        "  vllm:qwen  tool calls not reported",
        "Not answering: LM Studio (127.0.0.1:1234)",
        "Use one: %crush model ollama:llama3.1:8b",
    ]
    nothing = local_models_report([LocalServer("ollama", "Ollama", "http://127.0.0.1:11434/v1")])
    assert nothing.splitlines()[-1].startswith("No local server answered; start one")


def test_ollama_host_moves_the_built_in_provider(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:11500")  # a bind-all address: this machine
    model = resolve_model("ollama:llama3.1", settings=ProviderSettings(crush_config=False))
    assert model.config.base_url == "http://127.0.0.1:11500/v1"
    monkeypatch.setenv("OLLAMA_HOST", "http://gpu-box:11434")
    model = resolve_model("ollama:llama3.1", settings=ProviderSettings(crush_config=False))
    assert model.config.base_url == "http://gpu-box:11434/v1"


def test_nothing_is_probed_unless_asked_and_ollama_needs_no_configuration(ip, capsys, monkeypatch):
    simple = load_recording(RECORDINGS_DIR / f"{SHORT_NAMES['openai-simple']}.yaml")
    ollama = FakeServer(ollama_routes(OLLAMA_MODELS), chat_stream=simple.interactions[0].body)
    with serving(ollama):
        monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{ollama.port}")  # Ollama's own variable
        closed = f"http://127.0.0.1:{closed_port()}/v1"
        others = {"lmstudio": closed, "llamacpp": closed, "vllm": closed}
        run(ip, f"%config CrushConfig.base_urls = {others!r}")
        run(ip, "%config CrushConfig.titles = False")  # only the prompt's request is sent
        run(ip, "%crush model")
        assert ollama.requests == []  # loading the extension and %crush model probe nothing
        capsys.readouterr()

        run(ip, "%crush model --local")
        listing = capsys.readouterr().out.splitlines()
        assert listing[:3] == [
            f"Ollama at 127.0.0.1:{ollama.port}:",
            "  ollama:llama3.1:8b",
            "  ollama:gemma2:2b    cannot call tools",
        ]
        assert listing[-2:] == [
            "Not answering: LM Studio (127.0.0.1:{0}), llama.cpp server (127.0.0.1:{0}), "
            "vLLM (127.0.0.1:{0})".format(closed.split(":")[2].split("/")[0]),
            "Use one: %crush model ollama:llama3.1:8b",
        ]

        probes = len(ollama.requests)
        run(ip, "%%crush -m ollama:llama3.1:8b\nSay hi in Portuguese")
        from jupyter_crush.magics import current

        answer = messages(current())[-1]
        assert answer.text.startswith("Olá")
        assert (answer.provider, answer.model) == ("ollama", "llama3.1:8b")
        method, path, body = ollama.requests[probes]
        assert (method, path, body["model"]) == ("POST", "/v1/chat/completions", "llama3.1:8b")
        assert answer.cost == 0.0  # a local server bills nothing
