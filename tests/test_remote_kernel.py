"""A kernel a gateway started: where its transcript store goes and why, and the one line
that names the two allow-lists when no key reached it (the gateway itself:
test_gateway.py)."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from test_magics import run

from jupyter_crush.core.remote import ALLOW_LISTS, looks_remote, store_place
from jupyter_crush.kernel.config import CrushConfig
from jupyter_crush.kernel.crush import Crush
from jupyter_crush.tools.notebook import NotebookTool
from jupyter_crush.tools.workspace import Workspace

GATEWAY = {"PATH": "/usr/bin", "KERNEL_USERNAME": "ada", "KERNEL_LAUNCH_TIMEOUT": "40"}


def test_a_kernel_is_remote_when_a_gateway_sent_kernel_variables():
    assert looks_remote(GATEWAY)
    assert looks_remote({"PATH": "/usr/bin"})
    assert not looks_remote({"PATH": "/usr/bin", "HOME": "/home/ada"})


def test_crush_data_dir_comes_first(tmp_path):
    place = store_place({**GATEWAY, "CRUSH_DATA_DIR": "/data/t", "KERNEL_WORKING_DIR": "/"})
    assert (place.path, place.reason) == ("/data/t", "from $CRUSH_DATA_DIR")


def test_a_gateway_kernel_that_sees_the_notebooks_folder_keeps_it_there(tmp_path):
    place = store_place({**GATEWAY, "KERNEL_WORKING_DIR": str(tmp_path)}, cwd=tmp_path / "gw")
    assert place.path == str(tmp_path / ".crush")
    assert "KERNEL_WORKING_DIR" in place.reason


def test_a_local_kernel_keeps_the_store_in_its_working_directory(tmp_path):
    place = store_place({"HOME": "/home/ada"}, cwd=tmp_path)
    assert place.path == str(tmp_path / ".crush")
    assert place.reason == "the notebook's folder"


def test_a_gateway_kernel_that_cannot_see_the_folder_never_uses_the_gateways_cwd(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    env = {**GATEWAY, "KERNEL_WORKING_DIR": "/nowhere/on/this/pod"}
    place = store_place(env, cwd=tmp_path / "gateway-cwd")
    assert place.path == str(tmp_path / "xdg" / "jupyter-crush")
    assert "cannot see the notebook's folder /nowhere/on/this/pod;" in place.reason
    assert "CRUSH_DATA_DIR" in place.reason


def test_sessions_and_model_say_where_the_store_is_and_why(ip, crush, capsys):
    run(ip, "%crush sessions")
    line = capsys.readouterr().out.splitlines()[0]
    path = crush.config.data_dir
    assert line.startswith("transcripts: ") and path.rstrip("/") in line
    run(ip, "%crush model")
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == line


def test_a_store_set_in_config_says_so(monkeypatch, tmp_path):
    config = CrushConfig(data_dir=str(tmp_path / "mine"))
    assert config.store_line() == f"transcripts: {tmp_path / 'mine'} (from CrushConfig.data_dir)"


def _remote_without_keys(monkeypatch):
    for name in ("CRUSH_MODEL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KERNEL_USERNAME", "ada")


def test_no_key_reaching_a_remote_kernel_names_both_allow_lists(monkeypatch):
    _remote_without_keys(monkeypatch)
    crush = Crush(None)
    with pytest.raises(UsageError) as raised:
        crush.resolve_model(None)
    message = str(raised.value)
    assert "\n" not in message and "reached this remote kernel" in message
    assert "JUPYTER_GATEWAY_ALLOWED_ENVS" in message and "KG_ENV_WHITELIST" in message


def test_the_offline_replay_chosen_on_purpose_still_works_remotely(monkeypatch):
    _remote_without_keys(monkeypatch)
    crush = Crush(None)
    crush.use_model("replay:auto")
    assert crush.resolve_model(None) is not None


def test_a_local_kernel_without_keys_still_replays(monkeypatch):
    for name in ("CRUSH_MODEL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("KERNEL_USERNAME", raising=False)
    assert not CrushConfig().nothing_reached_a_remote_kernel()


def test_a_missing_key_for_a_named_model_gets_the_hint_remotely(monkeypatch):
    _remote_without_keys(monkeypatch)
    crush = Crush(None)
    with pytest.raises(UsageError) as raised:
        crush.resolve_model("openai:gpt-4o")
    assert "no API key for provider 'openai'" in str(raised.value)
    assert ALLOW_LISTS in str(raised.value)


async def test_the_notebook_tool_says_the_file_is_not_visible_remotely(ip, monkeypatch, tmp_path):
    monkeypatch.setenv("KERNEL_USERNAME", "ada")
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.setitem(ip.user_ns, "__session__", "")
    snapshot = await NotebookTool(ip, Workspace(tmp_path)).snapshot()
    assert snapshot.origin.startswith("kernel history; the notebook's file is not visible")
