"""The HTTP session every transfer shares: `make_session`, and the name callers give it."""

from __future__ import annotations

import ssl

from modelfetch.transfer.wire import Session

# What `make_session` returns and `fetch_file` takes: callers name this, not the client library.
TransferSession = Session


def make_session(
    *,
    connect_timeout: float = 30.0,
    limit: int = 100,
    ssl_context: ssl.SSLContext | None = None,
) -> TransferSession:
    """The session every transfer shares (use it as `async with`, or `await close()` it). No
    total timeout (a 50 GB file takes as long as it takes); stalls are caught per transfer.
    `Accept-Encoding: identity` because we store bytes as served and never decompress (a
    gzip-encoded body would not match the Hub's digest). `limit`: idle keep-alive connections
    kept in all; `ssl_context`: what https trusts (default: the system's, made on first use)."""
    from modelfetch import __version__  # lazily: the package facade may import this module

    return Session(
        headers={"User-Agent": f"modelfetch/{__version__}", "Accept-Encoding": "identity"},
        connect_timeout=connect_timeout,
        ssl_context=ssl_context,
        max_idle=limit,
    )
