"""Bad input and broken files reach the user as one line saying what to do, not a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from IPython.core.error import UsageError

from ..store.storage import StoreError


def one_line(error: BaseException | str) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())


@contextlib.contextmanager
def store_problems_in_one_line() -> Iterator[None]:
    """A damaged transcript file becomes a one-line UsageError naming the file, the byte
    and the command that recovers it, instead of a traceback."""
    try:
        yield
    except StoreError as error:
        raise UsageError(one_line(error)) from None
