"""The aiohttp session for Hub API calls: bytes as served, no cookies, the CA bundle to trust."""

from __future__ import annotations

import os
import ssl

import aiohttp

from modelfetch._version import __version__
from modelfetch.core.errors import SpecError
from modelfetch.core.network import NetworkSettings

__all__ = ["USER_AGENT", "make_api_session"]

USER_AGENT = f"modelfetch/{__version__}"


def make_api_session(
    *, connect_timeout: float = 30.0, network: NetworkSettings | None = None
) -> aiohttp.ClientSession:
    """The aiohttp session for Hub API calls (transfers use their own, `transfer.make_session`).
    Bytes as served (`Accept-Encoding: identity`, no decompression) and no cookies, like the
    transfer session. `network` (default: from the environment) gives the CA bundle; the
    proxy is chosen per request by `HubClient`, which knows NO_PROXY."""
    network = (network or NetworkSettings.from_env(os.environ)).usable()
    connector = None
    if network.ca_bundle is not None:
        connector = aiohttp.TCPConnector(ssl=_trusting(network.ca_bundle))
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
    )


def _trusting(ca_bundle: str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise SpecError(f"cannot use the CA bundle {ca_bundle}: {exc}") from None
