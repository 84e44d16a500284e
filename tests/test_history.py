"""crush.history(), crush.sessions() and export_session() on a store made by agent runs."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython
from support.transcripts import (
    ANSWER,
    CANCELED_PARTIAL,
    CANCELED_PROMPT,
    ERROR_MESSAGE,
    ERROR_PROMPT,
    QUESTION,
    REASONING,
    TOOL_OUTPUT,
    UMLAUT_ANSWER,
    UMLAUT_PROMPT,
    make_transcripts,
)

import jupyter_crush as crush
from jupyter_crush import Message, Role, TranscriptStore
from jupyter_crush.core.message import TextPart
from jupyter_crush.history import MESSAGE_COLUMNS, SESSION_COLUMNS
from jupyter_crush.store.lookup import SessionNotFoundError
from jupyter_crush.store.storage import StoreError
from jupyter_crush.testing import ScriptedModel

REPO = Path(__file__).resolve().parents[1]
# The package's ``history`` attribute is the function; the module is in sys.modules.
history_module = importlib.import_module("jupyter_crush.history")


@pytest.fixture(scope="module")
def transcripts(tmp_path_factory):
    return make_transcripts(tmp_path_factory.mktemp("history") / "store")


@pytest.fixture(autouse=True)
def no_kernel_store(monkeypatch, tmp_path):
    """The default store is never the developer's: no IPython shell unless a test makes one."""
    monkeypatch.setenv("CRUSH_DATA_DIR", str(tmp_path / "unused-default"))
    monkeypatch.setattr(history_module, "_ipython", lambda: None)


def test_one_row_per_message_with_every_column(transcripts):
    df = crush.history(store=transcripts.path)
    assert list(df.columns) == list(MESSAGE_COLUMNS)
    assert len(df) == 10
    assert pd.api.types.is_datetime64_any_dtype(df["time"])
    assert df["time"].is_monotonic_increasing

    analysis = df[df.session == transcripts.analysis]
    assert list(analysis.role) == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert set(analysis.session_title) == {"NaN analysis"}
    user, call, result, answer, canceled_prompt, canceled = analysis.to_dict("records")
    assert user["text"] == QUESTION and pd.isna(user["finish_reason"])
    assert call["reasoning"] == REASONING and call["text"] == ""
    assert call["tool_calls"] == 'inspect({"name":"df"})'
    assert call["finish_reason"] == "tool_use" and call["model"] == "scripted-model"
    assert result["tool_results"] == f"inspect: {TOOL_OUTPUT}"
    assert answer["text"] == ANSWER and answer["finish_reason"] == "end_turn"
    assert (answer["input_tokens"], answer["output_tokens"]) == (120, 30)
    assert answer["cost"] == pytest.approx(0.0021)
    assert canceled_prompt["text"] == CANCELED_PROMPT
    assert canceled["text"] == CANCELED_PARTIAL
    assert canceled["finish_reason"] == "canceled"
    assert canceled["finish_message"] == "User canceled request"

    failed = df[df.session == transcripts.errors].to_dict("records")
    assert [r["text"] for r in failed] == [ERROR_PROMPT, "Partial summ"]
    assert failed[1]["finish_reason"] == "error" and failed[1]["finish_message"] == ERROR_MESSAGE


def test_message_ids_and_times_are_the_store_s(transcripts):
    df = crush.history(transcripts.analysis, store=transcripts.path)
    with TranscriptStore(transcripts.path) as store:
        stored = store.list_messages(transcripts.analysis)
    assert list(df.message_id) == [m.id for m in stored]
    assert list(df.time) == [pd.Timestamp(datetime.fromtimestamp(m.created_at)) for m in stored]


def test_a_session_by_id_title_or_id_prefix(transcripts):
    by_id = crush.history(transcripts.errors, store=transcripts.path)
    by_title = crush.history("Rate limits", store=transcripts.path)
    by_prefix = crush.history(transcripts.errors[:6], store=transcripts.path)
    assert list(by_id.message_id) == list(by_title.message_id) == list(by_prefix.message_id)
    assert set(by_id.session) == {transcripts.errors} and len(by_id) == 2


