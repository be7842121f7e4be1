"""Where the Hugging Face Hub is and the token to show it: `HubConfig`, `hub_config_from_env`;
where huggingface_hub keeps its cache (`hf_hub_cache`) and whether it is offline (`hf_hub_offline`).

Kept apart from `hub.py` (the API client, which needs aiohttp) so that constructing a
`DownloadManager`, which always needs a config, does not import the HTTP client; the manager
imports `hub.py` only when it has a spec to resolve. `hub.py` re-exports both names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from modelfetch.core.errors import SpecError
from modelfetch.core.headers import origin_of
from modelfetch.core.spec import DEFAULT_ENDPOINT

if TYPE_CHECKING:
    from modelfetch.transfer.api import Credentials

__all__ = ["HubConfig", "hf_hub_cache", "hf_hub_offline", "hub_config_from_env"]


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Where the Hub is and the token to show it. `repr` never shows the token."""

    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        endpoint = self.endpoint.strip().rstrip("/")
        parts = urlsplit(endpoint)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the Hub endpoint must be an http(s) URL, not {self.endpoint!r}")
        object.__setattr__(self, "endpoint", endpoint)
        object.__setattr__(self, "token", self.token.strip() or None if self.token else None)

    def __repr__(self) -> str:
        token = "None" if self.token is None else "***"
        return f"HubConfig(endpoint={self.endpoint!r}, token={token})"

    @property
    def origin(self) -> str:
        """`scheme://host:port` of the endpoint: the only origin the token is sent to."""
        return origin_of(self.endpoint)

    def credentials(self) -> Credentials | None:
        """The token bound to the endpoint's origin, for `TransferRequest.credentials`."""
        # Imported here: the transfer layer's types are not needed to read the configuration.
        from modelfetch.transfer.api import Credentials

        return None if self.token is None else Credentials(self.token, self.origin)


def _clean_token(value: str | None) -> str | None:
    text = (value or "").strip()
    return text or None


def _expand(path: str, home: Path | None) -> Path:
    if home is not None and (path == "~" or path.startswith("~/")):
        return home / path[2:]
    return Path(path).expanduser()


def _read_token(path: Path) -> str | None:
    try:
        return _clean_token(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def hub_config_from_env(
    environ: Mapping[str, str] = os.environ, *, home: Path | None = None
) -> HubConfig:
    """The Hub settings huggingface_hub would use.

    Endpoint: `HF_ENDPOINT` (trailing `/` dropped), else https://huggingface.co.
    Token, first non-empty of: `HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN` (its legacy name), the file
    `HF_TOKEN_PATH`, else `$HF_HOME/token`, else `$XDG_CACHE_HOME/huggingface/token`, else
    `~/.cache/huggingface/token`. `home` stands in for `~` (tests). An unreadable file is no token.
    A malformed `HF_ENDPOINT` is a `SpecError`.
    """
    endpoint = (environ.get("HF_ENDPOINT") or "").strip() or DEFAULT_ENDPOINT
    token = _clean_token(environ.get("HF_TOKEN")) or _clean_token(
        environ.get("HUGGING_FACE_HUB_TOKEN")
    )
    if token is None:
        if environ.get("HF_TOKEN_PATH"):
            token_path = _expand(environ["HF_TOKEN_PATH"], home)
        else:
            if environ.get("HF_HOME"):
                hf_home = _expand(environ["HF_HOME"], home)
            else:
                cache = environ.get("XDG_CACHE_HOME") or "~/.cache"
                hf_home = _expand(cache, home) / "huggingface"
            token_path = hf_home / "token"
        token = _read_token(token_path)
    try:
        return HubConfig(endpoint, token)
    except ValueError:
        raise SpecError(f"HF_ENDPOINT is not an http(s) URL: {endpoint!r}") from None


# --- huggingface_hub's cache and offline mode ----------------------------------------------------


def _expandvars(text: str, environ: Mapping[str, str]) -> str:
    """`os.path.expandvars` over `environ` (it reads only os.environ): `$NAME` and `${NAME}`
    replaced when set, left as written when not."""
    import re

    def one(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        return environ.get(name, match[0])

    return re.sub(r"\$(?:(\w+)|\{([^}]*)\})", one, text)


def _hf_path(text: str, environ: Mapping[str, str]) -> Path:
    # huggingface_hub: os.path.expandvars(os.path.expanduser(value)), relative to the cwd.
    return Path(_expandvars(os.path.expanduser(text), environ)).absolute()


def hf_hub_cache(environ: Mapping[str, str] = os.environ) -> tuple[Path, str]:
    """huggingface_hub's cache directory and the variable that set it ("default" if none),
    read exactly as `huggingface_hub.constants` does: `HF_HUB_CACHE`, else the legacy
    `HUGGINGFACE_HUB_CACHE`, else `HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    `~/.cache/huggingface/hub`. Like it, a variable set to "" counts as set."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if name in environ:
            return _hf_path(environ[name], environ), name
    if "HF_HOME" in environ:
        return _hf_path(environ["HF_HOME"], environ) / "hub", "HF_HOME"
    home = os.path.join(os.path.expanduser("~"), ".cache")
    if "XDG_CACHE_HOME" in environ:
        base, source = environ["XDG_CACHE_HOME"], "XDG_CACHE_HOME"
    else:
        base, source = home, "default"
    return _hf_path(os.path.join(base, "huggingface"), environ) / "hub", source


_TRUE = frozenset({"1", "ON", "YES", "TRUE"})


def hf_hub_offline(environ: Mapping[str, str] = os.environ) -> str | None:
    """The variable that turns huggingface_hub's offline mode on, or None: `HF_HUB_OFFLINE`,
    else `TRANSFORMERS_OFFLINE` (the first one set and non-empty is the one read), true when
    1, ON, YES or TRUE in any case."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = environ.get(name)
        if value:
            return name if value.upper() in _TRUE else None
    return None
