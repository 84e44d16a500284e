from __future__ import annotations

import pytest

from jupyter_crush import TranscriptStore


@pytest.fixture
def store(tmp_path):
    store = TranscriptStore(tmp_path / "store")
    yield store
    store.close()
