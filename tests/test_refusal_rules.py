"""How a write the file system refuses is said, one rule per test: the status line's
pending-writes line names the file, the count (in the singular for one) and the system's
reason, even for an error without a number; the log says it once per file."""

from __future__ import annotations

import errno
import logging
import os

import pytest
from test_store_fallback import user

from jupyter_crush import TranscriptStore
from jupyter_crush.store.storage import Journal


@pytest.fixture
def refusal(monkeypatch) -> list[OSError]:
    """While it holds an error, every journal append fails with it."""
    holding: list[OSError] = []
    append = Journal.append

    def refusing(journal: Journal, payload: bytes, *, fsync: bool) -> None:
        if holding:
            raise holding[0]
        return append(journal, payload, fsync=fsync)

    monkeypatch.setattr(Journal, "append", refusing)
    return holding


def test_one_pending_record_is_said_in_the_singular_with_file_and_reason(tmp_path, refusal):
    with TranscriptStore(tmp_path / "store") as store:
        sid = store.create_session().id
        refusal.append(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        store.add_message(user(sid, "one"))
        [pending] = store.pending_writes(sid)
        journal = store.journal_path(sid)
        assert str(pending) == f"1 record not yet written to {journal}: No space left on device"
        refusal.clear()


def test_a_refusal_without_an_error_number_is_said_with_its_message(tmp_path, refusal):
    with TranscriptStore(tmp_path / "store") as store:
        sid = store.create_session().id
        refusal.append(OSError("the quota of this volume is used up"))
        store.add_message(user(sid, "one"))
        [pending] = store.pending_writes(sid)
        assert pending.reason == "the quota of this volume is used up"
        refusal.clear()


def test_a_refused_file_is_logged_once_naming_it_and_the_reason(tmp_path, refusal, caplog):
    caplog.set_level(logging.INFO, logger="jupyter_crush")
    with TranscriptStore(tmp_path / "store") as store:
        sid = store.create_session().id
        refusal.append(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        store.add_message(user(sid, "one"))
        store.add_message(user(sid, "two"))
        store.flush()  # retried, refused again
        journal = store.journal_path(sid)
        said = [r.getMessage() for r in caplog.records if str(journal) in r.getMessage()]
        assert said == [
            f"could not write {journal} (No space left on device); kept in memory, retrying"
        ]
        refusal.clear()
