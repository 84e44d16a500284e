"""``%crush fix`` and ``%%crush --fix`` on an InteractiveShell with a ScriptedModel that
records each request. The real kernel (NameError, a KeyError in pandas) is in
test_notebook_kernel.py."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from test_magics import messages, run

from jupyter_crush.testing import ScriptedModel

FIXED = "You misspelled `total`.\n\n```python\nresult = total * 2\n```"


def fail(ip, source: str) -> None:
    ip.InteractiveTB.set_mode("Context")  # the traceback a notebook shows by default
    result = ip.run_cell(source, store_history=True)
    assert result.error_in_exec is not None


def attachment_of(model: ScriptedModel) -> str:
    text = model.requests[-1].messages[-1].text
    assert '<attachment name="error">' in text
    return text


def test_fix_attaches_the_last_error_and_asks_for_a_fix(ip, crush, capsys):
    model = ScriptedModel([FIXED])
    crush.use_model(model)
    fail(ip, "total = 21\nresult = totl * 2")
    run(ip, "%crush fix")
    text = attachment_of(model)
    assert text.startswith("Fix the error in my notebook")
    assert "Failing cell (In [" in text
    assert "total = 21\nresult = totl * 2" in text
    assert "Exception: NameError: name 'totl' is not defined" in text
    # IPython's own traceback, with the failing line, without colour codes.
    assert "----> 2 result = totl * 2" in text and "\x1b[" not in text
    stored = messages(crush)
    assert [str(m.role) for m in stored] == ["user", "assistant"]
    assert stored[1].text == FIXED
    # Without a current session the fix starts one named for what it fixes.
    assert crush.store.get_session(crush.current_session_id).title == "fix NameError"


def test_without_an_error_nothing_is_sent(ip, crush, capsys):
    model = ScriptedModel(["unused"])
    crush.use_model(model)
    run(ip, "%crush fix")
    assert capsys.readouterr().out.strip() == (
        "No recent error to fix: run the failing cell, then %crush fix."
    )
    assert model.requests == []
    # A %crush line's own usage error is not the user's code to fix.
    with pytest.raises(UsageError):
        run(ip, "%crush nonsense")
    run(ip, "%crush fix")
    assert model.requests == []


def test_instruction_and_code_format_put_the_fix_in_a_new_cell(ip, crush):
    model = ScriptedModel([FIXED, FIXED])
    crush.use_model(model)
    fail(ip, "result = totl * 2")
    run(ip, "%crush fix -f code keep it short")
    text = attachment_of(model)
    assert "single ```python block" in text and "\n\nkeep it short\n" in text
    assert ip.rl_next_input == "result = total * 2"  # no extension: IPython's payload

    ip.rl_next_input = None
    run(ip, "%%crush --fix -f code\nuse a helper function")
    text = attachment_of(model)
    assert "use a helper function" in text and "result = totl * 2" in text
    assert ip.rl_next_input == "result = total * 2"


def test_bad_fix_options_are_a_usage_error(ip, crush):
    with pytest.raises(UsageError, match="%crush fix: argument -f/--format: invalid choice"):
        run(ip, "%crush fix -f yaml")


def test_fix_is_an_ordinary_prompt_of_the_current_session(ip, crush):
    model = ScriptedModel(["First answer.", FIXED])
    crush.use_model(model)
    run(ip, "%%crush -s work\nhello")
    fail(ip, "1 / 0")
    run(ip, "%crush fix")
    stored = messages(crush)
    assert [m.text.split("\n")[0] for m in stored if str(m.role) == "user"] == [
        "hello",
        "Fix the error in my notebook: the failing cell, the exception and its traceback are "
        "attached. Say in a sentence or two what caused it, then give the corrected cell.",
    ]
    assert "ZeroDivisionError: division by zero" in stored[2].text
    # The second request carries the first turn too: same session.
    assert [m.text for m in model.requests[1].messages][:2] == ["hello", "First answer."]
