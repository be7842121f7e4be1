"""Which state database engine a store URL names: pure, so a config check and the opener agree.

The messages never repeat the URL, which for a database server may carry a password.
"""

from __future__ import annotations

import re
from typing import Literal

from modelfetch.core.errors import StateError

__all__ = ["store_engine"]

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,31}")  # RFC 3986


def store_engine(url: str | None) -> Literal["sqlite", "postgres"]:
    """The engine `url` names: SQLite in its default place (`home/state.db`: `sqlite:` or
    `sqlite://` with nothing after it), or PostgreSQL (`postgresql://` or `postgres://`, any
    libpq URL). The message never repeats the URL, which for a database server may carry a
    password."""
    if url is None:
        return "sqlite"
    scheme, colon, rest = url.strip().partition(":")
    if not colon or not scheme:
        raise StateError("the state database URL has no scheme: use sqlite: or postgresql://")
    name = scheme.lower()
    if name in ("postgresql", "postgres"):
        return "postgres"
    if name != "sqlite":
        shown = repr(name) if _SCHEME.fullmatch(name) else "of that URL"
        raise StateError(
            f"state database engine {shown} is not supported by this modelfetch:"
            " use sqlite: (the default, a file in the state directory) or postgresql://"
        )
    if rest not in ("", "//"):
        raise StateError(
            "the sqlite engine keeps its database in the state directory: give sqlite: without"
            " a path (choose the directory with --home)"
        )
    return "sqlite"
