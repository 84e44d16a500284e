"""Folder trust: what a crush.json outside the user's own config directory may do.

Notebooks travel: a cloned tutorial, a colleague's project or a course's materials can hold a
``crush.json``. Such a *project file* (any crush.json not in the user's config directory,
``$XDG_CONFIG_HOME/crush``) is read through one rule, :func:`applied`:

* the parts that can send secrets or run programs — ``mcp`` servers, a provider's
  ``base_url``, ``api_key``, ``extra_headers``/``headers``, ``extra_body``, a provider the user's
  own configuration does not know, any ``$VAR`` expansion — take effect only once the user
  trusted the file as it is now (``%crush trust``), or trusts every project file
  (``CRUSH_TRUST_PROJECT_CONFIG=1`` or ``CrushConfig.trust_project_config``, for CI);
* the rest (model lists and their windows, a ``models.large``/``small`` choice of a known
  provider) applies at once.

Trust is kept per file and per content: the user's config directory holds each trusted file's
path and the SHA-256 of its bytes, so a changed file is untrusted again.

A second rule, :func:`key_destination_problem`, holds even for trusted files: a key the user
set for one provider goes only to that provider's default host or a host the user's own
configuration names for it, unless a trusted file names that host together with the variable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config_file import CrushConfigError, parse_crush_json

#: Trusts every project file (CI, headless runs), like ``CrushConfig.trust_project_config``.
TRUST_ENV = "CRUSH_TRUST_PROJECT_CONFIG"
#: In the user's config directory: trusted file path -> SHA-256 of its content.
TRUST_STORE_NAME = "jupyter-crush-trusted.json"
#: Keys of a provider entry that send nothing anywhere (model lists carry names and windows).
HARMLESS_PROVIDER_KEYS = frozenset({"id", "name", "models", "api"})
#: Where the SDKs send requests when no base URL is set.
SDK_DEFAULT_HOSTS = {"anthropic": "api.anthropic.com", "openai": "api.openai.com"}

_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class Trust(Enum):
    """A file's trust, as said after its path."""

    OWN = "is your own"
    TRUSTED = "is trusted"
    TRUSTED_BY_SETTING = "is trusted by CRUSH_TRUST_PROJECT_CONFIG or trust_project_config"
    UNTRUSTED = "is not trusted"
    CHANGED = "has changed since you trusted it"


@dataclass(frozen=True)
class ConfigFile:
    """One crush.json as read now: its content, the hash of its bytes, and its trust."""

    path: Path
    data: dict[str, Any]
    digest: str
    trust: Trust

    @property
    def applies_whole(self) -> bool:
        return self.trust in (Trust.OWN, Trust.TRUSTED, Trust.TRUSTED_BY_SETTING)

    @property
    def is_project(self) -> bool:
        return self.trust is not Trust.OWN


def user_config_dir() -> Path:
    """The user's own config directory, where Crush keeps its global crush.json."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "crush"


def is_users_own(path: Path) -> bool:
    return path.resolve().parent == user_config_dir().resolve()


def trusts_everything(setting: bool = False) -> bool:
    """``CrushConfig.trust_project_config`` (``setting``) or ``$CRUSH_TRUST_PROJECT_CONFIG``."""
    return setting or os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def variables(value: Any) -> list[str]:
    """The ``$VAR``/``${VAR}`` names a value refers to, anywhere inside it."""
    if isinstance(value, str):
        return [m.group(1) or m.group(2) for m in _VAR.finditer(value)]
    if isinstance(value, Mapping):
        return [name for item in value.values() for name in variables(item)]
    if isinstance(value, list):
        return [name for item in value for name in variables(item)]
    return []


# -- the trust store -----------------------------------------------------------------------


def _store_path() -> Path:
    return user_config_dir() / TRUST_STORE_NAME


def _trusted() -> dict[str, str]:
    try:
        data = json.loads(_store_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: nothing is trusted
    trusted = data.get("trusted") if isinstance(data, dict) else None
    if not isinstance(trusted, dict):
        return {}
    return {k: v for k, v in trusted.items() if isinstance(v, str)}


def _save(trusted: Mapping[str, str]) -> None:
    """Write the store; a one-line CrushConfigError when it cannot be written."""
    try:
        _write(trusted)
    except OSError as exc:
        from .config_file import CrushConfigError

        raise CrushConfigError(
            f"cannot record trust in {_store_path()}: {exc.strerror or exc}; make that "
            f"directory writable, or set {TRUST_ENV}=1 to trust every folder's crush.json"
        ) from None


def _write(trusted: Mapping[str, str]) -> None:
    path = _store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": 1, "trusted": dict(sorted(trusted.items()))}, indent=1)
    # Written whole then renamed: a crash never leaves half a store (which would trust nothing).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".trusted-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remember_trust(files: Iterable[ConfigFile]) -> None:
    """Trust ``files`` as they were read (their hash), not as they may be by now."""
    trusted = _trusted()
    trusted.update({str(f.path.resolve()): f.digest for f in files})
    _save(trusted)


def forget_trust(files: Iterable[ConfigFile]) -> list[Path]:
    """Untrust ``files``; the ones that were trusted."""
    trusted = _trusted()
    gone = [f.path for f in files if trusted.pop(str(f.path.resolve()), None) is not None]
    if gone:
        _save(trusted)
    return gone


# -- reading a file ------------------------------------------------------------------------


def open_config(path: Path, *, trust_all: bool = False) -> ConfigFile:
    """Read one crush.json once: the bytes hashed are the bytes parsed."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CrushConfigError(f"cannot read {path}: {exc.strerror}") from None
    data = parse_crush_json(path, raw)
    digest = hashlib.sha256(raw).hexdigest()
    if is_users_own(path):
        trust = Trust.OWN
    elif trusts_everything(trust_all):
        trust = Trust.TRUSTED_BY_SETTING
    else:
        stored = _trusted().get(str(path.resolve()))
        trust = Trust.TRUSTED if stored == digest else Trust.CHANGED if stored else Trust.UNTRUSTED
    return ConfigFile(path, data, digest, trust)


