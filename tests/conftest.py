from __future__ import annotations

import pytest

from jupyter_crush import TranscriptStore


@pytest.fixture
def store(tmp_path):
    store = TranscriptStore(tmp_path / "store")
    yield store
    store.close()


def pytest_collection_modifyitems(items):
    # Playwright's sync API keeps an event loop running on the main thread while its browser
    # is open, so every asyncio test collected after a browser test would fail: run them last.
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
