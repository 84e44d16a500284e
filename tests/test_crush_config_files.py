"""Which crush.json files are read (providers.config.crush_config_files): the providers, the
models' windows, the MCP servers and the trust report read the same ones, an explicit
``crush_config`` with ``~`` expanded, and a missing one is the same one-line error in each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jupyter_crush.commands.trust import trust_command
from jupyter_crush.core.tokens import ContextWindow
from jupyter_crush.kernel.config import CrushConfig
from jupyter_crush.kernel.trust_report import project_files
from jupyter_crush.mcp.config import load_mcp_servers
from jupyter_crush.mcp.tools import MCPServers
from jupyter_crush.providers import ProviderConfigError, resolve_model
from jupyter_crush.providers.config import load_crush_config
from jupyter_crush.providers.trust import TRUST_ENV
from jupyter_crush.providers.windows import model_window

#: A folder's file: gpt-4o's window as this project wants it (the price table says 128k).
WINDOWS = {
    "providers": {
        "openai": {
            "models": [{"id": "gpt-4o", "context_window": 64_000, "default_max_tokens": 2048}]
        }
    },
    "mcp": {"tool": {"type": "stdio", "command": "true"}},
}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A home folder of the user's (with its config directory) and a notebook folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return tmp_path / "home"


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


class FakeCrush:
    """What %crush trust uses of the kernel's Crush."""

    def __init__(self, config: CrushConfig) -> None:
        self.config = config


def test_a_home_relative_crush_config_gives_the_models_windows(home):
    write(home / "models" / "crush.json", WINDOWS)
    config = CrushConfig(crush_config="~/models/crush.json")
    model = resolve_model("openai:gpt-4o", settings=config.provider_settings())
    assert model_window(model) == ContextWindow(64_000, 2048)


@pytest.mark.parametrize("given", ["", "~/project/crush.json", "project/crush.json"])
def test_the_trust_report_names_the_files_the_providers_read(home, given):
    write(Path("crush.json"), WINDOWS)  # the notebook folder's
    write(home / ".config" / "crush" / "crush.json", {"providers": {}})  # the user's own
    write(home / "project" / "crush.json", WINDOWS)
    write(Path("project") / "crush.json", WINDOWS)
    config = CrushConfig(crush_config=given)
    read = load_crush_config(config.provider_settings().crush_config).sources
    reported = [file.path for file in project_files(config)]
    own = home / ".config" / "crush" / "crush.json"
    assert reported == [path for path in read if path != own]
    assert reported and all(path.is_absolute() and path.is_file() for path in reported)


def test_a_missing_crush_config_is_the_same_one_line_error_everywhere(home):
    from IPython.core.error import UsageError

    config = CrushConfig(crush_config="~/moved/crush.json")
    expected = (
        f"crush config {home / 'moved' / 'crush.json'} does not exist; fix the crush_config "
        "path, or leave it unset to read crush.json from Crush's usual places"
    )
    with pytest.raises(ProviderConfigError) as providers:
        resolve_model("openai:gpt-4o", settings=config.provider_settings())
    with pytest.raises(ProviderConfigError) as mcp:
        load_mcp_servers(config.crush_config, trust_all=True)
    servers = MCPServers.for_config(config)
    servers.reload()
    said = [str(providers.value), str(mcp.value), servers.config_error]
    for action in ([], ["--show"], ["--revoke"]):
        with pytest.raises(UsageError) as trust:
            trust_command(FakeCrush(config), action)
        said.append(str(trust.value))
    assert said == [expected] * len(said)
