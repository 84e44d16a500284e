"""Every tool that takes a path stays inside the workspace.

The tools are found, not listed: each tool :func:`default_tools` builds whose JSON schema has
a path-like argument is run against the same escapes, so a tool added later is checked
without this file changing. Each call must be refused with a message naming the workspace,
read nothing from outside it and change nothing there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

from jupyter_crush.core.tools import Tool, ToolContext
from jupyter_crush.tools import DEFAULT_TOOL_NAMES, default_tools

CTX = ToolContext("session", "call-1")
SECRET = "sk-outside-0f3a9c7e5b1d"

#: Argument names that hold a path: ``path``, ``paths``, ``file``, ``notebook_path``,
#: ``cwd``, ``output_dir``...
PATH_LIKE = re.compile(
    r"(?:^|_)(?:path|file|filename|dir|directory|folder|cwd|workdir|notebook)s?$", re.IGNORECASE
)
#: Arguments whose description mentions files but that name no path (a name filter).
NOT_PATHS = {("grep", "include")}
FILE_WORDS = re.compile(r"\b(?:path|file|directory|folder|\.ipynb)", re.IGNORECASE)


@pytest.fixture(scope="module")
def shell():
    start_ipython()  # the process's one shell, as the other test files use it
    return get_ipython()


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A workspace holding links out, beside a folder (also the home directory) of secrets."""
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "keys.txt").write_text(f"{SECRET}\n")
    (outside / "keys.ipynb").write_text(
        json.dumps(
            {
                "cells": [{"cell_type": "code", "source": SECRET, "outputs": []}],
                "metadata": {},
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )
    monkeypatch.setenv("HOME", str(outside))
    root = tmp_path / "nb"
    (root / "sub").mkdir(parents=True)
    (root / "inner.txt").write_text("inside\n")
    (root / "link_out").symlink_to(outside)
    (root / "notes.ipynb").symlink_to(outside / "keys.ipynb")
    (root / "keys.txt").symlink_to(outside / "keys.txt")
    monkeypatch.chdir(root)  # as Jupyter starts a kernel: in the notebook's folder
    return root


def escapes(root: Path) -> list[str]:
    outside = root.parent / "private"
    return [
        "..",
        "../private/keys.ipynb",
        "sub/../../private/keys.txt",
        str(outside / "keys.ipynb"),  # absolute, outside
        str(outside),
        "/",
        "link_out",  # a symlinked directory
        "link_out/keys.ipynb",
        "notes.ipynb",  # a symlinked file
        "keys.txt",
        "~",
        "~/keys.ipynb",
        "inner.txt\x00.ipynb",  # NUL
        "inner\ud800.ipynb",  # a lone surrogate: no file name on disk
    ]


def path_arguments(tool: Tool) -> list[str]:
    properties = tool.spec.parameters.get("properties", {})
    return [name for name in properties if PATH_LIKE.search(name)]


def call_with(tool: Tool, argument: str, path: str) -> dict[str, Any]:
    """The tool's required arguments filled with harmless values, ``argument`` set to ``path``."""
    schema = tool.spec.parameters
    fillers = {"string": "word", "integer": 1, "number": 1, "boolean": False, "array": []}
    args = {
        name: fillers.get(schema["properties"][name].get("type"))
        for name in schema.get("required", ())
    }
    kind = schema["properties"][argument].get("type")
    args[argument] = [path] if kind == "array" else path
    return args


def all_tools(shell, root: Path) -> list[Tool]:
    return default_tools(shell, root, include=DEFAULT_TOOL_NAMES)


def test_path_taking_tools_are_found(shell, root):
    """Discovery finds today's path tools, and no argument that names a file escapes it."""
    tools = all_tools(shell, root)
    found = {tool.name for tool in tools if path_arguments(tool)}
    assert found >= {"view", "write", "edit", "glob", "grep", "ls", "notebook"}
    for tool in tools:
        for name, schema in tool.spec.parameters.get("properties", {}).items():
            described = FILE_WORDS.search(schema.get("description", ""))
            if described and not PATH_LIKE.search(name):
                assert (tool.name, name) in NOT_PATHS, (
                    f"{tool.name}.{name} reads like a path ({schema['description']!r}): "
                    "name it so PATH_LIKE matches, or list it in NOT_PATHS"
                )


async def test_every_path_taking_tool_refuses_every_escape(shell, root):
    outside = root.parent / "private"
    before = {p: p.read_bytes() for p in outside.iterdir()}
    refused = []
    for tool in all_tools(shell, root):
        for argument in path_arguments(tool):
            for path in escapes(root):
                args = call_with(tool, argument, path)
                result = await tool.run(args, CTX)
                where = f"{tool.name}({argument}={path!r})"
                assert result.is_error, f"{where} was not refused: {result.content[:300]}"
                assert f"the workspace {root}" in result.content, f"{where}: {result.content}"
                assert "\n" not in result.content, f"{where}: not one line: {result.content}"
                assert SECRET not in result.content + json.dumps(result.metadata), where
                refused.append(where)
    assert {p: p.read_bytes() for p in outside.iterdir()} == before  # nothing written there
    assert len(refused) >= 7 * len(escapes(root))


async def test_the_refusal_says_what_the_workspace_is(shell, root):
    tools = {tool.name: tool for tool in all_tools(shell, root)}
    result = await tools["notebook"].run({"path": "../private/keys.ipynb"}, CTX)
    assert result.content == (
        f"notebook: '../private/keys.ipynb' resolves (through a symlink or '..') to "
        f"{root.parent / 'private' / 'keys.ipynb'}, outside the workspace {root}, the one "
        "folder these tools may use; give a path inside it (relative paths start there)"
    )
