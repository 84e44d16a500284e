"""Fingerprints of %%crush turns: value digests by content, and what changed between two."""

from __future__ import annotations

import numpy as np
import pandas as pd

from jupyter_crush.kernel.fingerprint import Fingerprint, digest_value


def test_dataframes_are_digested_by_content_not_identity():
    df = pd.DataFrame({"city": ["Lyon", "Nice"], "price": [1.5, None]})
    assert digest_value(df) == digest_value(df.copy())
    changed = df.copy()
    changed.loc[1, "price"] = 2.0
    assert digest_value(changed) != digest_value(df)
    # Changes str(df) would not show: a renamed column, a dtype, a reordered index.
    assert digest_value(df.rename(columns={"price": "cost"})) != digest_value(df)
    assert digest_value(df.astype({"price": "float32"})) != digest_value(df)
    assert digest_value(df.set_axis([1, 0])) != digest_value(df)
    # A long frame prints truncated; a change in its hidden middle still counts.
    long = pd.DataFrame({"n": range(1000)})
    edited = long.copy()
    edited.loc[500, "n"] = -1
    assert str(long) == str(edited)
    assert digest_value(long) != digest_value(edited)
    assert digest_value(df["price"]) != digest_value(df["city"])


def test_plain_values_arrays_and_collections_have_digests():
    assert digest_value(3) != digest_value(3.0) != digest_value("3")
    assert digest_value({"a": 1, "b": [1, 2]}) == digest_value({"b": [1, 2], "a": 1})
    assert digest_value([1, 2]) != digest_value([2, 1])
    assert digest_value({1, 2}) == digest_value({2, 1})
    assert digest_value(np.arange(4)) == digest_value(np.arange(4))
    assert digest_value(np.arange(4)) != digest_value(np.arange(4).reshape(2, 2))


def test_what_cannot_be_told_is_none_not_a_guess():
    class Thing:
        def __str__(self) -> str:
            return "always the same text"

    assert digest_value(Thing()) is None
    assert digest_value([1, Thing()]) is None
    assert digest_value(np.array([object()])) is None
    assert digest_value(pd.DataFrame({"lists": [[1], [2]]})) is None  # unhashable cells


def fingerprint(values=None, template="Describe {df}", **overrides):
    fields = {
        "model": "openai:gpt-4o",
        "tools": ["python", "view"],
        "system": "You are helpful.",
        "previous": None,
    }
    fields.update(overrides)
    values = {"df": pd.DataFrame({"a": [1]})} if values is None else values
    return Fingerprint.of(template, f"Describe {values.get('df')}", values, **fields)


def test_same_question_same_key_and_changes_are_named():
    base = fingerprint()
    assert fingerprint().key == base.key
    assert Fingerprint.from_dict(base.to_dict()) == base

    changed = fingerprint({"df": pd.DataFrame({"a": [2]})})
    assert changed.key != base.key and changed.shape == base.shape
    assert changed.changes_from(base) == ["df changed"]

    other = fingerprint(model="anthropic:claude", previous="abc")
    assert other.shape != base.shape
    assert other.changes_from(base) == [
        "the model changed (openai:gpt-4o → anthropic:claude)",
        "an earlier turn of the session changed",
    ]
    assert fingerprint(template="Explain {df}").changes_from(base) == ["the prompt changed"]
    assert fingerprint(system="Other").changes_from(base) == [
        "the system prompt or context files changed"
    ]


def test_a_value_that_cannot_be_told_makes_the_fingerprint_uncertain():
    thing = object()
    uncertain = fingerprint({"df": thing})
    assert uncertain.uncertain == ["df"]
    assert uncertain.changes_from(fingerprint({"df": thing})) == ["can't tell whether df changed"]
