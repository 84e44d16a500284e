"""Every secret the extension has been given, so captured output can be redacted of them.

Environment variables with credential-like names are found by name
(:func:`jupyter_crush.core.output.secret_values`). Secrets that arrive otherwise — keys set
with ``%config CrushConfig.api_keys``, keys and headers of ``crush.json`` providers, the
credentials inside a base URL — are remembered here the moment the extension reads them,
before any tool can print them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

#: Shorter values are too likely to occur by chance ("true", "1") to be worth replacing.
MIN_SECRET_LEN = 8

# Tools redact on their worker threads while configuration changes on the kernel's
# thread; the lock keeps each read of the set whole.
_lock = threading.Lock()
_known: set[str] = set()  # guarded by _lock; values only ever added


def remember(values: Iterable[str | None]) -> None:
    """Redact these values from captured output from now on."""
    fresh = {v for v in values if isinstance(v, str) and len(v.strip()) >= MIN_SECRET_LEN}
    if fresh:
        with _lock:
            _known.update(fresh)


def remember_headers(headers: Mapping[str, str]) -> None:
    """Header values are credentials too; ``Bearer <token>`` also yields the bare token."""
    values = list(headers.values())
    remember(values + [v.split(None, 1)[1] for v in values if len(v.split(None, 1)) == 2])


def remember_url(url: str | None) -> None:
    """The user, password and query-string values a base URL may carry."""
    if not url:
        return
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    found = [unquote(parts.password or ""), unquote(parts.username or "") if parts.password else ""]
    found += [value for _, value in parse_qsl(parts.query)]
    remember(found)


def known() -> frozenset[str]:
    with _lock:
        return frozenset(_known)
