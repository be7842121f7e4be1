"""The session: keep-alive pools per (scheme, host, port), connecting directly or through an
http proxy (absolute-form requests for http, a CONNECT tunnel for https), TLS on demand."""

from __future__ import annotations

import asyncio
import collections
import mmap
import socket
import ssl
from collections.abc import Mapping

from modelfetch.core.proxy import NO_PROXIES, Proxy, ProxyRules
from modelfetch.transfer.wire.connection import Connection, NothingReceived
from modelfetch.transfer.wire.errors import (
    ConnectError,
    ConnectTimeoutError,
    InvalidURLError,
    NameResolutionError,
    ServerDisconnectedError,
)
from modelfetch.transfer.wire.response import READ_BUFFER, Response
from modelfetch.transfer.wire.target import Target, request_head
from modelfetch.transfer.wire.tunnel import open_tunnel

__all__ = ["IDLE_TIMEOUT", "Session"]

IDLE_TIMEOUT = 15.0  # a pooled connection older than this is not reused (servers drop them)


class Session:
    """Connections shared by every request made through it: a keep-alive pool per (scheme,
    host, port), at most `max_idle` idle in all and `max_idle_per_host` per key (limits on
    concurrent connections are the caller's: see limiter.ConnectionSlots). `headers` go on
    every request unless the request names the same field. For https, the default SSL
    context (verification on) is made on the first https request, so plain-http work never
    pays for it; pass `ssl_context` to trust something else (e.g. a test's own CA), or
    `ca_bundle` (a PEM file) to verify against it instead of the system's store. `proxies`
    says which requests go through which http proxy (the caller reads the environment)."""

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float | None = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        max_idle: int = 100,
        max_idle_per_host: int = 32,
        read_buffer: int = READ_BUFFER,
        proxies: ProxyRules = NO_PROXIES,
        ca_bundle: str | None = None,
    ) -> None:
        self.headers: dict[str, str] = dict(headers or {})
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.max_idle_per_host = max_idle_per_host
        self.read_buffer = read_buffer
        self._ssl_context = ssl_context
        self.proxies = proxies
        self.ca_bundle = ca_bundle
        self._idle: dict[tuple[str, str, int], collections.deque[Connection]] = {}
        self._idle_count = 0
        self._active: set[Connection] = set()
        self._buffers: list[memoryview] = []
        self._closed = False
        self.connections_opened = 0  # for tests and diagnostics

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection, idle or busy (a busy one's reader sees it end)."""
        self._closed = True
        idle = [conn for pool in self._idle.values() for conn in pool]
        self._idle.clear()
        for conn in idle:
            conn.close()
        self._idle_count = 0
        for conn in list(self._active):
            conn.close()
        self._buffers.clear()

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context(cafile=self.ca_bundle)
        return self._ssl_context

    def proxy_for(self, url: str) -> Proxy | None:
        """The proxy a request to `url` goes through, or None when it connects directly."""
        return self.proxies.proxy_for(url)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float | None = None,
        recv_size: int = 0,
    ) -> Response:
        """Send `method url` and return once the response head is in (1xx skipped). The body
        is not read: read it (`read_chunk`, `read`, `stream`), then `release()` or `close()`.
        `recv_size` (0: the whole buffer) caps every receive from the first on, so a reader under
        a bandwidth limit is not handed a burst that arrived with the head, before it attached.
        A pooled connection that turns out dead before any response byte is replaced once
        (GET and HEAD only). Bound the wait for the head with `asyncio.timeout` around this."""
        if self._closed:
            raise RuntimeError("the session is closed")
        method = method.upper()
        if method not in ("GET", "HEAD"):
            raise ValueError(f"only GET and HEAD are supported, not {method}")
        target = Target.of(url)
        proxy = self.proxies.proxy_for(url)
        # Plain http goes to the proxy as an absolute-form request, over connections pooled per
        # proxy; https is tunnelled, one tunnel per origin, pooled under the origin's key.
        forward = proxy if proxy is not None and target.scheme == "http" else None
        head = request_head(
            method,
            target,
            self.headers,
            headers or {},
            via_proxy=forward is not None,
            proxy_authorization=forward.authorization() if forward is not None else None,
        )
        key = target.key if forward is None else ("http-proxy", forward.host, forward.port)
        timeout = self.connect_timeout if connect_timeout is None else connect_timeout
        for attempt in range(2):
            conn = self._take_idle(key) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect(target, key, proxy, timeout)
            try:
                return await conn.exchange(head, method, url, recv_size)
            except NothingReceived as nothing:
                if reused and attempt == 0:
                    continue  # the server dropped the idle connection as we reused it
                raise ServerDisconnectedError(
                    f"{target.host_header} closed the connection without answering"
                ) from nothing.__cause__
        raise AssertionError("unreachable")

    # -- connections ----------------------------------------------------------------------------

    def _take_idle(self, key: tuple[str, str, int]) -> Connection | None:
        pool = self._idle.get(key)
        now = asyncio.get_running_loop().time()
        while pool:
            conn = pool.pop()  # the most recently used: the least likely to be stale
            self._idle_count -= 1
            if conn.usable and now - conn.idle_since < IDLE_TIMEOUT:
                self._active.add(conn)
                return conn
            conn.close()
        return None

    async def _connect(
        self,
        target: Target,
        key: tuple[str, str, int],
        proxy: Proxy | None,
        within: float | None,
    ) -> Connection:
        conn = Connection(self, key)
        try:
            async with asyncio.timeout(within) as deadline:
                await self._open(conn, target, proxy)
        except TimeoutError:
            if deadline.expired():
                via = f" through the proxy {proxy.url()}" if proxy is not None else ""
                raise ConnectTimeoutError(
                    f"connecting to {target.host_header}{via} took over {within:g} s"
                ) from None
            raise
        self.connections_opened += 1
        self._active.add(conn)
        return conn

    async def _open(self, conn: Connection, target: Target, proxy: Proxy | None) -> None:
        """Connect `conn` to the origin: directly, to the proxy, or through a tunnel."""
        loop = asyncio.get_running_loop()
        tls = target.scheme == "https"
        host, port = (target.host, target.port) if proxy is None else (proxy.host, proxy.port)
        try:
            if proxy is not None and tls:
                try:
                    await open_tunnel(proxy, target, conn, self.ssl_context())
                except (ssl.SSLError, ssl.CertificateError) as exc:  # the origin's handshake
                    raise ConnectError(target.host, target.port, exc) from exc
                return
            context = self.ssl_context() if tls else None
            await loop.create_connection(
                lambda: conn,
                host,
                port,
                ssl=context,
                server_hostname=target.host.partition("%")[0] if context else None,
                happy_eyeballs_delay=0.25,
            )
        except socket.gaierror as exc:
            raise NameResolutionError(host, port, exc, proxy=proxy is not None) from exc
        except UnicodeError as exc:  # a name IDNA cannot encode (an empty label, too long)
            raise InvalidURLError(f"invalid host name {host!r}: {exc}") from exc
        except ConnectError:
            raise
        except OSError as exc:  # refused, unreachable, TLS (ssl.SSLError is an OSError)
            raise ConnectError(host, port, exc, proxy=proxy is not None) from exc

    def _give_back(self, conn: Connection) -> None:
        """A connection whose exchange ended cleanly: pooled if there is room, else closed."""
        self._active.discard(conn)
        conn.put_buffer()
        pool = self._idle.setdefault(conn.key, collections.deque())
        if (
            self._closed
            or not conn.usable
            or self._idle_count >= self.max_idle
            or len(pool) >= self.max_idle_per_host
        ):
            conn.close()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        conn.resume()  # to notice the server closing it while it waits
        pool.append(conn)
        self._idle_count += 1

    def _forget(self, conn: Connection) -> None:
        self._active.discard(conn)
        pool = self._idle.get(conn.key)
        if pool is not None and conn in pool:
            pool.remove(conn)
            self._idle_count -= 1

    def _get_buffer(self) -> memoryview:
        if self._buffers:
            return self._buffers.pop()
        # Anonymous memory: pages are only touched (faulted in) as bytes land in them, so a
        # connection that only ever receives small bodies costs little of its 1 MiB.
        return memoryview(mmap.mmap(-1, self.read_buffer))

    def _put_buffer(self, buffer: memoryview) -> None:
        if not self._closed and len(self._buffers) < 64:
            self._buffers.append(buffer)
