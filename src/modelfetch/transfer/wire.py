"""A small HTTP/1.1 client on asyncio: what the transfers need and nothing else.

Why not aiohttp here: importing it costs 0.15-0.25 s of every process start (its connector
builds SSL contexts at import time), longer than the whole of some downloads; and on the hot
path it allocates and copies every received chunk several times. This client speaks GET and
HEAD over http and https, keeps connections alive per (scheme, host, port), never follows
redirects (transfer/http.py does that by hand, with its own rules) and never decodes content.

The shape of one exchange:
  session.request(method, url, headers=...) -> Response  (the head is parsed, the body is not)
  response.read_chunk(n)   -> a view of the next body bytes, valid until the next call
  response.stream(sink)    -> every body byte handed to `sink` as it lands (zero-copy)
  response.release()       -> the connection goes back to the pool if the body was read whole

Where the bytes go. Each connection is an asyncio BufferedProtocol: the kernel copies received
bytes into one reusable buffer (taken from the session while a request is active), the parser
finds the body in place and hands out views of it. Nothing is allocated per chunk. The buffer
is never overwritten under its reader: while views are out (read_chunk) or body bytes wait for
the reader to attach, later receives land after them, and the connection stops reading only
when too little room is left or the reader asks (a sink's pause, small bandwidth-limited
reads); TCP flow control then slows the server down. Pausing and resuming cost an epoll_ctl
each, so a response that is all in the buffer never pauses, and bytes after it go to a small
scratch buffer and make the connection unusable. An idle pooled connection keeps reading, so a
server closing it is noticed before it is reused.

Hostile servers. The head is capped (64 KiB, 100 fields), status lines, field lines, chunk
sizes and Content-Length values are checked strictly, and every failure is a typed `WireError`
(http.py translates them into the transfer's own errors). A body that ends before its length
or its last chunk is an `IncompleteBodyError`, never a short success.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import mmap
import re
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

__all__ = [
    "MAX_FIELDS",
    "MAX_HEAD",
    "READ_BUFFER",
    "ConnectError",
    "ConnectTimeoutError",
    "Headers",
    "IncompleteBodyError",
    "InvalidURLError",
    "NameResolutionError",
    "ProtocolError",
    "Response",
    "ServerDisconnectedError",
    "Session",
    "StallError",
    "Target",
    "WireError",
]

MAX_HEAD = 64 << 10  # bytes of a status line plus fields (and of a trailer block)
MAX_FIELDS = 100
MAX_CHUNK_LINE = 4 << 10  # a chunk-size line with its extensions
_HEAD_STEP = 2 << 10  # head bytes are looked at this many at a time
READ_BUFFER = 1 << 20  # the receive buffer of a connection while a request is active
_MIN_ROOM = 64 << 10  # a connection with views out pauses when less is left after them
IDLE_TIMEOUT = 15.0  # a pooled connection older than this is not reused (servers drop them)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_EMPTY: Final = memoryview(b"")
_NO_BODY_STATUSES: Final = frozenset({204, 304})

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")  # and anything not ASCII
_UNSAFE_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# -- errors ---------------------------------------------------------------------------------------


class WireError(Exception):
    """Every failure of this client that is not a local programming error."""


class InvalidURLError(WireError, ValueError):
    """A URL this client cannot send (no host, a bad port, an unsupported scheme...)."""


class ConnectError(WireError):
    """No connection to `host:port`: refused, unreachable, or a TLS handshake that failed
    (including certificate verification); `os_error` is what the OS or ssl module said."""

    def __init__(self, host: str, port: int, os_error: OSError) -> None:
        super().__init__(f"cannot connect to {host}:{port}: {os_error}")
        self.host = host
        self.port = port
        self.os_error = os_error


class NameResolutionError(ConnectError):
    """The host name did not resolve."""


class ConnectTimeoutError(WireError):
    """Connecting (TCP and TLS) took longer than the connect timeout."""


class ServerDisconnectedError(WireError):
    """The server closed the connection before a complete response head."""


class IncompleteBodyError(WireError):
    """The connection ended before the body did (its length, or its last chunk)."""

    def __init__(self, message: str, *, reset: bool = False) -> None:
        super().__init__(message)
        self.reset = reset


class ProtocolError(WireError):
    """The server sent something that is not HTTP/1.1 as we accept it."""


class StallError(WireError):
    """`Response.stream`: no body bytes for the stall timeout."""


# -- headers --------------------------------------------------------------------------------------


class Headers(Mapping[str, str]):
    """Response fields: case-insensitive, several values per name kept in order. As a mapping,
    a name gives its first value; `getall` gives every value."""

    __slots__ = ("_index", "_items")

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = []
        self._index: dict[str, list[str]] = {}
        for name, value in items or ():
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))
        self._index.setdefault(name.lower(), []).append(value)

    def __getitem__(self, name: str) -> str:
        return self._index[name.lower()][0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def getall(self, name: str, default: list[str] | None = None) -> list[str]:
        found = self._index.get(name.lower())
        if found is None:
            if default is None:
                raise KeyError(name)
            return default
        return list(found)

    def fields(self) -> list[tuple[str, str]]:
        """Every (name, value) as received, in order."""
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


# -- URLs -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL's request goes and what its request line and Host field say."""

    scheme: str
    host: str  # for connecting: a name (IDNA-encoded) or an IP literal without brackets
    port: int
    host_header: str  # what the Host field says: brackets for IPv6, the port when not default
    path: str  # path and query, percent-encoded, as sent on the request line
    authorization: str | None = None  # Basic credentials from the URL's userinfo

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @classmethod
    def of(cls, url: str) -> Target:
        """Parse `url`. An ASCII URL without spaces is taken as already encoded and sent byte
        for byte (re-quoting could break a CDN's signed query); anything else is encoded the
        way yarl encodes it (imported only then): non-ASCII and spaces in the path and query
        percent-encoded, valid %XX sequences kept, a non-ASCII host IDNA-encoded."""
        if url.isascii() and " " not in url:
            try:
                parts = urlsplit(url)
                port = parts.port
            except ValueError as exc:
                raise InvalidURLError(f"{url!r}: {exc}") from None
            scheme = parts.scheme.lower()
            host = parts.hostname or ""
            path = parts.path or "/"
            if parts.query:
                path = f"{path}?{parts.query}"
            user, password = parts.username, parts.password
        else:
            from yarl import URL  # only for URLs that need encoding: it costs ~10 ms to import

            try:
                parsed = URL(url)
                port = parsed.explicit_port
                host = parsed.raw_host or ""
            except (ValueError, UnicodeError) as exc:
                raise InvalidURLError(f"{url!r}: {exc}") from None
            scheme = parsed.scheme.lower()
            path = parsed.raw_path_qs or "/"
            user, password = parsed.raw_user, parsed.raw_password
        if scheme not in _DEFAULT_PORTS:
            raise InvalidURLError(f"{url!r}: not an http or https URL")
        if not host:
            raise InvalidURLError(f"{url!r}: no host")
        host = host.lower()
        default = _DEFAULT_PORTS[scheme]
        port = default if port is None else port
        if not 0 < port < 65536:
            raise InvalidURLError(f"{url!r}: port {port} out of range")
        if not (path + host).isascii() or _UNSAFE_TARGET.search(path + host):
            raise InvalidURLError(f"{url!r}: characters that cannot be sent")
        shown = f"[{host.partition('%')[0]}]" if ":" in host else host
        host_header = shown if port == default else f"{shown}:{port}"
        authorization = None
        if user is not None:
            pair = f"{unquote(user)}:{unquote(password or '')}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode("ascii")
        return cls(scheme, host, port, host_header, path, authorization)