def applied(file: ConfigFile, known_providers: Collection[str]) -> tuple[dict[str, Any], list[str]]:
    """The one rule: what of ``file`` takes effect, and what is left out (by its place in the
    file, e.g. ``providers.openai.base_url``). ``known_providers``: the built-in ones and those
    the user's own configuration defines; a model choice of one of them sends the user's key
    only where the user chose."""
    if file.applies_whole:
        return file.data, []
    kept: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in file.data.items():
        if key == "mcp":
            ignored += [f"mcp.{name}" for name in value] if isinstance(value, Mapping) else [key]
        elif key == "providers" and isinstance(value, Mapping):
            kept[key] = {}
            for pid, entry in value.items():
                if pid not in known_providers or not isinstance(entry, Mapping):
                    ignored.append(f"providers.{pid}")
                    continue
                risky = [
                    k for k, v in entry.items() if k not in HARMLESS_PROVIDER_KEYS or variables(v)
                ]
                ignored += [f"providers.{pid}.{k}" for k in risky]
                kept[key][pid] = {k: v for k, v in entry.items() if k not in risky}
        elif key == "models" and isinstance(value, Mapping):
            kept[key] = {}
            for size, choice in value.items():
                provider = choice.get("provider") if isinstance(choice, Mapping) else None
                if provider in known_providers and not variables(choice):
                    kept[key][size] = choice
                else:
                    ignored.append(f"models.{size}")
        elif variables(value):
            ignored.append(key)
        else:
            kept[key] = value
    return kept, ignored


# -- secrets and the hosts they go to ------------------------------------------------------


def host_of(url: str | None, provider_type: str = "openai") -> str:
    """``host[:port]`` of a base URL; None is the SDK's default host for the type."""
    if not url:
        return SDK_DEFAULT_HOSTS.get(provider_type, SDK_DEFAULT_HOSTS["openai"])
    try:
        return urlsplit(url).netloc.rpartition("@")[2].lower() or url
    except ValueError:
        return url


@dataclass(frozen=True)
class ProjectEntry:
    """A provider entry of a project file: the host it names and the variables it sends."""

    path: Path
    named_host: str | None  # the host of a base_url written in the entry without a $VAR
    key_vars: tuple[str, ...]  # variables its api_key expands
    header_vars: tuple[str, ...]  # variables its extra_headers expand


@dataclass(frozen=True)
class Secret:
    """A secret a request would carry, and whose it is."""

    label: str  # how a message names it: "$OPENAI_API_KEY", "CrushConfig.api_keys['openai']"
    #: The provider the user set it for; None: not a provider's key (a file's own literal key,
    #: a token for one server), which trust alone governs.
    owner: str | None
    #: A trusted project file wrote this variable in the entry that names the host.
    named_with_host: bool = False


def key_destination_problem(
    secret: Secret, host: str, *, host_named_by_file: bool, chosen_hosts: Collection[str]
) -> str | None:
    """The second rule: why ``secret`` must not go to ``host``, or None. ``chosen_hosts``: the
    owner's default host and the hosts the user's own configuration names for it."""
    if secret.owner is None or host in chosen_hosts:
        return None
    if secret.named_with_host and host_named_by_file:
        return None
    return (
        f"{secret.label} is yours for {secret.owner}, which you send to "
        f"{' or '.join(sorted(chosen_hosts)) or 'its own host'}, not to {host}"
    )
