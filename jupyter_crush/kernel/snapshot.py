"""The names code can change, and what they held before it ran, so that a turn can be undone.

:func:`touched_names` reads the code's syntax tree: names it assigns, deletes, augments,
imports or declares ``global``, and names used as the base of an attribute, subscript or
method call (``df.drop(..., inplace=True)``, ``rows[0] = …``, ``items.append(…)``), whose
object may be changed in place. A name only passed to a function (``random.shuffle(items)``)
is not seen.

:class:`NameSnapshot` keeps a name's previous binding (or its absence) and, for an object
that can be changed in place, a copy when the object is a kind undo knows how to copy and put
back within the copy budget: pandas DataFrames, Series and Indexes (a shallow copy where
pandas copies on write, pandas ≥ 3 or ``mode.copy_on_write``; a deep copy otherwise), numpy
arrays, and lists, dicts, sets and bytearrays of plain values (deep-copied). Its size is
measured without walking the data where the object tells it (``memory_usage(deep=False)``,
``nbytes``). Immutable values (numbers, strings, tuples of them), modules, functions and
classes need no copy: their binding is all that can change. Anything else (an open file, a
connection, a model on a GPU) is kept by reference only, and undo names it as not restored
when it cannot tell that it is unchanged.
"""

from __future__ import annotations

import ast
import copy
import sys
import types
from dataclasses import dataclass
from typing import Any

from ..core.output import format_size

#: Values that cannot change in place: a name bound to one changes only by rebinding.
_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), range, frozenset)
#: Objects changed in place only through attributes no undo should put back.
_NOT_TRACKED = (
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    type,
)
_PLAIN_CONTAINERS = (list, dict, set, bytearray, tuple)


def touched_names(source: str) -> set[str]:
    """The names ``source`` (Python, or a cell's IPython syntax) can rebind or change in
    place; empty when it does not parse (it will fail before touching anything)."""
    tree = _parse(source)
    if tree is None:
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name != "*":
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.Global):
            names.update(node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute | ast.Subscript):
            base = _base_name(node)
            if base is not None:
                names.add(base)
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            names.add(node.name)
    return names


