"""Fill ``{name}``, ``{obj.attr}``, ``{In[3]}``, ``{Out[2]}`` in a prompt from the user namespace.

Prompts are full of braces that are not placeholders: code, JSON, dict literals,
f-strings, LaTeX. ``str.format`` would raise on most of them, so this is a scanner
with a deliberately narrow rule: a ``{...}`` is replaced only when its content is a
dotted Python identifier chain or ``In[n]`` / ``Out[n]`` *and* it resolves. Anything
else, including a name that is not defined, stays verbatim. ``{{`` is the escape
for a literal ``{`` (and ``{{x}}`` becomes ``{x}``, as in ``str.format``).

A value's text is redacted of every secret the extension knows before it joins the prompt
(``{os.environ}``, a settings dict, a client whose repr holds its key): the prompt goes to
the provider and into the transcript store, and its ``[redacted]`` shows the user what
was left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from ..core.output import redact

# One alternation, scanned left to right so an escape is consumed before the
# single-brace rule can see its inner brace.
_TOKEN = re.compile(
    r"""
    \{\{(?P<escaped>[^{}\n]*)\}\}                     # {{x}}  -> {x}
  | (?P<open>\{\{)                                    # {{     -> {
  | \{\s*(?P<field>
        (?:In|Out)\[\s*-?\d+\s*\]                     # In[3], Out[-1]
      | [A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*   # name, obj.attr.attr
    )\s*\}
    """,
    re.VERBOSE,
)

_HISTORY = re.compile(r"(In|Out)\[\s*(-?\d+)\s*\]")

_MISSING = object()


def interpolate(
    text: str,
    namespace: Mapping[str, Any],
    render: Callable[[str, Any], str | None] | None = None,
    used: dict[str, Any] | None = None,
) -> str:
    """Return ``text`` with resolvable placeholders replaced by ``str(value)``, redacted.

    Never raises for any input: a lookup that fails (unknown name, missing
    attribute, a property that raises, an out-of-range ``In[n]``) leaves the
    placeholder as written. ``render(placeholder, value)`` may claim a value first by
    returning its text (a figure becomes an attached image, see
    :class:`jupyter_crush.core.images.PromptImages`); ``None`` leaves it to ``str``.
    ``used``, when given, receives each placeholder filled in (``"df"``, ``"obj.attr"``,
    ``"Out[2]"``) with its value, for replay fingerprints.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped") is not None:
            return "{" + match.group("escaped") + "}"
        if match.group("open") is not None:
            return "{"
        value = _resolve(match.group("field"), namespace)
        if value is _MISSING:
            return match.group(0)
        if used is not None:
            used[match.group("field")] = value
        if isinstance(value, str):
            return redact(value)
        rendered = render(match.group(0), value) if render is not None else None
        return redact(_to_text(value) if rendered is None else rendered)

    return _TOKEN.sub(replace, text)


def _to_text(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        # A broken __str__ must not break the prompt; repr is the next best description.
        try:
            return repr(value)
        except Exception:
            return f"<{type(value).__name__}>"


def _resolve(field: str, namespace: Mapping[str, Any]) -> Any:
    history = _HISTORY.fullmatch(field)
    if history:
        return _resolve_history(history.group(1), int(history.group(2)), namespace)
    head, *attrs = field.split(".")
    value = namespace.get(head, _MISSING)
    for attr in attrs:
        if value is _MISSING:
            break
        try:
            value = getattr(value, attr)
        except Exception:
            # Properties can raise anything; an unresolvable chain stays literal text.
            value = _MISSING
    return value


def _resolve_history(which: str, index: int, namespace: Mapping[str, Any]) -> Any:
    # IPython keeps In as a list (In[0] is an empty placeholder) and Out as a
    # dict keyed by execution count; either may be absent outside IPython.
    table = namespace.get(which, _MISSING)
    if table is _MISSING:
        return _MISSING
    try:
        return table[index]
    except (KeyError, IndexError, TypeError):
        return _MISSING
