from __future__ import annotations

import pytest

from jupyter_crush import TranscriptStore


@pytest.fixture
def ip(tmp_path, monkeypatch):
    """The test process's IPython with the extension loaded, fresh for each test."""
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("CRUSH_MODEL", raising=False)
    monkeypatch.setenv("CRUSH_DATA_DIR", str(tmp_path / "store"))
    start_ipython()  # once per process; later calls return None
    shell = get_ipython()
    shell.run_line_magic("load_ext", "jupyter_crush")
    yield shell
    shell.run_line_magic("unload_ext", "jupyter_crush")
    shell.rl_next_input = None
    shell.config.pop("CrushConfig", None)  # %config writes there; keep tests independent


@pytest.fixture
def crush(ip):
    """The shell's Crush, answering from a ScriptedModel."""
    from jupyter_crush.magics import current
    from jupyter_crush.testing import ScriptedModel

    crush = current()
    crush.use_model(ScriptedModel(["The answer is 42."] * 20))
    return crush


@pytest.fixture
def store(tmp_path):
    store = TranscriptStore(tmp_path / "store")
    yield store
    store.close()


def pytest_collection_modifyitems(items):
    # Playwright's sync API keeps an event loop running on the main thread while its browser
    # is open, so every asyncio test collected after a browser test would fail: run them last.
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