def _parse(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        pass
    from IPython.core.inputtransformer2 import TransformerManager

    try:  # %magics and !commands, as the shell runs them
        return ast.parse(TransformerManager().transform_cell(source))
    except (SyntaxError, ValueError):
        return None


def _base_name(node: ast.expr) -> str | None:
    """``df`` of ``df.a.b``, ``df["a"][0]`` or ``df.loc[0].fillna()``."""
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


@dataclass
class NameSnapshot:
    """One name as it was before the turn's code first touched it."""

    name: str
    present: bool
    value: Any = None
    #: A copy of ``value``'s content to put back (None: not needed, or not kept).
    saved: Any = None
    kept: bool = False
    #: Why ``value``'s content was not kept although it may change in place ("" if kept or
    #: not needed).
    not_kept: str = ""

    def binding_changed(self, namespace: dict[str, Any]) -> bool:
        if self.name not in namespace:
            return self.present
        return not self.present or namespace[self.name] is not self.value

    def content_changed(self) -> bool:
        """Whether ``value`` differs from the copy kept (False when none was kept)."""
        return self.kept and not _same_content(self.value, self.saved)


def snapshot(namespace: dict[str, Any], name: str, budget: int) -> NameSnapshot:
    """The binding of ``name`` in ``namespace`` and, within ``budget`` bytes, a copy of what
    can change in place."""
    if name not in namespace:
        return NameSnapshot(name, present=False)
    value = namespace[name]
    shot = NameSnapshot(name, present=True, value=value)
    kind = _copy_kind(value)
    if kind is None:
        return shot
    size = _size(value, kind, budget)
    if size is None:
        shot.not_kept = f"{_type_name(value)}: undo cannot copy it"
    elif size > budget:
        shot.not_kept = (
            f"{_type_name(value)}, {format_size(size)}: over the "
            f"{format_size(budget)} undo copy limit"
        )
    else:
        shot.saved = _copy(value, kind)
        shot.kept = True
    return shot


def restore_content(value: Any, saved: Any) -> Any:
    """Put ``saved``'s content back into ``value``, in place where the type allows; returns
    the object the name should be bound to (``value`` itself, or ``saved`` when the object
    cannot take its old content back, such as an array of another shape)."""
    if isinstance(value, list | bytearray):
        value[:] = saved
        return value
    if isinstance(value, dict | set):
        value.clear()
        value.update(saved)
        return value
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(value, pandas.DataFrame | pandas.Series):
        # What pandas' own inplace=True operations do: swap in the other frame's data and
        # reset the caches, so every reference to this frame sees the restored data.
        value._update_inplace(saved.copy(deep=not _copies_on_write(pandas)))
        value.attrs = copy.deepcopy(saved.attrs)
        return value
    numpy = sys.modules.get("numpy")
    if (
        numpy is not None
        and isinstance(value, numpy.ndarray)
        and value.shape == saved.shape
        and value.dtype == saved.dtype
        and value.flags.writeable
    ):
        numpy.copyto(value, saved)
        return value
    return saved  # an Index, a tuple, an array of another shape: the old object itself


def _copy_kind(value: Any) -> str | None:
    """How ``value`` is copied: "pandas", "numpy", "plain"; None when it cannot change in
    place (or only through attributes undo leaves alone). "other" for everything else."""
    if isinstance(value, (*_IMMUTABLE, *_NOT_TRACKED)):
        return None
    if isinstance(value, tuple) and all(isinstance(item, _IMMUTABLE) for item in value):
        return None
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(value, pandas.DataFrame | pandas.Series | pandas.Index):
        return "pandas"
    numpy = sys.modules.get("numpy")
    if numpy is not None and type(value) is numpy.ndarray:
        return "numpy"
    if isinstance(value, _PLAIN_CONTAINERS):
        return "plain"
    return "other"


def _size(value: Any, kind: str, budget: int) -> int | None:
    """Bytes a copy of ``value`` takes (stopping once past ``budget``); None: no copy."""
    if kind == "pandas":
        usage = value.memory_usage(deep=False)
        return int(usage.sum()) if hasattr(usage, "sum") else int(usage)
    if kind == "numpy":
        return None if value.dtype.hasobject else int(value.nbytes)
    if kind == "plain":
        return _plain_size(value, budget)
    return None


def _plain_size(value: Any, budget: int) -> int | None:
    """Bytes of nested plain containers, counted until past ``budget``; None when they hold
    anything else (undo cannot tell what copying it would take)."""
    total = 0
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if total > budget:
            return total
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | set | tuple | frozenset):
            stack.extend(item)
        elif not isinstance(item, (*_IMMUTABLE, bytearray)):
            return None
    return total


def _copy(value: Any, kind: str) -> Any:
    if kind == "pandas":
        pandas = sys.modules["pandas"]
        # With copy-on-write a shallow copy is a snapshot: pandas copies the data only if
        # the code then writes to it.
        return value.copy(deep=not _copies_on_write(pandas))
    if kind == "numpy":
        return value.copy()
    return copy.deepcopy(value)


def _copies_on_write(pandas: Any) -> bool:
    try:
        major = int(pandas.__version__.split(".")[0])
    except ValueError:
        major = 0
    return major >= 3 or pandas.options.mode.copy_on_write is True


def _same_content(value: Any, saved: Any) -> bool:
    pandas = sys.modules.get("pandas")
    try:
        if pandas is not None and isinstance(value, pandas.DataFrame | pandas.Series):
            return bool(
                type(value) is type(saved)
                and value.equals(saved)
                and _same_labels(value, saved)
                and value.attrs == saved.attrs
            )
        if pandas is not None and isinstance(value, pandas.Index):
            return bool(value.equals(saved) and value.names == saved.names)
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(value, numpy.ndarray):
            return bool(
                value.shape == saved.shape
                and value.dtype == saved.dtype
                and numpy.array_equal(value, saved, equal_nan=value.dtype.kind in "fc")
            )
        return bool(type(value) is type(saved) and value == saved)
    except Exception:  # a comparison that fails cannot show the content is unchanged
        return False


def _same_labels(value: Any, saved: Any) -> bool:
    """``equals`` ignores the labels' names and a frame's dtypes of equal values."""
    if not value.index.equals(saved.index) or value.index.names != saved.index.names:
        return False
    if hasattr(value, "columns"):
        return bool(
            value.columns.equals(saved.columns)
            and value.columns.names == saved.columns.names
            and value.dtypes.equals(saved.dtypes)
        )
    return bool(value.name == saved.name and value.dtype == saved.dtype)


def _type_name(value: Any) -> str:
    cls = type(value)
    module = cls.__module__.split(".")[0]
    return cls.__name__ if module == "builtins" else f"{module}.{cls.__name__}"