# -- the session ----------------------------------------------------------------------------------


class Session:
    """Connections shared by every request made through it: a keep-alive pool per (scheme,
    host, port), at most `max_idle` idle in all and `max_idle_per_host` per key (limits on
    concurrent connections are the caller's: see limiter.ConnectionSlots). `headers` go on
    every request unless the request names the same field. For https, the default SSL
    context (verification on) is made on the first https request, so plain-http work never
    pays for it; pass `ssl_context` to trust something else (e.g. a test's own CA)."""

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float | None = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        max_idle: int = 100,
        max_idle_per_host: int = 32,
        read_buffer: int = READ_BUFFER,
    ) -> None:
        self.headers: dict[str, str] = dict(headers or {})
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.max_idle_per_host = max_idle_per_host
        self.read_buffer = read_buffer
        self._ssl_context = ssl_context
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self._idle_count = 0
        self._active: set[_Connection] = set()
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
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

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
        head = _request_head(method, target, self.headers, headers or {})
        timeout = self.connect_timeout if connect_timeout is None else connect_timeout
        for attempt in range(2):
            conn = self._take_idle(target.key) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect(target, timeout)
            try:
                return await conn.exchange(head, method, url, recv_size)
            except _NothingReceived as nothing:
                if reused and attempt == 0:
                    continue  # the server dropped the idle connection as we reused it
                raise ServerDisconnectedError(
                    f"{target.host_header} closed the connection without answering"
                ) from nothing.__cause__
        raise AssertionError("unreachable")

    # -- connections ----------------------------------------------------------------------------

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
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

    async def _connect(self, target: Target, within: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        context = self.ssl_context() if target.scheme == "https" else None
        conn = _Connection(self, target.key)
        try:
            async with asyncio.timeout(within) as deadline:
                await loop.create_connection(
                    lambda: conn,
                    target.host,
                    target.port,
                    ssl=context,
                    server_hostname=target.host.partition("%")[0] if context else None,
                    happy_eyeballs_delay=0.25,
                )
        except TimeoutError:
            if deadline.expired():
                raise ConnectTimeoutError(
                    f"connecting to {target.host_header} took over {within:g} s"
                ) from None
            raise
        except socket.gaierror as exc:
            raise NameResolutionError(target.host, target.port, exc) from exc
        except UnicodeError as exc:  # a name IDNA cannot encode (an empty label, too long)
            raise InvalidURLError(f"invalid host name {target.host!r}: {exc}") from exc
        except OSError as exc:  # refused, unreachable, TLS (ssl.SSLError is an OSError)
            raise ConnectError(target.host, target.port, exc) from exc
        self.connections_opened += 1
        self._active.add(conn)
        return conn

    def _give_back(self, conn: _Connection) -> None:
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

    def _forget(self, conn: _Connection) -> None:
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


def _request_head(
    method: str, target: Target, defaults: Mapping[str, str], extra: Mapping[str, str]
) -> bytes:
    fields: dict[str, tuple[str, str]] = {"host": ("Host", target.host_header)}
    if target.authorization is not None:
        fields["authorization"] = ("Authorization", target.authorization)
    for source in (defaults, extra):
        for name, value in source.items():
            if not _TOKEN.fullmatch(name.encode("latin-1", "replace")) or _UNSAFE_HEADER.search(
                value
            ):
                raise ValueError(f"a header that cannot be sent: {name!r}")
            fields[name.lower()] = (name, value)
    lines = [f"{method} {target.path} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in fields.values()]
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("a header value outside Latin-1") from None


# -- one connection: the parser -------------------------------------------------------------------


class _NothingReceived(Exception):
    """The connection ended before any byte of the response (its __cause__ says how)."""


_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(
    9
)


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection: sends a request, parses the response in its receive buffer and
    hands body bytes to the current Response (see the module docstring)."""

    def __init__(self, session: Session, key: tuple[str, str, int]) -> None:
        self._session = session
        self.key = key
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer: memoryview | None = None
        self._scratch: memoryview | None = None
        self._lost = False
        self._lost_exc: Exception | None = None  # how the connection ended, once it has
        self._state = _IDLE
        self._method = "GET"
        self._recv_size = 0  # the current exchange's cap per receive (0: none)
        self._url = ""
        self._received = False  # any byte of the current response
        self._head = bytearray()
        self._line = bytearray()
        self._left = 0  # body bytes left in the Content-Length or the chunk
        self._trailer_bytes = 0
        self._keep_alive = False
        self._head_waiter: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._held: memoryview | None = None  # body bytes that came before the reader attached
        self._attached = False  # the current response's reader is ready for its body
        # The rest of the response is in the buffer already (held, not yet handed over): a
        # receive now would be bytes nobody asked for, so reading goes on into the scratch
        # buffer instead of pausing (a pause and a resume are two epoll_ctl calls each).
        self._sealed = False
        # Where the next receive lands: bytes before it may still be wanted (held, or views a
        # reader has), so receives go on after them rather than pausing until they are read.
        self._fill = 0
        self._paused = False
        self.idle_since = 0.0

    @property
    def usable(self) -> bool:
        return not self._lost and self._state == _IDLE and self._transport is not None

    # -- the exchange ---------------------------------------------------------------------------

    async def exchange(self, head: bytes, method: str, url: str, recv_size: int = 0) -> Response:
        transport = self._transport
        if transport is None or self._lost or transport.is_closing():
            self._session._forget(self)
            raise _NothingReceived
        self._buffer = self._session._get_buffer()
        self._method, self._url = method, url
        self._recv_size = recv_size
        self._state = _HEAD
        self._received = False
        self._attached = False
        self._sealed = False
        self._held = None
        self._fill = 0
        self._head.clear()
        waiter: asyncio.Future[Response] = self._loop.create_future()
        self._head_waiter = waiter
        transport.write(head)
        try:
            return await waiter
        except BaseException:
            self.close()
            raise
        finally:
            self._head_waiter = None

    def close(self) -> None:
        """Close the connection (idempotent); a reader still waiting on it sees the end."""
        self._state = _DONE
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self._session._forget(self)
        self.put_buffer()
        response, self._response = self._response, None
        if response is not None and not response._ended:
            response._error(IncompleteBodyError("the connection was closed before the body ended"))

    def put_buffer(self) -> None:
        if self._buffer is not None:
            buffer, self._buffer = self._buffer, None
            self._session._put_buffer(buffer)

    def pause(self) -> None:
        if (
            not self._paused
            and self._transport is not None
            and not self._lost
            and self._expects_body()
        ):
            self._paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self._transport is not None and not self._lost:
            self._paused = False
            self._transport.resume_reading()

    def _expects_body(self) -> bool:
        """Whether more bytes of the current response may still land in the buffer. When none
        can, pausing protects nothing: the connection keeps reading (into the scratch buffer),
        which is also how a server's close of it is noticed."""
        state = self._state
        if self._sealed or state in (_IDLE, _DONE):
            return False
        return not (state == _LENGTH and self._left == 0 and self._held is None)

    def _hold(self, data: memoryview) -> None:
        """Body bytes before the reader is ready (the last ones received): they wait where they
        landed, after any held already. If they are all there is to come, later bytes are
        unasked-for; else receiving goes on after them while there is room."""
        assert self._buffer is not None
        total = len(data) if self._held is None else len(self._held) + len(data)
        self._held = self._buffer[self._fill - total : self._fill]
        if self._state == _LENGTH and total >= self._left:
            self._sealed = True
        else:
            self._steer()

    def _after_feed(self) -> None:
        """After bytes were handed over: a sink is done with them when it returns, so the
        next receive may land at the start again; views (read_chunk) keep theirs until the
        reader comes back for more (`rewind`)."""
        response = self._response
        if self._held is None and (
            response is None or response._sink is not None or not self._attached
        ):
            self._fill = 0
        self._steer()

    def rewind(self) -> None:
        """The reader holds no view of the buffer any more: receive from its start again."""
        if self._held is None:
            self._fill = 0
        self._steer()

    def _steer(self) -> None:
        """Read on, or pause: only while the reader asked for a pause (or small steps, with
        views out), or too little room is left after the bytes still wanted. Each change is
        an epoll_ctl on the selector loop, so none is made that protects nothing."""
        response, buffer = self._response, self._buffer
        if response is None or buffer is None or not self._expects_body():
            return
        asked = response._sink_paused or bool(response.recv_size and response._views)
        cramped = len(buffer) - self._fill < max(1, min(_MIN_ROOM, len(buffer) // 2))
        if asked or cramped:
            self.pause()
        else:
            self.resume()

    def _unasked(self) -> None:
        """Bytes after a complete response or on an idle connection: it cannot be trusted with
        another request. The buffer stays with a reader that may still hold views of it."""
        self._keep_alive = False
        if self._state == _IDLE:
            self._state = _DONE
        if self._buffer is None:
            self.close()
        else:
            self._close_transport()

    def attach(self) -> None:
        """The response's reader is ready: hand it the body bytes that came before it and
        read on (unless it holds views again, or asked for a pause)."""
        self._attached = True
        held, self._held = self._held, None
        if held is not None:
            try:
                self._feed(held)
            except Exception as exc:
                self._fail(exc)
                return
            if self._lost:
                self._on_lost()
                return
        self._after_feed()

    # -- protocol callbacks (on the loop; never raise) --------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._buffer is not None and not self._sealed and self._state not in (_IDLE, _DONE):
            fill, response = self._fill, self._response
            size = response.recv_size if response is not None else self._recv_size
            if size:
                return self._buffer[fill : fill + size]
            return self._buffer[fill:]
        if self._scratch is None:  # bytes on an idle connection: only to notice and drop it
            self._scratch = memoryview(bytearray(256))
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self._buffer is None or self._sealed or self._state in (_IDLE, _DONE):
            self._unasked()  # (they went to the scratch buffer)
            return
        self._received = True
        start = self._fill
        self._fill = start + nbytes
        data = self._buffer[start : self._fill]
        try:
            if self._state != _HEAD and not self._attached:
                self._hold(data)
            else:
                self._feed(data)
                self._after_feed()
        except Exception as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost says what it means

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._lost_exc = exc
        self._session._forget(self)
        if self._held is None:  # else: once the reader has the bytes that came with the head
            self._on_lost()

    def _on_lost(self) -> None:
        """What the end of the connection means for the response in flight, if any."""
        state, exc = self._state, self._lost_exc
        self._state = _DONE
        if state in (_IDLE, _DONE):
            return
        if state == _UNTIL_CLOSE and exc is None:
            self._finish_response(reusable=False)  # the end of a close-delimited body
            return
        if state == _HEAD:
            if not self._received:
                nothing = _NothingReceived()
                nothing.__cause__ = exc
                self._fail(nothing)
            else:
                self._fail(ServerDisconnectedError("the connection closed in the middle of a head"))
            return
        reset = isinstance(exc, ConnectionResetError) or (
            exc is not None and "reset" in str(exc).lower()
        )
        how = "reset" if reset else "closed"
        error = IncompleteBodyError(f"the connection {how} before the body ended", reset=reset)
        error.__cause__ = exc
        self._fail(error)

    # -- parsing --------------------------------------------------------------------------------

    def _feed(self, data: memoryview) -> None:
        while data:
            state = self._state
            if state == _HEAD:
                data = self._feed_head(data)
                if self._state == _HEAD:
                    continue
                if self._state == _LENGTH and self._left == 0:  # no body (HEAD, 204, 304, 0)
                    self._body_done(reusable=not data)
                elif data:
                    self._hold(data)
                return
            elif state in (_LENGTH, _CHUNK_DATA):
                take = min(len(data), self._left)
                self._left -= take
                piece, data = data[:take], data[take:]
                if self._left == 0 and state == _CHUNK_DATA:
                    self._state = _CHUNK_END
                wanted = self._deliver(piece)
                if self._left == 0 and state == _LENGTH:  # read whole, wanted or not
                    self._body_done(reusable=not data)
                    return
                if not wanted:
                    self._abandon()
                    return
            elif state == _UNTIL_CLOSE:
                if not self._deliver(data):
                    self._abandon()
                return
            elif state in (_CHUNK_SIZE, _CHUNK_END, _TRAILERS):
                line, data = self._take_line(data)
                if line is None:
                    return
                self._chunk_line(line)
                if self._state == _DONE:
                    self._body_done(reusable=not data)
                    return
            else:  # bytes after the response ended: the connection cannot be trusted
                self._state = _DONE
                self._close_transport()
                return

    def _take_line(self, data: memoryview) -> tuple[bytes | None, memoryview]:
        end = bytes(data[: MAX_CHUNK_LINE + 2]).find(b"\n")
        if end < 0:
            self._line += data
            if len(self._line) > MAX_CHUNK_LINE:
                raise ProtocolError("a chunk line over 4 KiB")
            return None, _EMPTY
        self._line += data[:end]
        line = bytes(self._line).removesuffix(b"\r")
        self._line.clear()
        if len(line) > MAX_CHUNK_LINE:
            raise ProtocolError("a chunk line over 4 KiB")
        return line, data[end + 1 :]

    def _chunk_line(self, line: bytes) -> None:
        state = self._state
        if state == _CHUNK_END:
            if line:
                raise ProtocolError("chunk data longer than its size")
            self._state = _CHUNK_SIZE
        elif state == _CHUNK_SIZE:
            match = _CHUNK_LINE.fullmatch(line)
            if match is None:
                raise ProtocolError(f"invalid chunk size line {_shown(line)}")
            size = int(match.group(1), 16)
            if size == 0:
                self._state = _TRAILERS
                self._trailer_bytes = 0
            else:
                self._left = size
                self._state = _CHUNK_DATA
        else:  # trailers: checked like fields, then ignored
            if not line:
                self._state = _DONE
                return
            self._trailer_bytes += len(line) + 2
            if self._trailer_bytes > MAX_HEAD:
                raise ProtocolError("trailer fields over 64 KiB")
            _parse_field(line)

    def _feed_head(self, data: memoryview) -> memoryview:
        """Take head bytes from `data` (copying only the head, in small steps: the body that
        follows it in the buffer stays where it is); returns what follows the head."""
        taken = 0
        while True:
            step = data[taken : taken + _HEAD_STEP]
            if not step:
                return _EMPTY  # the head goes on in the next receive
            start = max(0, len(self._head) - 3)
            self._head += step
            taken += len(step)
            end, sep = _head_end(self._head, start)
            if end >= 0:
                break
            if len(self._head) > MAX_HEAD:
                raise ProtocolError("a response head over 64 KiB")
        if end > MAX_HEAD:
            raise ProtocolError("a response head over 64 KiB")
        rest = data[taken - (len(self._head) - end - sep) :]
        block = bytes(self._head[:end])
        self._head.clear()
        status, reason, version, headers = _parse_head(block)
        if 100 <= status < 200:
            if status == 101:
                raise ProtocolError("an unrequested protocol switch (101)")
            return rest  # an interim response: the real one follows
        self._begin_body(status, reason, version, headers)
        return rest

    def _begin_body(self, status: int, reason: str, version: str, headers: Headers) -> None:
        connection = ",".join(headers.getall("Connection", [])).lower()
        self._keep_alive = version == "HTTP/1.1" and "close" not in _tokens(connection)
        encodings = _tokens(",".join(headers.getall("Transfer-Encoding", [])).lower())
        length = _content_length(headers)
        response = self._response = Response(self, self._method, self._url, status, reason)
        response.recv_size = self._recv_size
        response.version, response.headers = version, headers
        if self._method == "HEAD" or status in _NO_BODY_STATUSES:
            self._state = _LENGTH
            self._left = 0
        elif encodings:
            if encodings != ["chunked"]:
                raise ProtocolError(f"unsupported Transfer-Encoding {', '.join(encodings)!r}")
            self._state = _CHUNK_SIZE
            if length is not None:  # RFC 9112 6.3: chunked wins, and the connection ends
                self._keep_alive = False
        elif length is not None:
            self._state = _LENGTH
            self._left = length
        else:
            self._state = _UNTIL_CLOSE
            self._keep_alive = False
        # No pause until the reader attaches: body bytes that land before then are held
        # (buffer_updated), and only then does reading stop, if more is to come.
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # -- handing over -----------------------------------------------------------------------------

    def _deliver(self, data: memoryview) -> bool:
        """Body bytes for the response; False: it wants no more."""
        response = self._response
        if response is None:
            return False
        return not data or response._body(data)

    def _abandon(self) -> None:
        """The reader wants no more of this body: the rest is dropped with the connection."""
        self._state = _DONE
        self._finish_response(reusable=False)

    def _body_done(self, *, reusable: bool) -> None:
        self._state = _IDLE if reusable and self._keep_alive and not self._lost else _DONE
        self._finish_response(reusable=self._state == _IDLE)

    def _finish_response(self, *, reusable: bool) -> None:
        response = self._response
        self._response = None
        if not reusable:
            self._close_transport()
        if response is not None:
            response._end(reusable)

    def _close_transport(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _fail(self, exc: BaseException) -> None:
        self._state = _DONE
        self._close_transport()
        self._session._forget(self)
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
            return
        response, self._response = self._response, None
        if response is not None:
            response._error(exc)


def _head_end(head: bytearray, start: int) -> tuple[int, int]:
    """Where the head ends (blank line) and the separator's length; (-1, 0) if not yet.
    Bare LF line ends are accepted (RFC 9112 2.2)."""
    lf = head.find(b"\n\n", start)
    crlf = head.find(b"\n\r\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 1, 2
    if lf >= 0:
        return lf + 1, 1
    return -1, 0


def _parse_head(block: bytes) -> tuple[int, str, str, Headers]:
    lines = [line.removesuffix(b"\r") for line in block.split(b"\n")]
    if lines and not lines[-1]:
        lines.pop()
    match = _STATUS_LINE.fullmatch(lines[0]) if lines else None
    if match is None:
        raise ProtocolError(f"invalid status line {_shown(lines[0] if lines else b'')}")
    if len(lines) - 1 > MAX_FIELDS:
        raise ProtocolError(f"more than {MAX_FIELDS} header fields")
    headers = Headers()
    for line in lines[1:]:
        name, value = _parse_field(line)
        headers.add(name, value)
    version = f"HTTP/1.{match.group(1).decode()}"
    reason = (match.group(3) or b"").decode("latin-1").strip()
    return int(match.group(2)), reason, version, headers


def _parse_field(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise ProtocolError("obsolete line folding in a header field")
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        raise ProtocolError(f"invalid header line {_shown(line)}")
    if _FIELD_VALUE_BAD.search(value):
        raise ProtocolError(f"a control character in header {name.decode('latin-1')!r}")
    return name.decode("latin-1"), value.strip(b" \t").decode("latin-1")


def _content_length(headers: Headers) -> int | None:
    values = headers.getall("Content-Length", [])
    if not values:
        return None
    found = {v.strip() for value in values for v in value.split(",")}
    if len(found) != 1:
        raise ProtocolError(f"conflicting Content-Length values {sorted(found)!r}")
    text = found.pop()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ProtocolError(f"invalid Content-Length {text!r}")
    return int(text)


def _tokens(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def _shown(line: bytes) -> str:
    return repr(line[:80].decode("latin-1"))


# -- the response ---------------------------------------------------------------------------------

BodySink = Callable[[memoryview], bool]
"""sink(data) -> whether to go on: called on the loop with body bytes as they land, in order;
`data` is a view of the connection's buffer, valid only during the call. May raise (the stream
ends with that error) or return False (no more wanted: the connection is dropped)."""


class Response:
    """A response whose head is in. Read its body once: `read_chunk` (pull), `read` (all of it)
    or `stream` (push, zero-copy); then `release()` (pooled if read whole) or `close()`."""

    def __init__(self, conn: _Connection, method: str, url: str, status: int, reason: str) -> None:
        self._conn: _Connection | None = conn
        self.method = method
        self.url = url
        self.status = status
        self.reason = reason
        self.version = "HTTP/1.1"
        self.headers = Headers()
        self._views: collections.deque[memoryview] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False  # the whole body has been received
        self._reusable = False
        self._failure: BaseException | None = None
        self._attached = False
        self._sink: BodySink | None = None
        self._sink_paused = False
        self._last = 0.0  # when body bytes last arrived (the stall clock of `stream`)
        # At most this many bytes per receive (0: the whole buffer). A reader under a bandwidth
        # limit receives in small steps, so pausing to pay for them keeps the rate smooth.
        self.recv_size = 0

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason!r} {self.method} {self.url}>"

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    @property
    def at_eof(self) -> bool:
        """The whole body was received and read."""
        return self._ended and not self._views

    # -- reading ----------------------------------------------------------------------------------

    async def read_chunk(self, limit: int = READ_BUFFER) -> memoryview:
        """The next body bytes (at most `limit`), or an empty view at the end. The view points
        into the connection's buffer and is valid until the next call on this response."""
        self.recv_size = limit if limit < READ_BUFFER else 0
        while True:
            if self._views:
                view = self._views[0]
                if len(view) > limit:
                    self._views[0] = view[limit:]
                    return view[:limit]
                return self._views.popleft()
            if self._failure is not None:
                raise self._failure
            if self._ended:
                self.release()
                return _EMPTY
            await self._wait()

    async def read(self) -> bytes:
        """The whole body (for small bodies: it is all held in memory)."""
        parts: list[bytes] = []
        while data := await self.read_chunk():
            parts.append(bytes(data))
        return b"".join(parts)

    async def stream(self, sink: BodySink, *, stall: float | None = None) -> None:
        """Hand every body byte to `sink` as it lands (see BodySink); return at the end of the
        body or when the sink wants no more. StallError when no byte arrives for `stall`
        seconds while the sink is not paused (`pause`/`resume`)."""
        if self._attached:
            raise RuntimeError("the body is being read already")
        self._sink = sink
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        try:
            while not self._ended and self._failure is None:
                if stall is None or self._sink_paused:
                    await self._wait(stall)
                    continue
                left = self._last + stall - loop.time()
                if left <= 0:
                    raise StallError(f"no data for {stall:g} s")
                await self._wait(left)
            if self._failure is not None:
                raise self._failure
        except BaseException:
            self.close()
            raise
        self.release()

    def pause(self) -> None:
        """(stream) Stop receiving until `resume`: the time does not count as a stall."""
        self._sink_paused = True
        if self._conn is not None:
            self._conn.pause()

    def resume(self) -> None:
        self._sink_paused = False
        self._last = asyncio.get_running_loop().time()
        if self._conn is not None and not self._ended:
            self._conn.resume()

    async def _wait(self, within: float | None = None) -> None:
        conn = self._conn
        if conn is None:
            raise RuntimeError("the response was released")
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        if not self._attached:
            self._attached = True
            conn.attach()
        elif not self._holding():
            conn.rewind()
        if self._views or self._ended or self._failure is not None:
            self._waiter = None
            return
        try:
            if within is None:
                await waiter
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(within):
                        await asyncio.shield(waiter)
        finally:
            self._waiter = None

    def release(self) -> None:
        """Done with the body: the connection goes back to the pool if the body was received
        whole (and the server keeps it alive), else it is closed. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if not self._attached and not self._ended:
            # An unread body (an error page, a redirect): take it if it came with the head.
            self._attached = True
            self._sink = _discard
            conn.attach()
        if self._ended and self._reusable:
            self._views.clear()
            conn._session._give_back(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Drop the connection whatever is left of the body. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._ended and self._reusable and not self._views and self._attached:
                conn._session._give_back(conn)
            else:
                conn.close()

    # -- from the connection ----------------------------------------------------------------------

    def _holding(self) -> bool:
        return bool(self._views) or self._sink_paused

    def _body(self, data: memoryview) -> bool:
        if self._sink is not None:
            self._last = asyncio.get_running_loop().time()
            return self._sink(data)
        # The views point into the buffer: later receives land after them (`_fill`) until
        # the reader is back for more, or the connection pauses when room runs out.
        self._views.append(data)
        self._wake()
        return True

    def _end(self, reusable: bool) -> None:
        self._ended = True
        self._reusable = reusable
        self._wake()

    def _error(self, exc: BaseException) -> None:
        self._failure = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _discard(data: memoryview) -> bool:
    return True
