"""The state database setting: which store a command opens, and how its URL is shown.

    --store URL     MODELFETCH_STORE         store           sqlite: (a file in the home)

`postgresql://user@host:5432/db` makes the process one worker of a queue shared with every other
process on that database (`manager/fleet.py`). The engine a URL names is checked here, so a wrong
one is a configuration error before anything opens; whether the server answers is the engine's
business (`recovery.open_store`). A URL may carry a password: it is shown only without it.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from modelfetch.core.errors import StateError
from modelfetch.core.store_url import store_engine

ENV_STORE = "MODELFETCH_STORE"

__all__ = ["ENV_STORE", "choose_store", "shown_store"]


def choose_store(
    flag: str | None,
    environ: Mapping[str, str],
    from_file: str | None,
    file_name: str,
    sources: dict[str, str],
) -> str | None:
    """The store URL by precedence (flag, environment, config file), its source recorded in
    `sources`; None: the default SQLite file. Raises ValueError, naming the source, for a URL
    of an engine this modelfetch does not have."""
    env = environ.get(ENV_STORE, "").strip()
    for url, source, named in (
        (flag, "--store", "--store"),
        (env, ENV_STORE, ENV_STORE),
        (from_file, file_name, f"store in {file_name}"),
    ):
        if url is not None and url.strip():
            try:
                store_engine(url)
            except StateError as exc:
                raise ValueError(f"{named}: {exc}") from None
            sources["store"] = source
            return url.strip()
    return None


def shown_store(url: str | None, home: str) -> str:
    """The store as `config` shows it: never a password (nor a conninfo string's values)."""
    if url is None or url.strip().lower() in ("sqlite:", "sqlite://"):
        return f"sqlite: {home}/state.db"
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a URL that cannot be parsed)"
    user = f"{urllib.parse.unquote(parts.username)}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"
