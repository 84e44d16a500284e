"""``python -m jupyter_crush log``: listing, transcripts, search, JSON, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.transcripts import (
    ANSWER,
    CANCELED_PARTIAL,
    ERROR_MESSAGE,
    QUESTION,
    REASONING,
    UMLAUT_ANSWER,
    UMLAUT_PROMPT,
    make_transcripts,
)

from jupyter_crush import Message, Role, TranscriptStore
from jupyter_crush.cli import ABBREVIATE, main
from jupyter_crush.core.message import TextPart, ToolResultPart

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def transcripts(tmp_path_factory):
    return make_transcripts(tmp_path_factory.mktemp("cli") / "store")


def crush_cli(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None):
    """Run ``python -m jupyter_crush`` as a user would."""
    environ = {k: v for k, v in os.environ.items() if k != "CRUSH_DATA_DIR"}
    environ["PYTHONPATH"] = str(REPO)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "jupyter_crush", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help(capsys):
    result = crush_cli("--help")
    assert result.returncode == 0 and "log" in result.stdout and result.stderr == ""
    code, out, _ = run_main(capsys, "log", "--help")
    assert code == 0 and "--query" in out and "--store" in out and "-n N" in out
    code, out, _ = run_main(capsys)
    assert code == 0 and "COMMAND" in out


def test_sessions_are_listed_newest_first(transcripts):
    result = crush_cli("log", "--store", str(transcripts.path))
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["SESSION", "UPDATED", "MSGS", "TOKENS", "IN/OUT", "COST", "TITLE"]
    assert [line.split()[-1] for line in lines] == ["Straße", "limits", "analysis"]
    analysis = lines[2].split()
    assert analysis[0] == transcripts.analysis
    assert analysis[3] == "6" and analysis[5] == "$0.0021"
    assert analysis[4].startswith(("12", "13"))  # input tokens / output tokens
    limited = crush_cli("log", "--store", str(transcripts.path), "-n", "1")
    assert len(limited.stdout.splitlines()) == 2 and "Straße" in limited.stdout


def test_a_session_s_transcript(transcripts, capsys):
    code, out, err = run_main(capsys, "log", "NaN analysis", "--store", str(transcripts.path))
    assert code == 0 and err == ""
    assert out.startswith(f"Session {transcripts.analysis}: NaN analysis\n6 messages")
    assert "-- user · " in out and QUESTION in out and ANSWER in out
    assert f"  (reasoning) {REASONING}" in out
    assert '  -> inspect {"name":"df"}' in out
    # the tool's multi-line output on one line
    assert "  <- inspect result: price: 3 NaN of 10 rows ``` NaN NaN NaN ```" in out
    canceled = [line for line in out.splitlines() if "[canceled" in line]
    assert len(canceled) == 1 and canceled[0].endswith("[canceled: User canceled request]")
    assert out.rstrip().endswith(CANCELED_PARTIAL)
    # by id prefix, and the error turn
    code, out, _ = run_main(capsys, "log", transcripts.errors[:8], "--store", str(transcripts.path))
    assert code == 0 and f"[error: {ERROR_MESSAGE}]" in out
    # -n: the last messages only
    code, out, _ = run_main(
        capsys, "log", "NaN analysis", "-n", "2", "--store", str(transcripts.path)
    )
    assert out.count("\n-- ") == 2 and QUESTION not in out and CANCELED_PARTIAL in out


def test_long_tool_traffic_is_abbreviated(tmp_path, capsys):
    with TranscriptStore(tmp_path / "store") as store:
        sid = store.create_session("long").id
        store.add_message(
            Message(sid, Role.TOOL, [ToolResultPart("c1", "view", "x" * 5000, is_error=True)])
        )
    code, out, _ = run_main(capsys, "log", "long", "--store", str(tmp_path / "store"))
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("  <- view error: "))
    assert line.endswith("…") and len(line) == len("  <- view error: ") + ABBREVIATE


def test_search(transcripts, capsys):
    store = str(transcripts.path)
    code, out, _ = run_main(capsys, "log", "-q", "strasse", "--store", store)
    assert code == 0
    assert out.count("\n") == 4  # two hits of two lines each
    assert f"-- {transcripts.umlaut} Straße · " in out
    assert f"  {UMLAUT_PROMPT}\n" in out and f"  {UMLAUT_ANSWER}\n" in out
    code, out, _ = run_main(capsys, "log", "-q", "price column", "--store", store)
    assert f"  {REASONING}\n" in out  # the matching reasoning is what the hit shows
    code, out, _ = run_main(capsys, "log", "-q", "zebra", "--store", store)
    assert code == 0 and out == "No messages containing 'zebra'.\n"
    # within one session, and newest hits only
    code, out, _ = run_main(capsys, "log", "Rate limits", "-q", "NaN", "--store", store)
    assert out == "No messages containing 'NaN'.\n"
    code, out, _ = run_main(capsys, "log", "-q", "NaN", "-n", "1", "--store", store)
    assert out.count("\n-- ") == 0 and out.startswith("-- ") and ANSWER in out


def test_role_filter(transcripts, capsys):
    code, out, _ = run_main(capsys, "log", "-r", "tool", "--store", str(transcripts.path))
    assert code == 0 and out.count("-- ") == 1 and "inspect: price: 3 NaN" in out


def test_json_output(transcripts, capsys):
    store = str(transcripts.path)
    code, out, _ = run_main(capsys, "log", "--json", "--store", store)
    sessions = json.loads(out)
    assert [s["title"] for s in sessions] == ["Straße", "Rate limits", "NaN analysis"]
    assert sessions[2]["session"] == transcripts.analysis and sessions[2]["messages"] == 6
    code, out, _ = run_main(capsys, "log", "NaN analysis", "--json", "--store", store)
    document = json.loads(out)
    assert document["format"] == "jupyter-crush-session"
    assert [m["role"] for m in document["messages"]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    assert document["messages"][-1]["parts"][-1]["reason"] == "canceled"
    code, out, _ = run_main(capsys, "log", "-q", "merge", "--json", "--store", store)
    assert code == 0
    (hit,) = json.loads(out)
    assert hit["text"] == ANSWER and hit["session"] == transcripts.analysis
    assert hit["time"].startswith("20") and "T" in hit["time"]


def test_default_store_is_crush_data_dir_then_dot_crush(transcripts, tmp_path):
    by_env = crush_cli("log", env={"CRUSH_DATA_DIR": str(transcripts.path)})
    assert by_env.returncode == 0 and "NaN analysis" in by_env.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = crush_cli("log", cwd=empty)
    assert missing.returncode == 1
    assert missing.stderr == (
        "python -m jupyter_crush: error: no transcript store at .crush: "
        "the directory does not exist\n"
    )
    with TranscriptStore(empty / ".crush") as store:
        store.create_session("here")
    found = crush_cli("log", cwd=empty)
    assert found.returncode == 0 and found.stdout.splitlines()[1].endswith("here")


def one_line_error(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    if code == 1:
        assert result.stderr.count("\n") == 1 and result.stdout == ""
    return result.stderr


def test_bad_input_is_one_line_and_an_exit_code(transcripts, tmp_path):
    store = str(transcripts.path)
    err = one_line_error(crush_cli("log", "nope", "--store", store), 1)
    assert "no session 'nope'" in err
    err = one_line_error(crush_cli("log", "--store", str(tmp_path / "missing")), 1)
    assert "does not exist" in err
    (tmp_path / "notes").mkdir()
    err = one_line_error(crush_cli("log", "--store", str(tmp_path / "notes")), 1)
    assert "is not a transcript store" in err
    err = one_line_error(crush_cli("log", "-q", "  ", "--store", store), 1)
    assert "at least one word" in err
    err = one_line_error(crush_cli("log", "-n", "-3", "--store", store), 2)
    assert "N must be 0 or more" in err
    err = one_line_error(crush_cli("log", "-r", "robot"), 2)
    assert "invalid choice: 'robot'" in err
    err = one_line_error(crush_cli("frobnicate"), 2)
    assert "invalid choice: 'frobnicate'" in err


def test_a_corrupted_journal_is_one_line_with_the_file(tmp_path):
    path = tmp_path / "store"
    with TranscriptStore(path) as store:
        sid = store.create_session("broken").id
        store.add_message(Message(sid, Role.USER, [TextPart("hello")]))
    journal = path / "messages" / f"{sid}.jsonl"
    journal.write_bytes(journal.read_bytes() + b"not json\n")
    err = one_line_error(crush_cli("log", "broken", "--store", str(path)), 1)
    assert "corrupted transcript file" in err and str(journal) in err
    err = one_line_error(crush_cli("log", "-q", "hello", "--store", str(path)), 1)
    assert "corrupted transcript file" in err


def test_output_into_a_closed_pipe_is_quiet(transcripts):
    with subprocess.Popen(
        [sys.executable, "-m", "jupyter_crush", "log", "-q", "a", "-n", "0"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "CRUSH_DATA_DIR": str(transcripts.path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        child.stdout.close()  # like `| head -0`
        err = child.stderr.read()
    assert child.returncode == 0 and b"Traceback" not in err
