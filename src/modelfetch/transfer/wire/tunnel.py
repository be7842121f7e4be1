"""An https request through an http proxy: CONNECT host:port, then TLS with the origin inside.

The proxy sees the CONNECT line (the origin's host and port) and, if the proxy URL carried
them, its own credentials; everything after is TLS between us and the origin, so the Hub
token and the request itself never reach the proxy readable.
"""

from __future__ import annotations

import asyncio
import ssl

from modelfetch.core.proxy import Proxy
from modelfetch.transfer.wire.connection import Connection
from modelfetch.transfer.wire.errors import ProtocolError, ProxyRefusedError
from modelfetch.transfer.wire.parse import MAX_HEAD, ResponseParser, head_end
from modelfetch.transfer.wire.target import Target

__all__ = ["open_tunnel"]


class _Handshake(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT: one head, and nothing after it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._head = bytearray()
        self.extra = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.answer.done():  # bytes before our TLS hello: not a proxy we can trust
            self.extra = True
            return
        start = max(0, len(self._head) - 3)
        self._head += data
        end, sep = head_end(self._head, start)
        if end < 0:
            if len(self._head) > MAX_HEAD:
                self.answer.set_exception(ProtocolError("a proxy answer head over 64 KiB"))
            return
        # Bytes after the head: a refusal's error page (fine), or, after a 2xx, bytes that
        # would be taken for the origin's TLS (not fine: checked once the status is known).
        self.extra = end + sep != len(self._head)
        self.answer.set_result(bytes(self._head[: end + sep]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            error = ProtocolError("the proxy closed the connection before answering CONNECT")
            error.__cause__ = exc
            self.answer.set_exception(error)


async def open_tunnel(
    proxy: Proxy,
    target: Target,
    conn: Connection,
    context: ssl.SSLContext,
    *,
    happy_eyeballs_delay: float = 0.25,
) -> None:
    """Connect to `proxy`, ask it for a tunnel to `target`, and start TLS with the origin
    through it; `conn` then owns the TLS transport. OSError from the TCP step (the caller
    names the proxy in it); ProxyRefusedError for a non-2xx answer; ssl errors from the
    origin's handshake (wrapped as ConnectError by the caller, naming the origin)."""
    loop = asyncio.get_running_loop()
    transport, handshake = await loop.create_connection(
        _Handshake, proxy.host, proxy.port, happy_eyeballs_delay=happy_eyeballs_delay
    )
    try:
        lines = [f"CONNECT {target.authority} HTTP/1.1", f"Host: {target.authority}"]
        credentials = proxy.authorization()
        if credentials is not None:
            lines.append(f"Proxy-Authorization: {credentials}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = await handshake.answer
        status, reason, _, headers = ResponseParser().head(head)
        if not 200 <= status < 300:
            detail = f"{status} {reason}".strip()
            if status == 407:
                asked = headers.get("Proxy-Authenticate", "")
                detail += " (it wants credentials" + (f": {asked}" if asked else "") + ")"
            raise ProxyRefusedError(
                f"the proxy {proxy.url()} refused a tunnel to {target.authority}: {detail}",
                status=status,
            )
        if handshake.extra:
            raise ProtocolError("the proxy sent bytes after its answer")
        tls = await loop.start_tls(
            transport, conn, context, server_hostname=target.host.partition("%")[0]
        )
    except BaseException:
        transport.close()
        raise
    assert isinstance(tls, asyncio.Transport)
    conn.connection_made(tls)
