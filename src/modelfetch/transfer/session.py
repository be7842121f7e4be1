"""The HTTP session every transfer shares: `make_session`, and the name callers give it."""

from __future__ import annotations

import os
import ssl

from modelfetch.core.network import NetworkSettings
from modelfetch.transfer.wire import Session

# What `make_session` returns and `fetch_file` takes: callers name this, not the client library.
TransferSession = Session


def make_session(
    *,
    connect_timeout: float = 30.0,
    limit: int = 100,
    ssl_context: ssl.SSLContext | None = None,
    network: NetworkSettings | None = None,
) -> TransferSession:
    """The session every transfer shares (use it as `async with`, or `await close()` it). No
    total timeout (a 50 GB file takes as long as it takes); stalls are caught per transfer.
    `Accept-Encoding: identity` because we store bytes as served and never decompress (a
    gzip-encoded body would not match the Hub's digest). `limit`: idle keep-alive connections
    kept in all; `ssl_context`: what https trusts (default: the system's, or `network`'s CA
    bundle, made on first use); `network`: proxies and CA bundle (default: from the
    environment, as every Hub client reads them)."""
    from modelfetch._version import __version__

    network = (network or NetworkSettings.from_env(os.environ)).usable()
    return Session(
        headers={"User-Agent": f"modelfetch/{__version__}", "Accept-Encoding": "identity"},
        connect_timeout=connect_timeout,
        ssl_context=ssl_context,
        max_idle=limit,
        proxies=network.proxies,
        ca_bundle=network.ca_bundle,
    )
