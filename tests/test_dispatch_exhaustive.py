"""Every interleaving of bounded scenarios keeps the dispatch invariants.

The checker (tests/support/interleavings.py) drives the real agent on a loop it controls, preempts
the loop's thread wherever another thread could act, holds cross-thread cancel deliveries
and releases them as separate actions, answers permission prompts with Allow (a Stop may
land between the answer and the tool's start), lets tools absorb cancellation and store
writes fail, and enumerates every action sequence with state memoisation. Quick bounds run
by default; the full bounds are marked slow.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.interleavings import HarnessError, Scenario, Violation, World, explore

import jupyter_crush.agent.dispatch as dispatch
import jupyter_crush.agent.session as agent

QUICK = {
    "1 session x 2 prompts x 1 cancel (either thread)": Scenario(prompts=(2,), cancels=1),
    "absorbing tool, 2 prompts x 1 cancel": Scenario(
        prompts=(2,), cancels=1, absorbing_tool=True, loop_cancels=False
    ),
    "2 prompts, 2 failing writes": Scenario(prompts=(2,), cancels=0, store_failures=2),
    "permission prompts answered Allow, 2 prompts x 1 cancel": Scenario(
        prompts=(2,), cancels=1, permission=True
    ),
}

FULL = {
    "1 session x 2 prompts x 2 cancels (either thread, held)": Scenario(prompts=(2,), cancels=2),
    "1 session x 3 prompts x 2 cancels (either thread, held)": Scenario(prompts=(3,), cancels=2),
    "2 sessions x 1 prompt, 1 cancel, one store": Scenario(prompts=(1, 1), cancels=1),
    "permission prompts answered Allow, 2 prompts x 2 cancels (either thread, held)": Scenario(
        prompts=(2,), cancels=2, permission=True
    ),
}


def run(scenario: Scenario, capsys) -> None:
    report = explore(scenario)
    with capsys.disabled():
        print(f"\n{report}")
    assert report.leaves and report.interleavings >= report.leaves


@pytest.mark.parametrize("scenario", QUICK.values(), ids=QUICK.keys())
def test_every_interleaving_keeps_the_invariants(scenario, capsys):
    run(scenario, capsys)


EXPLORE_AND_PRINT = """
from support.interleavings import Scenario, explore
report = explore({scenario!r})
assert report.leaves and report.interleavings >= report.leaves, report
print(report)
"""


@pytest.mark.slow
@pytest.mark.parametrize("scenario", FULL.values(), ids=FULL.keys())
def test_every_interleaving_of_the_full_bounds_keeps_the_invariants(scenario, capsys):
    """Each full bound explores in a fresh interpreter. Its 10^4 to 10^5 replays must each
    follow their recording exactly, and after the rest of the suite in one process a replay
    of the largest bound once reached another state than its recording: what earlier tests
    leave in the process can reach the code under test. A fresh interpreter keeps the
    replays deterministic; the replay check still stops the exploration if one is not."""
    explored = subprocess.run(
        [sys.executable, "-c", EXPLORE_AND_PRINT.format(scenario=scenario)],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
    )
    with capsys.disabled():
        print(f"\n{explored.stdout.strip()}")
    assert explored.returncode == 0, explored.stderr[-8000:]


def test_the_checker_finds_a_fold_into_a_covered_turn(monkeypatch):
    """The checker is not vacuous: put back the fold that ignored the cancel mark."""

    def fold_regardless(self, turn):
        with turn.state.lock:
            folded = list(turn.state.queue)
            turn.state.queue.clear()
        return folded

    monkeypatch.setattr(dispatch.Dispatcher, "fold", fold_regardless)
    with pytest.raises(Violation, match="accepted after every cancel, canceled"):
        explore(Scenario(prompts=(2,), cancels=1, loop_cancels=False))


def test_the_checker_finds_a_lost_cancel(monkeypatch):
    """... and a starter that forgets the cancel that found no task yet."""
    real_start = dispatch.Dispatcher._start

    def start_forgetting_the_mark(self, turn):
        mark = turn.state.cancel_mark
        real_start(self, turn)
        if turn.task is not None and turn.seq <= turn.state.cancel_mark and mark < turn.seq:
            turn.task.uncancel()

    monkeypatch.setattr(dispatch.Dispatcher, "_start", start_forgetting_the_mark)
    with pytest.raises(Violation):
        explore(Scenario(prompts=(1,), cancels=1, replies=("tool",)))


def skip_stop_check_in(function: str, before: str = ""):
    """agent.py's stop_if_covered, but for the check in ``function`` (the one before its
    local ``before`` is set): that check taken out."""

    def stop_if_covered(turn):
        caller = sys._getframe(1)
        if caller.f_code.co_name != function or before in caller.f_locals:
            dispatch.stop_if_covered(turn)

    return stop_if_covered


def test_the_checker_finds_a_tool_started_after_stop_after_allow(monkeypatch):
    """... and a tool started for a Stop that landed between the user's Allow and the tool."""
    monkeypatch.setattr(agent, "stop_if_covered", skip_stop_check_in("_call_tool"))
    with pytest.raises(Violation, match="a tool started for prompt 0, which a cancel covers"):
        explore(Scenario(prompts=(1,), cancels=1, permission=True, loop_cancels=False))


def test_the_checker_finds_a_request_started_for_a_covered_turn(monkeypatch):
    """... and a model request sent after a Stop that landed while the turn wrote a record."""
    monkeypatch.setattr(agent, "stop_if_covered", skip_stop_check_in("_stream_step", "stream"))
    scenario = Scenario(prompts=(1,), cancels=1, store_failures=1, loop_cancels=False)
    with pytest.raises(Violation, match="a model request started for prompt 0, which a cancel"):
        explore(scenario)


def test_a_replay_that_leaves_its_recorded_path_is_a_harness_error(monkeypatch):
    """The checker is honest about itself: code that takes one more lock section when first
    run than in its replays (as a finalizer or a warming cache could make it) stops the
    exploration with the trace, rather than resuming the loop's thread with a command meant
    for another point, or passing."""
    real_enter = dispatch.Dispatcher.enter
    first = True

    def enter_locking_once_more_the_first_time(self, turn, accepted):
        nonlocal first
        if first:
            first = False
            with turn.state.lock:
                pass
        return real_enter(self, turn, accepted)

    monkeypatch.setattr(dispatch.Dispatcher, "enter", enter_locking_once_more_the_first_time)
    with pytest.raises(HarnessError, match="the replay left its recorded path at action"):
        explore(Scenario(prompts=(2,), cancels=0))


def test_the_loop_thread_takes_only_a_resume_for_its_own_point():
    world = World(Scenario())
    try:
        with pytest.raises(HarnessError, match="'go' is not enabled at idle"):
            world.do("go")
        with pytest.raises(HarnessError, match=r"parked at idle .* was resumed with 'go'"):
            world.loop_thread.switch("go")
    finally:
        world.close()
