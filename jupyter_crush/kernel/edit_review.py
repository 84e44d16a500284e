"""Accept all, in a run view that cannot reach the page's script itself (the ipywidgets
view): the click comes to the kernel, which asks the page to accept the edits waiting for
review in their cells (``accept_edits``, labextension/src/edits.ts). The delta view's page
module reaches the extension in the page directly."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..notebook import labcomm

if TYPE_CHECKING:
    from ..view.base import RunView
    from .crush import Crush


def offer_edit_review(crush: Crush, view: RunView) -> None:
    """Let ``view``'s Accept all accept its edits through the page (any thread)."""

    def accept(edits: list[str]) -> None:
        labcomm.notify(crush.shell, {"op": "accept_edits", "edits": edits})

    view.edit_review.acceptor = accept
