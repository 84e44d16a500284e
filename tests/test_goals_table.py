"""The performance goals: the README's table is benchmarks/goals.py's registry, and a
benchmark's measurement is printed and recorded for benchmarks/run_all.sh's table."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_goals():
    path = ROOT / "benchmarks" / "goals.py"
    spec = importlib.util.spec_from_file_location("benchmark_goals", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


goals = load_goals()


def readme_goal_rows() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Performance goals\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def row_id(row: str) -> str:
    found = re.match(r"\| `([^`]+)` \|", row)
    return found.group(1) if found else row


def test_readme_goal_table_is_the_registry():
    readme, registry = readme_goal_rows(), goals.readme_rows()
    missing = sorted({row_id(r) for r in registry} - {row_id(r) for r in readme})
    extra = sorted({row_id(r) for r in readme} - {row_id(r) for r in registry})
    assert not missing, f"goals missing from the README's table: {missing}"
    assert not extra, f"README goals that benchmarks/goals.py does not register: {extra}"
    differing = [r for r, w in zip(readme, registry, strict=True) if r != w]
    assert not differing, (
        f"README rows differing from benchmarks/goals.py (text, limit or benchmark): {differing}; "
        "python benchmarks/goals.py --readme prints the table"
    )


def test_every_goal_names_a_benchmark_that_exists():
    for goal_id, goal in goals.GOALS.items():
        assert (ROOT / "benchmarks" / goal.benchmark).is_file(), goal_id
        assert goal.comparison in ("<=", ">="), goal_id


def test_measured_prints_the_goal_line_and_records_it(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv("CRUSH_BENCH_RESULTS", str(results))
    assert goals.measured("sustained.stop_median_ms", 12.5, "after") is False
    assert goals.measured("store.vs_caching_x", 80) is True
    assert capsys.readouterr().out.splitlines() == [
        "goal sustained.stop_median_ms: 12.5 ms (goal <= 10) NOT met [after]",
        "goal store.vs_caching_x: 80 x (goal >= 50) met",
    ]
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert lines == [
        {"goal": "sustained.stop_median_ms", "value": 12.5, "met": False, "note": "after"},
        {"goal": "store.vs_caching_x", "value": 80, "met": True, "note": ""},
    ]


def test_measured_without_a_results_file_only_prints(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CRUSH_BENCH_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    goals.measured("history.repeat_s", 0.27)
    assert capsys.readouterr().out == "goal history.repeat_s: 0.27 s (goal <= 0.5) met\n"
    assert list(tmp_path.iterdir()) == []


def test_measured_refuses_an_unknown_goal_naming_it(tmp_path, monkeypatch):
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv("CRUSH_BENCH_RESULTS", str(results))
    with pytest.raises(ValueError, match=r"unknown goal id 'history\.frist_call_s'"):
        goals.measured("history.frist_call_s", 0.3)
    assert not results.exists()


def write_results(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_table_shows_each_goal_beside_its_measurement(tmp_path, capsys):
    results = write_results(
        tmp_path / "results.jsonl",
        {"goal": "undo.snapshot_untouched_ms", "value": 0.06, "met": True, "note": ""},
        {"goal": "load_ext.median_ms", "value": 31.0, "met": True, "note": "before"},
        {"goal": "load_ext.median_ms", "value": 74.0, "met": False, "note": ""},
        {"benchmark": "bench_undo.py", "exit": 0, "seconds": 7.5},
    )
    assert goals.table(results) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["undo.snapshot_untouched_ms"].endswith("≤ 5 ms  0.06 ms met")
    assert "31 ms met [before]" in out and "74 ms NOT met" in out
    assert lines["kernel.stop_p99_ms"].endswith("not measured")
    assert (
        len([line for line in out.splitlines() if "not measured" in line]) == len(goals.GOALS) - 2
    )


def test_table_names_a_benchmark_that_ran_without_measuring_its_goal(tmp_path, capsys):
    ran = {"benchmark": "bench_notebook.py", "exit": 0, "seconds": 6.0}
    measured = {"goal": "notebook.tool_ms", "value": 2.1, "met": True, "note": ""}
    assert goals.table(write_results(tmp_path / "results.jsonl", measured, ran)) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line}
    assert lines["notebook.tool_ms"].endswith("2.1 ms met")
    assert lines["notebook.fix_added_ms"].endswith(
        "not measured (bench_notebook.py ran without measuring it)"
    )
    assert lines["undo.snapshot_untouched_ms"].endswith("not measured")


def test_table_fails_only_when_a_benchmark_failed(tmp_path, capsys):
    missed = {"goal": "sustained.trivial_cell_end", "value": 1.9, "met": False, "note": ""}
    ran = {"benchmark": "bench_sustained.py", "exit": 0, "seconds": 14.0}
    assert goals.table(write_results(tmp_path / "a.jsonl", missed, ran)) == 0
    broke = {"benchmark": "bench_kernel.py", "exit": 1, "seconds": 3.0}
    assert goals.table(write_results(tmp_path / "b.jsonl", missed, ran, broke)) == 1
    out = capsys.readouterr().out
    assert "kernel.trivial_cell_ratio" in out and "not measured (bench_kernel.py failed)" in out
    assert "FAILED (exit 1)" in out