def test_unknown_and_ambiguous_sessions_are_clear_errors(tmp_path):
    with TranscriptStore(tmp_path / "store") as store:
        store.create_session("one", session_id="abcd-1")
        store.create_session("two", session_id="abcd-2")
        with pytest.raises(SessionNotFoundError, match=r"no session 'nope'.*crush\.sessions\(\)"):
            crush.history("nope", store=store)
        with pytest.raises(SessionNotFoundError, match="matches 2 sessions; give more"):
            crush.history("abcd", store=store)
        assert crush.history("abcd-2", store=store).empty


def test_search_is_case_insensitive_over_text_and_reasoning(transcripts):
    def hits(query: str) -> list[str]:
        return list(crush.history(store=transcripts.path, search=query).text)

    assert hits("nan PRICES") == [ANSWER]
    assert hits("merge") == [ANSWER]
    # reasoning matches; a quoted phrase stays together
    assert list(crush.history(store=transcripts.path, search='"price column"').reasoning) == [
        REASONING
    ]
    assert hits('"column price"') == []
    assert hits("NaN zebra") == []  # every word must occur
    assert hits("zebra") == []
    assert hits("3 NaN of 10") == []  # tool results are not prompts or answers
    # Unicode case folding: STRASSE finds straße and the other way round
    assert hits("straße") == [UMLAUT_PROMPT, UMLAUT_ANSWER]
    assert hits("ZÜRICH") == [UMLAUT_ANSWER]
    assert list(crush.history("NaN analysis", store=transcripts.path, search="plot").text) == [
        CANCELED_PROMPT,
        CANCELED_PARTIAL,
    ]


def test_search_finds_text_that_json_escapes(tmp_path):
    with TranscriptStore(tmp_path / "store") as store:
        sid = store.create_session("escapes").id
        texts = ['df["price"] is NaN', "C:\\data\\prices.csv", "tab\there", "ünïcode ✓"]
        for text in texts:
            store.add_message(Message(sid, Role.USER, [TextPart(text)]))
        for query, expected in [
            ('df["price"]', texts[0]),
            ("c:\\data\\", texts[1]),
            ("tab\there", texts[2]),
            ("ÜNÏCODE ✓", texts[3]),
        ]:
            assert list(crush.history(store=store, search=query).text) == [expected], query


def test_search_sees_a_streaming_reply_not_yet_on_disk(tmp_path):
    with TranscriptStore(tmp_path / "store", flush_interval=3600) as store:
        sid = store.create_session().id
        reply = store.add_message(Message(sid, Role.ASSISTANT, [TextPart("first")]))
        reply.append_text(" then the needle")
        store.update_message(reply)  # coalesced: in memory only
        assert list(crush.history(store=store, search="needle").text) == ["first then the needle"]


def test_bad_search_role_since_and_limit_are_clear_errors(transcripts):
    path = transcripts.path
    with pytest.raises(ValueError, match="at least one word"):
        crush.history(store=path, search="  ")
    with pytest.raises(ValueError, match="unknown role 'robot'; use one of"):
        crush.history(store=path, role="robot")
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        crush.history(store=path, since="yesterday")
    with pytest.raises(TypeError, match="since must be"):
        crush.history(store=path, since=[1])
    with pytest.raises(ValueError, match="limit must be a non-negative int"):
        crush.history(store=path, limit=-1)


