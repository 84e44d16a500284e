"""Prompt interpolation: placeholders resolve, every other brace survives."""

from __future__ import annotations

import json
import string

from hypothesis import given
from hypothesis import strategies as st

from jupyter_crush.kernel.interpolate import interpolate


class Frame:
    shape = (3, 2)

    @property
    def broken(self) -> str:
        raise RuntimeError("property failed")


NS = {
    "name": "prices.csv",
    "n": 42,
    "df": Frame(),
    "In": ["", "x = 1", "df.describe()"],
    "Out": {2: "described"},
}


def test_names_attributes_and_history_resolve():
    text = "Load {name} ({n} rows, shape {df.shape}); cell 1 was `{In[1]}`, out 2 {Out[2]}"
    assert interpolate(text, NS) == (
        "Load prices.csv (42 rows, shape (3, 2)); cell 1 was `x = 1`, out 2 described"
    )


def test_unresolved_placeholders_stay_verbatim():
    text = "{missing} {df.nope} {df.broken} {In[9]} {Out[7]} {Out[-99]}"
    assert interpolate(text, NS) == text


def test_code_json_and_fstrings_survive():
    code = 'd = {"a": {"b": 1}}\nprint(f"{d!r:>10}")\nfn = lambda: {x: 1 for x in y}\n'
    assert interpolate(code, NS) == code
    payload = json.dumps({"n": {"name": [1, {}]}})
    assert interpolate(payload, NS) == payload
    latex = r"\frac{a}{b} + x^{2}"
    assert interpolate(latex, {}) == latex


def test_double_braces_escape():
    assert interpolate("{{name}} is literal, {name} is not", NS) == (
        "{name} is literal, prices.csv is not"
    )
    assert interpolate("a {{ b", NS) == "a { b"


def test_whitespace_inside_placeholder_is_allowed():
    assert interpolate("{ n }", NS) == "42"


def test_broken_str_falls_back_to_repr():
    class Odd:
        def __str__(self) -> str:
            raise ValueError("no")

        def __repr__(self) -> str:
            return "<odd>"

    assert interpolate("{o}", {"o": Odd()}) == "<odd>"


def test_values_are_redacted_of_known_secrets(monkeypatch):
    """Whichever way a value becomes text: a string, str(), repr() after a broken str, or
    the text a renderer (an attached figure's) claims it with."""
    monkeypatch.setenv("EXAMPLE_TOKEN", "tok-5e8a1c3f9b")

    class Broken:
        def __str__(self) -> str:
            raise ValueError("no")

        def __repr__(self) -> str:
            return "<client tok-5e8a1c3f9b>"

    ns = {"s": "tok-5e8a1c3f9b", "d": {"token": "tok-5e8a1c3f9b"}, "b": Broken()}
    assert interpolate("{s} {d} {b}", ns) == (
        "[redacted] {'token': '[redacted]'} <client [redacted]>"
    )
    assert interpolate("{d}", ns, lambda _, value: f"figure of {value}") == (
        "figure of {'token': '[redacted]'}"
    )


braces_text = st.text(alphabet=string.printable + "{}{}{}{}é", max_size=200)


@given(braces_text)
def test_never_raises(text):
    interpolate(text, NS)


@given(braces_text)
def test_text_without_double_braces_or_names_is_unchanged(text):
    # With an empty namespace nothing resolves; only the {{ escape may change the text.
    if "{{" not in text:
        assert interpolate(text, {}) == text


@given(st.dictionaries(st.text(max_size=5), st.integers(), max_size=4))
def test_dict_literals_unchanged(data):
    text = repr(data)
    if "{{" not in text:
        assert interpolate(text, NS) == text
