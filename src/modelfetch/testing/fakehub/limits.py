"""Bandwidth caps: per connection, and per client (one bucket shared by all of its connections).

The real Hub's CDN caps each connection and, above that, each user: a client opening 16
connections gets no more than its own cap, while N clients (hosts, tokens) each get theirs. The
fake hub identifies a client by an opaque id: a keyed hash of the Bearer token of the request
that resolved the file, else of the peer address. Resolve carries that id (never the token) in
the signed CDN URL, so the CDN knows whose bucket a body draws from and a client cannot pick
another's by editing the URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections import Counter
from dataclasses import dataclass
from typing import Final

from aiohttp import web

__all__ = ["CLIENT_BURST_SECONDS", "ClientBuckets", "Pacing", "RateBucket", "client_id"]

_CLIENT_KEY: Final = b"fakehub-client-id-key"
# Unused credit a client bucket keeps (seconds of its rate): enough to absorb the event loop's
# timer lateness, so the cap is what a client gets, not a little less.
CLIENT_BURST_SECONDS: Final = 0.05


def client_id(token: str | None, peer: str | None) -> str:
    """The opaque id of a client: `t-<hash>` of its token, else `ip-<hash>` of its address."""
    if token:
        kind, value = "t", token
    else:
        kind, value = "ip", peer or "?"
    digest = hmac.new(_CLIENT_KEY, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()
    return f"{kind}-{digest[:16]}"


def bearer_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return (value.strip() or None) if scheme.lower() == "bearer" else None


def request_client(request: web.Request) -> str:
    """The client id of a request that carries its own credentials (resolve, the Hub's bodies)."""
    return client_id(bearer_token(request), request.remote)


class RateBucket:
    """A token bucket of `rate` bytes/s that starts empty and keeps at most `burst` seconds of
    unused credit. `take(n)` reserves n bytes in arrival order and sleeps until they are due, so
    concurrent takers share the rate fairly, piece by piece."""

    def __init__(self, rate: float, *, burst: float = CLIENT_BURST_SECONDS) -> None:
        self.rate = rate
        self.burst = burst
        self.granted = 0  # bytes handed out so far
        self._due: float | None = None  # loop time at which every reservation so far is paid

    async def take(self, n: int) -> None:
        now = asyncio.get_running_loop().time()
        due = now if self._due is None else max(self._due, now - self.burst)
        self._due = due + n / self.rate
        self.granted += n
        delay = self._due - now
        if delay > 0:
            await asyncio.sleep(delay)


class ClientBuckets:
    """One bucket per client id, made on first use, at the hub's current `client_rate`."""

    def __init__(self) -> None:
        self.buckets: dict[str, RateBucket] = {}

    def get(self, client: str, rate: float | None) -> RateBucket | None:
        if rate is None:
            return None
        bucket = self.buckets.get(client)
        if bucket is None:
            bucket = self.buckets[client] = RateBucket(rate)
        bucket.rate = rate  # a changed `client_rate` applies from the next response on
        return bucket


@dataclass(slots=True)
class Pacing:
    """What shapes one response body besides faults: the per-connection cap, the client's
    bucket, and where its bytes are counted."""

    client: str
    connection_rate: float | None
    bucket: RateBucket | None
    sent: Counter[str]