def test_role_since_and_limit_narrow_the_rows(transcripts):
    path = transcripts.path
    assert list(crush.history(store=path, role="tool").tool_results) == [f"inspect: {TOOL_OUTPUT}"]
    both = crush.history(store=path, role=["user", Role.TOOL])
    assert set(both.role) == {"user", "tool"} and len(both) == 5
    assert len(crush.history(store=path, since=timedelta(hours=1))) == 10
    assert crush.history(store=path, since=datetime.now() + timedelta(minutes=5)).empty
    assert crush.history(store=path, since="2000-01-01").shape[0] == 10
    newest = crush.history(store=path, limit=3)
    assert list(newest.text) == ["Partial summ", UMLAUT_PROMPT, UMLAUT_ANSWER]
    assert crush.history(store=path, limit=0).empty
    assert list(crush.history(store=path, search="NaN", limit=1).text) == [ANSWER]


def test_limit_keeps_the_newest_rows_across_interleaved_sessions(tmp_path):
    with TranscriptStore(tmp_path / "store") as store:
        a, b, c = (store.create_session(title).id for title in "abc")
        for sid, text in [(c, "c1"), (a, "a1"), (b, "b1"), (a, "a2"), (b, "b2"), (a, "a3")]:
            store.add_message(Message(sid, Role.USER, [TextPart(text)]))
        assert list(crush.history(store=store, limit=4).text) == ["b1", "a2", "b2", "a3"]
        assert list(crush.history(store=store, limit=6).text) == [
            "c1",
            "a1",
            "b1",
            "a2",
            "b2",
            "a3",
        ]
        assert list(crush.history(store=store, role="user", limit=1).text) == ["a3"]
        assert list(crush.history(store=store, search="b", limit=1).text) == ["b2"]


def test_sessions_newest_first_with_totals(transcripts):
    df = crush.sessions(store=transcripts.path)
    assert list(df.columns) == list(SESSION_COLUMNS)
    assert list(df.title) == ["Straße", "Rate limits", "NaN analysis"]
    analysis = df[df.session == transcripts.analysis].iloc[0]
    assert analysis.messages == 6
    assert analysis.input_tokens >= 120 and analysis.output_tokens >= 30
    assert analysis.cost == pytest.approx(0.0021)
    assert list(crush.sessions(store=transcripts.path, limit=1).title) == ["Straße"]


