"""Kernels a gateway started (Jupyter Kernel Gateway, Enterprise Gateway, a Jupyter server
run with ``--gateway-url``): how a kernel tells it is one, where its transcript store goes,
and the one line that says why no key reached it.

A gateway kernel does not inherit the server's environment. It gets ``PATH``, the
``KERNEL_*`` variables the server sends (``KERNEL_WORKING_DIR``: the notebook's folder as
the server sees it; ``KERNEL_USERNAME``, ``KERNEL_LAUNCH_TIMEOUT``) and only the variables
both allow-lists let through: the server's ``GatewayClient.allowed_envs`` and the gateway's
own. So there is no ``HOME``, no ``JPY_SESSION_NAME``, and no key unless both sides allow it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: What to set so a key reaches a gateway kernel, in one line. Both lists are
#: comma-separated strings as environment variables; on the gateway's command line the
#: option is a list, so ``--JupyterWebsocketPersonality.env_whitelist=A,B`` is one name
#: "A,B" that matches nothing (give the flag once per name, or use the variable).
ALLOW_LISTS = (
    "allow the variables on both sides: the Jupyter server's "
    "JUPYTER_GATEWAY_ALLOWED_ENVS=OPENAI_API_KEY,CRUSH_MODEL (c.GatewayClient.allowed_envs) "
    "and the gateway's KG_ENV_WHITELIST=OPENAI_API_KEY,CRUSH_MODEL "
    "(Enterprise Gateway: EG_CLIENT_ENVS), then start a new kernel"
)


def looks_remote(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a gateway started this kernel: it has ``KERNEL_*`` variables (a local
    Jupyter server sends none) or no ``HOME`` (a gateway passes none)."""
    env = os.environ if environ is None else environ
    return "HOME" not in env or any(name.startswith("KERNEL_") for name in env)


@dataclass(frozen=True)
class StorePlace:
    """Where the transcript store goes by default, and why there."""

    path: str
    reason: str


def store_place(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> StorePlace:
    """The default store directory: ``$CRUSH_DATA_DIR``; else ``.crush`` in the notebook's
    folder (``$KERNEL_WORKING_DIR`` when the kernel can see it, else the kernel's working
    directory, which a local Jupyter server sets to the notebook's folder); a gateway kernel
    that cannot see the notebook's folder gets a per-user data directory, never the
    gateway's own working directory."""
    env = os.environ if environ is None else environ
    if env.get("CRUSH_DATA_DIR"):
        return StorePlace(env["CRUSH_DATA_DIR"], "from $CRUSH_DATA_DIR")
    working = env.get("KERNEL_WORKING_DIR")
    if working and Path(working).is_dir():
        return StorePlace(
            str(Path(working) / ".crush"), "the notebook's folder, from $KERNEL_WORKING_DIR"
        )
    if not looks_remote(env):
        folder = Path.cwd() if cwd is None else cwd
        return StorePlace(str(folder / ".crush"), "the notebook's folder")
    from platformdirs import user_data_dir

    return StorePlace(
        user_data_dir("jupyter-crush", appauthor=False),
        f"this remote kernel cannot see the notebook's folder{' ' + working if working else ''}; "
        "set CRUSH_DATA_DIR to a persistent volume to keep transcripts",
    )
