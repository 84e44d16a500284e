"""Context files joining the system prompt, and ``%crush context``."""

from __future__ import annotations

import pytest
from test_magics import run

from jupyter_crush.kernel.context import build_system_prompt, context_files
from jupyter_crush.testing import ScriptedModel


@pytest.fixture
def project(tmp_path, ip, monkeypatch):
    """outside/ holds a context file above the workspace root (repo/, which has .git);
    the notebook lives in repo/analysis/."""
    root = tmp_path / "outside" / "repo"
    notebook_dir = root / "analysis"
    notebook_dir.mkdir(parents=True)
    (root / ".git").mkdir()
    (tmp_path / "outside" / "AGENTS.md").write_text("NOT PART OF THE WORKSPACE")
    (root / "AGENTS.md").write_text("Use polars, not pandas.")
    (root / "CLAUDE.local.md").write_text("My local preference: short answers.")
    (notebook_dir / "CRUSH.md").write_text("Plots use seaborn.")
    (notebook_dir / "AGENTS.md").write_text("Data lives in data/.")
    monkeypatch.setitem(ip.user_ns, "__session__", str(notebook_dir / "sales.ipynb"))
    return root, notebook_dir


def test_files_nearest_folder_first_in_crush_order_up_to_the_root(project):
    root, notebook_dir = project
    found, problems = context_files(notebook_dir)
    assert problems == []
    assert [path for path, _ in found] == [
        notebook_dir / "AGENTS.md",
        notebook_dir / "CRUSH.md",
        root / "AGENTS.md",
        root / "CLAUDE.local.md",
    ]


def test_context_files_reach_the_model_with_their_paths(ip, crush, project):
    root, notebook_dir = project
    model = ScriptedModel(["ok"])
    crush.use_model(model)
    run(ip, "%%crush\nplot sales")
    system = model.requests[0].system
    assert system.startswith("You are crush")
    assert f'<context_file path="{notebook_dir / "AGENTS.md"}">\nData lives in data/.\n' in system
    assert f'<context_file path="{root / "CLAUDE.local.md"}">' in system
    assert system.index("Data lives in data/.") < system.index("Use polars")
    assert "NOT PART OF THE WORKSPACE" not in system


def test_a_file_that_is_not_utf8_is_left_out_with_a_note_and_the_turn_goes_on(
    ip, crush, project, capsys
):
    _, notebook_dir = project
    (notebook_dir / "CLAUDE.md").write_bytes("Café".encode("latin-1"))
    model = ScriptedModel(["ok"])
    crush.use_model(model)
    run(ip, "%%crush\nplot sales")
    out = capsys.readouterr().out
    assert (
        f"crush: context file {notebook_dir / 'CLAUDE.md'} is not UTF-8 (byte 3); "
        "it was left out: save it as UTF-8"
    ) in out
    assert "Data lives in data/." in model.requests[0].system  # the others still count
    assert "Caf" not in model.requests[0].system


def test_configured_prompt_keeps_the_context_files(project, ip):
    prompt = build_system_prompt("Answer in French.", ["python"], ip)
    assert prompt.text.startswith("Answer in French.\n")
    assert prompt.sources[0] == "CrushConfig.system_prompt"
    assert len(prompt.sources) == 5


def test_crush_context_reports_what_the_next_request_carries(ip, crush, project, capsys):
    _, notebook_dir = project
    crush.use_model(ScriptedModel(["x" * 4000], name="gpt-4o"))
    run(ip, "%%crush -s sizes\nfirst question")
    capsys.readouterr()
    run(ip, "%crush context")
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "Model: scripted:gpt-4o"
    assert lines[1].startswith("Session: sizes (") and lines[1].endswith("2 messages")
    assert lines[2].startswith("System prompt: ") and "tokens)" in lines[2]
    assert lines[3] == "  built-in prompt"
    assert lines[4] == f"  {notebook_dir / 'AGENTS.md'}"
    tools = next(line for line in lines if line.startswith("Tools ("))
    assert "python, variables, notebook, verify, insert_cell, edit_cell" in tools
    assert "Attachments: none" in out
    history = next(line for line in lines if line.startswith("History: "))
    assert history == "History: 4,014 chars (~1,004 tokens) sent"
    assert lines[-1].startswith("Total: ~") and "window unknown" in lines[-1]


def test_crush_context_names_the_fix_attachment_and_the_window(ip, crush, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-sent-anywhere")
    crush.use_model("openai:gpt-4o")
    ip.run_cell("1 / 0", store_history=True)
    capsys.readouterr()
    run(ip, "%crush context")
    out = capsys.readouterr().out
    assert "Session: none yet" in out
    assert "(%crush fix would attach 'ZeroDivisionError: division by zero' from In [" in out
    assert "of the model's 128,000-token window" in out