def test_without_pandas_rows_are_dicts(transcripts, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    rows = crush.history(transcripts.errors, store=transcripts.path)
    assert isinstance(rows, list) and [list(r) for r in rows] == [list(MESSAGE_COLUMNS)] * 2
    assert isinstance(rows[0]["time"], datetime)
    assert rows[1]["finish_message"] == ERROR_MESSAGE
    assert crush.sessions(store=transcripts.path)[0]["title"] == "Straße"


def test_a_given_store_object_stays_open(transcripts):
    with TranscriptStore(transcripts.path) as store:
        crush.history(store=store)
        assert store.list_sessions()


def test_the_default_store_is_the_data_dir(transcripts, monkeypatch, tmp_path):
    assert crush.history().empty  # nothing recorded in the default dir yet: no error
    assert list(crush.history().columns) == list(MESSAGE_COLUMNS)
    assert not (tmp_path / "unused-default").exists()  # and nothing was created there
    monkeypatch.setenv("CRUSH_DATA_DIR", str(transcripts.path))
    assert len(crush.history()) == 10
    monkeypatch.delenv("CRUSH_DATA_DIR")
    monkeypatch.chdir(transcripts.path.parent)
    transcripts.path.rename(transcripts.path.parent / ".crush")
    try:
        assert len(crush.history()) == 10
    finally:
        (transcripts.path.parent / ".crush").rename(transcripts.path)


def test_missing_or_foreign_store_paths_are_clear_errors(tmp_path):
    with pytest.raises(StoreError, match=r"no transcript store at .*does not exist"):
        crush.history(store=tmp_path / "nope")
    (tmp_path / "notes").mkdir()
    with pytest.raises(StoreError, match="is not a transcript store"):
        crush.history(store=tmp_path / "notes")
    assert list((tmp_path / "notes").iterdir()) == []  # a query never makes a store


def test_in_a_kernel_the_extension_s_store_is_queried(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real _ipython, and no CRUSH_DATA_DIR from the autouse fixture
    monkeypatch.setenv("CRUSH_DATA_DIR", str(tmp_path / "kernel-store"))
    monkeypatch.delenv("CRUSH_MODEL", raising=False)
    start_ipython()  # once per process; later calls return None
    shell = get_ipython()
    shell.run_line_magic("load_ext", "jupyter_crush")
    try:
        # Before a cell opened the kernel's store, a query leaves data_dir free to change.
        assert crush.history().empty
        assert shell._jupyter_crush.config.opened_data_dir is None
        shell.run_line_magic("config", f"CrushConfig.data_dir = {str(tmp_path / 'kernel')!r}")
        shell._jupyter_crush.use_model(ScriptedModel(["Forty-two."]))
        result = shell.run_cell("%%crush -s answers\nWhat is six times seven?")
        assert result.success
        # the env now points elsewhere, but the kernel's open store is what a cell means
        monkeypatch.setenv("CRUSH_DATA_DIR", str(tmp_path / "elsewhere"))
        df = crush.history("answers")
        assert list(df.text) == ["What is six times seven?", "Forty-two."]
        assert set(df.session_title) == {"answers"}
        assert (tmp_path / "kernel" / "format.json").is_file()
        assert not (tmp_path / "kernel-store").exists()
    finally:
        shell.run_line_magic("unload_ext", "jupyter_crush")
        shell.config.pop("CrushConfig", None)
    assert not (tmp_path / "elsewhere").exists()


def test_export_markdown(transcripts, tmp_path):
    text = crush.export_session("NaN analysis", store=transcripts.path)
    assert text.startswith("# NaN analysis\n")
    assert f"- Session: `{transcripts.analysis}`" in text
    assert "cost: $0.0021" in text
    assert text.count("## User · ") == 2 and text.count("## Assistant · ") == 3
    assert text.count("## Tool · ") == 1
    assert f"<details><summary>Reasoning</summary>\n\n{REASONING}\n\n</details>" in text
    assert '**Tool call** `inspect`:\n```json\n{\n  "name": "df"\n}\n```' in text
    # the result holds a ``` fence, so it is fenced with four backticks
    assert f"**Tool result** `inspect`:\n````\n{TOOL_OUTPUT}\n````" in text
    assert ANSWER in text
    assert text.rstrip().endswith(
        f"{CANCELED_PARTIAL}\n\n*Finished: canceled (User canceled request)*"
    )
    errors = crush.export_session(transcripts.errors, store=transcripts.path)
    assert f"*Finished: error ({ERROR_MESSAGE})*" in errors
    target = tmp_path / "out.md"
    assert crush.export_session("Straße", path=target, store=transcripts.path) == (
        target.read_text(encoding="utf-8")
    )
    assert UMLAUT_ANSWER in target.read_text(encoding="utf-8")


def test_export_json_keeps_every_part(transcripts, tmp_path):
    target = tmp_path / "session.json"
    text = crush.export_session(
        transcripts.analysis, format="json", path=target, store=transcripts.path
    )
    assert json.loads(target.read_text(encoding="utf-8")) == json.loads(text)
    document = json.loads(text)
    assert (document["format"], document["version"]) == ("jupyter-crush-session", 1)
    assert document["session"]["id"] == transcripts.analysis
    assert document["session"]["title"] == "NaN analysis"
    with TranscriptStore(transcripts.path) as store:
        stored = store.list_messages(transcripts.analysis)
    assert [Message.from_dict(m) for m in document["messages"]] == stored


def test_export_bad_input(transcripts):
    with pytest.raises(ValueError, match="unknown export format 'html'"):
        crush.export_session("NaN analysis", format="html", store=transcripts.path)
    with pytest.raises(SessionNotFoundError, match="no session 'nope'"):
        crush.export_session("nope", store=transcripts.path)
    with pytest.raises(SessionNotFoundError, match="the transcript store is empty"):
        crush.export_session("anything")  # the default dir has no store


def test_importing_the_package_does_not_import_pandas():
    code = "import sys, jupyter_crush; print('pandas' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
