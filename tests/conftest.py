from __future__ import annotations

import asyncio
import gc
import re
import sys
import weakref
from pathlib import Path

import pytest

import jupyter_crush
from jupyter_crush import TranscriptStore

#: The tasks jupyter_crush starts: a turn (dispatch.py), a cell's run (crush.py), a title
#: request (titles.py). One a test leaves pending is run by no one again: the garbage
#: collector closes its coroutine mid-step, later, in whichever test is running then.
CRUSH_TASK = re.compile(r"crush:|crush-cell:|crush-title$")
PACKAGE_DIR = str(Path(jupyter_crush.__file__).parent)
#: Unraisable exceptions (sys.unraisablehook) of jupyter_crush code since the last check.
crush_unraisables: list[str] = []


@pytest.hookimpl(trylast=True)  # after pytest's unraisableexception plugin set its hook
def pytest_configure(config):
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if _from_crush(unraisable):
            error = f"{unraisable.exc_type.__name__}: {unraisable.exc_value}"
            crush_unraisables.append(
                f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r} ({error})"
            )
        previous(unraisable)

    sys.unraisablehook = hook


def _from_crush(unraisable) -> bool:
    """Whether the exception was raised in jupyter_crush code, or its object is ours."""
    code = getattr(unraisable.object, "cr_code", None) or getattr(
        unraisable.object, "ag_code", None
    )
    if code is not None and code.co_filename.startswith(PACKAGE_DIR):
        return True
    trace = unraisable.exc_traceback
    while trace is not None:
        if trace.tb_frame.f_code.co_filename.startswith(PACKAGE_DIR):
            return True
        trace = trace.tb_next
    return False


@pytest.fixture(autouse=True)
def _no_crush_task_left_behind():
    """Fails a test that leaves a jupyter_crush task pending once its fixtures are torn
    down (loops closed, extensions unloaded), or whose crush code raised an unraisable
    exception (an exception in a finalizer, a coroutine closed by the garbage collector).

    A task counts as left pending while its coroutine can still run: a test that abandons
    a loop closes the coroutines of its tasks (interleavings.abandon_tasks).
    """
    started: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()
    counted = 0  # tasks started, including those the garbage collector already took
    create_task = asyncio.BaseEventLoop.create_task

    def tracked(loop, coro, **options):
        nonlocal counted
        task = create_task(loop, coro, **options)
        if CRUSH_TASK.match(task.get_name()):
            started.add(task)
            counted += 1
        return task

    # Not monkeypatch: this fixture is set up first and torn down last, and a monkeypatch
    # it requested would undo the test's own patches only after every other teardown.
    asyncio.BaseEventLoop.create_task = tracked
    crush_unraisables.clear()
    try:
        yield
    finally:
        asyncio.BaseEventLoop.create_task = create_task
    pending = sorted(
        task.get_name()
        for task in started
        if not task.done() and task.get_coro().cr_frame is not None
    )
    if counted:
        gc.collect()  # a task dropped pending is closed now, in this test, not a later one
    problems = [f"task {name} left pending" for name in pending] + crush_unraisables
    crush_unraisables.clear()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def process_shell():
    """The test process's one IPython shell, started on first use.

    IPython allows one shell per process: a test that made an ``InteractiveShell`` of its own
    would make every later test that starts this one fail with ``MultipleInstanceError``, so
    the outcome would depend on which test files ran first. Every test takes this one.
    """
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    start_ipython()  # once per process; later calls return None
    return get_ipython()


@pytest.fixture(name="shell")
def shell_fixture():
    """The process's IPython shell, without the extension (see :func:`process_shell`)."""
    return process_shell()


@pytest.fixture
def ip(tmp_path, monkeypatch):
    """The test process's IPython with the extension loaded, fresh for each test."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("CRUSH_MODEL", raising=False)
    monkeypatch.setenv("CRUSH_DATA_DIR", str(tmp_path / "store"))
    shell = process_shell()
    # Tests read a cell's error from its result. The default traceback reads the whole
    # source of every frame's file, seconds per frame for mutation testing's mutated copies
    # of the package (tens of thousands of lines): print the plain one.
    traceback_mode = shell.InteractiveTB.mode
    shell.InteractiveTB.set_mode("Plain")
    shell.run_line_magic("load_ext", "jupyter_crush")
    yield shell
    shell.InteractiveTB.set_mode(traceback_mode)
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


@pytest.fixture
def openai_server():
    """A local OpenAI-compatible server answering with a recorded real stream."""
    from support.replay_server import recording_steps, serving

    recording = Path(jupyter_crush.__file__).parent / "recordings"
    steps = recording_steps(recording / "OpenAICommon--openai-gpt-4o--simple_streaming.yaml")
    with serving(steps) as server:
        yield server
