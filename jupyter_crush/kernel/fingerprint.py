"""What a ``%%crush`` turn asked: the fingerprint a recorded answer is replayed by.

A :class:`Fingerprint` digests everything that decides what the model is asked:

- ``template``: the cell's text before interpolation (a SHA-256);
- ``prompt``: the prompt after interpolation, with its attachments (a SHA-256);
- ``values``: each interpolated placeholder (``{df}``, ``{obj.attr}``, ``{Out[2]}``) with
  a digest of its *value*, by :func:`digest_value` — the prompt holds only ``str(value)``,
  which for a DataFrame is a truncated view of it;
- ``model``: ``provider:name``;
- ``tools``: the names of the tools offered, sorted;
- ``system``: the system prompt as sent, context files included (a SHA-256);
- ``previous``: the key of the session's previous turn asked in this kernel, so a chain
  of cells replays as a chain and a changed cell re-asks those after it too.

Two turns with the same :attr:`Fingerprint.key` asked the same question. A value whose
digest is ``None`` ("can't tell") makes the fingerprint :attr:`~Fingerprint.uncertain`:
it never matches, so such a turn is asked again rather than replayed on a guess.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: Digests are of the value's content, never of its identity or address.
_EXACT_TYPES = (str, bytes, int, float, complex, bool, type(None))
_COLLECTIONS = (list, tuple, set, frozenset, dict)


def digest_value(value: Any) -> str | None:
    """A stable digest of ``value``'s content, or None when it cannot be told.

    The rule: ``str``, ``bytes``, numbers, ``bool`` and ``None`` by type and ``repr``;
    pandas DataFrames, Series and Indexes by ``pandas.util.hash_pandas_object`` of their
    rows (index included) with their column names, dtypes and shape; numpy arrays by
    dtype, shape and bytes; lists, tuples, sets and dicts by the digests of their items
    (sets and dicts in a stable order). Anything else — an arbitrary object, a pandas
    object with unhashable cells, an object-dtype array — is None: its printed text may
    stay the same while what it stands for changes.
    """
    parts: list[str] = []
    return _sha(parts) if _describe(value, parts) else None


def _describe(value: Any, parts: list[str]) -> bool:
    kind = type(value)
    parts.append(f"{kind.__module__}.{kind.__qualname__}")
    if isinstance(value, _EXACT_TYPES):
        parts.append(repr(value))
        return True
    if isinstance(value, _COLLECTIONS):
        items: Iterable[Any] = value.items() if isinstance(value, dict) else value
        digests = [digest_value(item) for item in items]
        if None in digests:
            return False
        if not isinstance(value, (list, tuple)):
            digests.sort()  # sets and dicts: equal whatever their order
        parts.extend(digests)  # type: ignore[arg-type]
        return True
    module = kind.__module__.partition(".")[0]
    if module == "pandas":
        return _describe_pandas(value, parts)
    if module == "numpy" and hasattr(value, "dtype") and hasattr(value, "tobytes"):
        if value.dtype.hasobject:
            return False
        parts += [str(value.dtype), repr(getattr(value, "shape", ())), value.tobytes().hex()]
        return True
    return False


def _describe_pandas(value: Any, parts: list[str]) -> bool:
    import pandas as pd

    if not isinstance(value, (pd.DataFrame, pd.Series, pd.Index)):
        return False
    try:
        rows = pd.util.hash_pandas_object(value, index=not isinstance(value, pd.Index))
    except TypeError:  # unhashable cells (lists, dicts)
        return False
    parts.append(rows.to_numpy().tobytes().hex())
    if isinstance(value, pd.DataFrame):
        parts += [repr(list(value.columns)), repr([str(t) for t in value.dtypes])]
    else:
        parts += [repr(value.name), str(value.dtype)]
    parts.append(repr(value.shape))
    return True


def digest_text(text: str) -> str:
    return _sha([text])


def _sha(parts: list[str]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode("utf-8", "surrogatepass"))
        hasher.update(b"\0")
    return hasher.hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """What one turn asked; see the module docstring for each field."""

    template: str
    prompt: str
    values: dict[str, str | None] = field(default_factory=dict)
    model: str = ""
    tools: tuple[str, ...] = ()
    system: str = ""
    previous: str | None = None

    @classmethod
    def of(
        cls,
        template: str,
        prompt: str,
        values: Mapping[str, Any],
        *,
        model: str,
        tools: Iterable[str],
        system: str | None,
        previous: str | None,
    ) -> Fingerprint:
        """The fingerprint of a turn asking ``prompt`` (as sent): ``template`` with
        ``values`` filled in."""
        return cls(
            template=digest_text(template),
            prompt=digest_text(prompt),
            values={name: digest_value(value) for name, value in values.items()},
            model=model,
            tools=tuple(sorted(tools)),
            system=digest_text(system or ""),
            previous=previous,
        )

    @property
    def uncertain(self) -> list[str]:
        """The placeholders whose values cannot be told apart ("can't tell")."""
        return [name for name, digest in self.values.items() if digest is None]

    @property
    def key(self) -> str:
        """Equal for two turns that asked the same question."""
        return _sha([json.dumps(self._identity(), sort_keys=True)])

    @property
    def shape(self) -> str:
        """Equal for two turns that differ at most in their interpolated values."""
        identity = self._identity()
        identity["values"] = sorted(self.values)
        del identity["prompt"]  # the values, printed
        return _sha([json.dumps(identity, sort_keys=True)])

    def _identity(self) -> dict[str, Any]:
        data = asdict(self)
        data["tools"] = list(self.tools)
        return data

    def changes_from(self, recorded: Fingerprint) -> list[str]:
        """What differs from ``recorded``, in words: "df changed", "the prompt changed"."""
        changes = []
        for name in sorted(set(self.values) | set(recorded.values)):
            if name in self.values and self.values[name] is None:
                changes.append(f"can't tell whether {name} changed")
            elif self.values.get(name) != recorded.values.get(name):
                changes.append(f"{name} changed")
        if self.template != recorded.template:
            changes.append("the prompt changed")
        if self.model != recorded.model:
            changes.append(f"the model changed ({recorded.model} → {self.model})")
        if self.tools != recorded.tools:
            changes.append("the tools changed")
        if self.system != recorded.system:
            changes.append("the system prompt or context files changed")
        if self.previous != recorded.previous:
            changes.append("an earlier turn of the session changed")
        return changes

    def to_dict(self) -> dict[str, Any]:
        return {**self._identity(), "key": self.key, "shape": self.shape}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fingerprint:
        return cls(
            template=data["template"],
            prompt=data["prompt"],
            values=dict(data.get("values", {})),
            model=data.get("model", ""),
            tools=tuple(data.get("tools", ())),
            system=data.get("system", ""),
            previous=data.get("previous"),
        )
