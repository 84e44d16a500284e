"""The comm plumbing both run views share: where their clicks are taken, and closing a
widget with every comm it opened."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets


def take_clicks_where_sent(widget: widgets.Widget) -> None:
    """Handle ``widget``'s clicks on the kernel subshell the page sent them on.

    A click is a custom comm message whose content has ``"event": "click"`` (what an
    ipywidgets Button sends, and what the delta view's buttons send).

    ipykernel 7.4 routes a comm message to the subshell of the last message the kernel
    published on that comm (``BaseComm._reply_subshell_for``, asked on the shell-channel
    thread for every ``comm_msg``), so a widget a cell made answers on the main shell
    whatever subshell the page chose. For a widget whose click handler is thread-safe,
    clicks keep the page's choice; everything else on the comm (state updates, close)
    keeps ipykernel's routing. A page that sends no subshell (comms over subshells off,
    or a front end without them) still reaches the main shell, as before. Kernels
    without this routing already deliver where the page sends, and are left alone.
    """
    comm = getattr(widget, "comm", None)
    route = getattr(comm, "_reply_subshell_for", None)
    if route is None:
        return

    def route_clicks(data: Any, sent_to: str | None) -> str | None:
        if isinstance(data, dict) and data.get("method") == "custom":
            content = data.get("content")
            if isinstance(content, dict) and content.get("event") == "click":
                return sent_to
        return route(data, sent_to)

    comm._reply_subshell_for = route_clicks


def close_widgets(widget: widgets.Widget) -> None:
    """Close ``widget``, its descendants, and their layout and style widgets."""
    for child in getattr(widget, "children", ()):
        close_widgets(child)
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
        if isinstance(part, widgets.Widget):
            part.close()
    widget.close()
