"""The ``variables`` tool: what is defined in the user's namespace, read-only.

It never evaluates an expression (that is the ``python`` tool's job, behind a
permission prompt): ``name`` must be a plain identifier. Descriptions call the
object's own ``len``/``shape``/``repr``, bounded: containers are shown through
``reprlib`` limits, strings are sliced before ``repr``, and pandas objects are
summarized (dtypes, head, null counts, ``describe()``) instead of printed.
pandas and numpy are never imported here; an object is recognized by its
module, so a kernel without them pays nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import reprlib
import sys
import types
from dataclasses import dataclass
from typing import Any

from ..core.model import ToolSpec
from ..core.output import MAX_OUTPUT_CHARS, clean, format_size, truncate
from ..core.tools import Tool, ToolContext, ToolResult

LIST_DEFAULT = 100
LIST_MAX = 1000
_REPR_CHARS = 2_000
_TABLE_COLUMNS = 60
_HEAD_ROWS = 5

#: Names IPython itself puts in the namespace.
_IPYTHON_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython"})

DESCRIPTION = """\
Inspect the variables in the user's notebook namespace without running code. Without \
`name`: a table of user variables (name, type, shape or length, dtype, memory); modules, \
functions and classes are left out unless include_callables is true. With `name`: a \
description of that one variable; a pandas DataFrame shows its columns, dtypes, null \
counts, first rows and describe(). Use this before writing code that uses the user's data."""

_short_repr = reprlib.Repr()
_short_repr.maxstring = 200
_short_repr.maxother = 200
_short_repr.maxlist = _short_repr.maxtuple = _short_repr.maxset = 10
_short_repr.maxdict = 10
_short_repr.maxlevel = 3


@dataclass
class VariablesTool:
    shell: Any
    limit: int = MAX_OUTPUT_CHARS

    def tool(self) -> Tool:
        spec = ToolSpec(
            name="variables",
            description=DESCRIPTION,
            parameters={
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": "A variable to describe."},
                    "include_callables": {
                        "type": "boolean",
                        "description": "Also list functions, classes and modules.",
                    },
                    "limit": {"type": "integer", "description": "Most variables to list."},
                },
                "additionalProperties": False,
            },
        )
        return Tool(spec=spec, run=self.run)

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        if self.shell is None:
            return ToolResult("variables: no notebook kernel is attached to this agent", True)
        name = args.get("name")
        include_callables = args.get("include_callables", False)
        limit = args.get("limit", LIST_DEFAULT)
        if name is not None and (not isinstance(name, str) or not name.isidentifier()):
            return ToolResult(
                "variables: 'name' must be a variable name such as 'df' (no expressions; "
                "use the python tool to evaluate one)",
                True,
            )
        if not isinstance(include_callables, bool):
            return ToolResult("variables: 'include_callables' must be true or false", True)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            return ToolResult("variables: 'limit' must be a positive integer", True)
        # Off the loop: describe() of a large frame takes a while.
        if name:
            return await asyncio.to_thread(self._describe, name)
        return await asyncio.to_thread(self._list, include_callables, min(limit, LIST_MAX))

    # -- listing --

    def user_variables(self, include_callables: bool = False) -> dict[str, Any]:
        ns = self.shell.user_ns
        hidden = getattr(self.shell, "user_ns_hidden", {})
        found = {}
        for name, value in list(ns.items()):
            if name.startswith("_") or name in _IPYTHON_NAMES:
                continue
            if name in hidden and hidden[name] is value:
                continue  # put there by IPython at startup, not by the user
            if not include_callables and _is_callable_like(value):
                continue
            found[name] = value
        return found

    def _list(self, include_callables: bool, limit: int) -> ToolResult:
        found = self.user_variables(include_callables)
        if not found:
            return ToolResult("No user variables are defined.")
        rows = [("name", "type", "shape/len", "dtype", "memory")]
        for name in sorted(found)[:limit]:
            value = found[name]
            rows.append(
                (name, _type_name(value), _shape(value), _dtype(value), _memory(value, deep=False))
            )
        text = _table(rows)
        if len(found) > limit:
            text += f"\n[{len(found) - limit} more variables not shown; raise limit]"
        return ToolResult(clean(text, self.limit), metadata={"count": len(found)})

    # -- one variable --

    def _describe(self, name: str) -> ToolResult:
        ns = self.shell.user_ns
        if name not in ns:
            close = [n for n in self.user_variables(True) if n.lower() == name.lower()]
            hint = f" (did you mean {close[0]!r}?)" if close else "; list them without a name"
            return ToolResult(f"variables: {name!r} is not defined{hint}", True)
        value = ns[name]
        lines = [f"{name}: {_type_name(value)}"]
        kind = _kind(value)
        try:
            if kind == "DataFrame":
                lines += _describe_frame(value)
            elif kind == "Series":
                lines += _describe_series(value)
            elif kind == "ndarray":
                lines += _describe_array(value)
            elif _is_callable_like(value):
                lines += _describe_callable(value)
            else:
                lines += _describe_object(value)
        except Exception as exc:  # the object's own methods may fail; say so, don't crash
            lines.append(f"(could not describe it fully: {type(exc).__name__}: {exc})")
        return ToolResult(clean("\n".join(lines), self.limit), metadata={"name": name})


# -- helpers -------------------------------------------------------------------------


def _kind(value: Any) -> str:
    cls = type(value)
    package = (cls.__module__ or "").split(".")[0]
    if package == "pandas" and cls.__name__ in ("DataFrame", "Series"):
        return cls.__name__
    if package == "numpy" and cls.__name__ == "ndarray":
        return "ndarray"
    return ""


def _is_callable_like(value: Any) -> bool:
    return isinstance(value, types.ModuleType | type) or inspect.isroutine(value)


def _type_name(value: Any) -> str:
    cls = type(value)
    module = cls.__module__
    if module in ("builtins", None):
        return cls.__qualname__
    return f"{module.split('.')[0]}.{cls.__qualname__}"


def _shape(value: Any) -> str:
    try:
        shape = getattr(value, "shape", None)
        if isinstance(shape, tuple):
            return "x".join(str(n) for n in shape) if shape else "scalar"
        if isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
            return str(len(value))
    except Exception:
        pass
    return ""


def _dtype(value: Any) -> str:
    kind = _kind(value)
    try:
        if kind == "DataFrame":
            dtypes = {str(d) for d in value.dtypes}
            return ", ".join(sorted(dtypes)) if len(dtypes) <= 3 else f"{len(dtypes)} dtypes"
        dtype = getattr(value, "dtype", None)
        return str(dtype) if dtype is not None else ""
    except Exception:
        return ""


def _memory(value: Any, *, deep: bool) -> str:
    try:
        kind = _kind(value)
        if kind == "DataFrame":
            size = int(value.memory_usage(index=True, deep=deep).sum())
        elif kind == "Series":
            size = int(value.memory_usage(index=True, deep=deep))
        elif isinstance(getattr(value, "nbytes", None), int):
            size = value.nbytes
        else:
            size = sys.getsizeof(value)
    except Exception:
        return ""
    return format_size(size)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [min(max(len(r[i]) for r in rows), 40) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [cell if len(cell) <= 40 else cell[:37] + "..." for cell in row]
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(out)


def _bounded_repr(value: Any) -> str:
    if isinstance(value, str):
        shown = repr(value[:_REPR_CHARS])
        return shown + (
            f" ... [{len(value) - _REPR_CHARS} more characters]" if len(value) > _REPR_CHARS else ""
        )
    if isinstance(value, list | tuple | dict | set | frozenset | bytes):
        return _short_repr.repr(value)
    return truncate(repr(value), _REPR_CHARS, what="repr")


def _describe_object(value: Any) -> list[str]:
    lines = []
    shape = _shape(value)
    if shape:
        lines.append(f"length: {shape}")
    lines.append(f"memory: {_memory(value, deep=True)}")
    if isinstance(value, dict) and value:
        keys = list(value)[:20]
        more = f" (+{len(value) - 20} more)" if len(value) > 20 else ""
        lines.append(f"keys: {_short_repr.repr(keys)}{more}")
    if isinstance(value, list | tuple | set | frozenset) and value:
        kinds = sorted({type(v).__name__ for v in list(value)[:1000]})
        lines.append(f"element types: {', '.join(kinds)}")
    lines.append(f"value: {_bounded_repr(value)}")
    return lines


def _describe_callable(value: Any) -> list[str]:
    lines = []
    if isinstance(value, types.ModuleType):
        lines.append(f"module file: {getattr(value, '__file__', None) or '(built in)'}")
    else:
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            lines.append(f"signature: {value.__name__}{inspect.signature(value)}")
    doc = inspect.getdoc(value)
    if doc:
        lines.append("doc: " + truncate(doc, 1_000, what="docstring"))
    return lines


def _describe_array(value: Any) -> list[str]:
    lines = [
        f"shape: {value.shape}",
        f"dtype: {value.dtype}",
        f"memory: {_memory(value, deep=True)}",
    ]
    if value.size and value.dtype.kind in "biuf":
        lines.append(f"min: {value.min()!r}  max: {value.max()!r}  mean: {value.mean()!r}")
    lines.append("value:\n" + truncate(repr(value), _REPR_CHARS, what="repr"))
    return lines


def _describe_frame(df: Any) -> list[str]:
    rows, cols = df.shape
    lines = [f"shape: {rows} rows x {cols} columns", f"memory: {_memory(df, deep=True)}"]
    lines.append(f"index: {type(df.index).__name__}, {df.index.dtype}")
    shown = df.iloc[:, :_TABLE_COLUMNS]
    if cols > _TABLE_COLUMNS:
        lines.append(f"(showing the first {_TABLE_COLUMNS} of {cols} columns)")
    nulls = shown.isna().sum()
    lines.append("columns (dtype, nulls):")
    for column, dtype in shown.dtypes.items():
        lines.append(f"  {column!s}: {dtype}, {int(nulls[column])} null")
    lines.append(f"head({_HEAD_ROWS}):\n{shown.head(_HEAD_ROWS).to_string(max_colwidth=50)}")
    if rows:
        described = shown.describe(include="all").to_string(max_colwidth=30)
        lines.append("describe():\n" + truncate(described, 8_000, what="describe()"))
    return lines


def _describe_series(series: Any) -> list[str]:
    lines = [
        f"length: {len(series)}",
        f"dtype: {series.dtype}",
        f"name: {series.name!r}",
        f"nulls: {int(series.isna().sum())}",
        f"memory: {_memory(series, deep=True)}",
        f"head({_HEAD_ROWS}):\n{series.head(_HEAD_ROWS).to_string()}",
    ]
    if len(series):
        lines.append("describe():\n" + series.describe().to_string())
    return lines
