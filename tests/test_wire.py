"""transfer/wire.py, our HTTP/1.1 client, against real servers on loopback: well-formed answers
from aiohttp.web, odd and hostile ones from raw asyncio servers that write bytes as given."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from modelfetch.core.errors import NetworkError
from modelfetch.core.proxy import Proxy
from modelfetch.transfer import TransferRequest, fetch_file, make_session
from modelfetch.transfer.failures import translate_exception
from modelfetch.transfer.wire import (
    MAX_FIELDS,
    ConnectError,
    IncompleteBodyError,
    InvalidURLError,
    NameResolutionError,
    ProtocolError,
    ServerDisconnectedError,
    Session,
    StallError,
    Target,
    _Connection,
)

MiB = 1 << 20


# -- raw servers ----------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    connection: int  # which connection (0, 1, ...) carried it


Respond = Callable[[Seen], bytes | None]
"""The raw bytes to answer a request with; None: close the connection without answering."""


@dataclass
class RawServer:
    """Serves requests one after another on each connection, answering each with `respond`;
    a connection stays open until the answer says `Connection: close` or `close_after` says
    so. Records every request and counts connections."""

    respond: Respond
    close_after: Callable[[Seen], bool] = lambda seen: False
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, target, _ = head[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in head[1:] if line)
                }
                seen = Seen(method, target, headers, number)
                self.seen.append(seen)
                answer = self.respond(seen)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer.lower() or self.close_after(seen):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    listeners: list[asyncio.Server] = []

    async def start(respond: Respond, host: str = "127.0.0.1", **kw: object) -> RawServer:
        server = RawServer(respond, **kw)  # type: ignore[arg-type]
        listener = await asyncio.start_server(server.handle, host, 0)
        listeners.append(listener)
        port = listener.sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        server.url = f"http://{shown}:{port}"
        return server

    yield start
    for listener in listeners:
        listener.close()


def answer(
    status: int = 200,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    *,
    length: bool = True,
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{version} {status} Reason"]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@pytest.fixture
async def session() -> AsyncIterator[Session]:
    async with make_session() as s:
        yield s


# -- bodies ---------------------------------------------------------------------------------------


async def test_a_content_length_body_and_its_head(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    body = bytes(range(256)) * 1000
    fields = [("X-Multi", "a"), ("x-multi", "b"), ("ETag", '"e1"')]
    server = await serve(lambda seen: answer(200, body, fields))
    async with make_session() as session:
        response = await session.request("GET", f"{server.url}/f?q=1")
        assert response.status == 200 and response.reason == "Reason"
        assert response.version == "HTTP/1.1"
        assert response.url == f"{server.url}/f?q=1"
        assert response.headers["etag"] == '"e1"' and response.headers.get("ETAG") == '"e1"'
        assert response.headers.getall("X-MULTI") == ["a", "b"]
        assert await response.read() == body
        assert response.at_eof
    seen = server.seen[0]
    assert seen.method == "GET" and seen.target == "/f?q=1"
    assert seen.headers["host"] == server.url.removeprefix("http://")
    assert seen.headers["accept-encoding"] == "identity"
    assert seen.headers["user-agent"].startswith("modelfetch/")


async def test_a_large_body_from_aiohttp_arrives_whole_in_chunks(session: Session) -> None:
    body = bytes(range(251)) * (12 * 4096)  # about 12 MiB: many receives

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body)

    async with web_app({"/big": handler}) as url:
        response = await session.request("GET", f"{url}/big")
        digest, sizes = hashlib.sha256(), []
        while data := await response.read_chunk(3 * MiB):
            assert len(data) <= 3 * MiB
            digest.update(data)
            sizes.append(len(data))
        assert sum(sizes) == len(body) and digest.digest() == hashlib.sha256(body).digest()
        # The same connection serves the next request.
        again = await session.request("GET", f"{url}/big")
        assert len(await again.read()) == len(body)
        assert session.connections_opened == 1


async def test_a_chunked_body_with_extensions_and_trailers(
    serve: Callable[..., Awaitable[RawServer]], session: Session
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b"1 ;ext\r\n \r\n"  # llhttp takes whitespace before the ";", not after it
        b"6\r\nworld!\r\n"
        b"0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
    )
    server = await serve(lambda seen: chunked)
    for _ in range(2):
        response = await session.request("GET", f"{server.url}/c")
        assert await response.read() == b"hello world!"
    assert server.connections == 1  # read to its last chunk: reused


async def test_a_body_delimited_by_close_and_an_http10_answer(
    serve: Callable[..., Awaitable[RawServer]], session: Session
) -> None:
    server = await serve(
        lambda seen: answer(200, b"until the end", length=False),
        close_after=lambda seen: True,
    )
    response = await session.request("GET", f"{server.url}/a")
    assert await response.read() == b"until the end"
    old = await serve(lambda seen: answer(200, b"old", version="HTTP/1.0"))
    for _ in range(2):
        response = await session.request("GET", f"{old.url}/b")
        assert response.version == "HTTP/1.0" and await response.read() == b"old"
    assert old.connections == 2  # HTTP/1.0: never reused


async def test_head_and_204_and_304_have_no_body(
    serve: Callable[..., Awaitable[RawServer]], session: Session
) -> None:
    def respond(seen: Seen) -> bytes:
        if seen.target == "/204":
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if seen.target == "/304":
            return b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"
        head = answer(200, b"x" * 1000)
        return head if seen.method == "GET" else head.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"

    server = await serve(respond)
    head = await session.request("HEAD", f"{server.url}/f")
    assert head.status == 200 and head.headers["Content-Length"] == "1000"
    assert await head.read() == b""
    for path, status in (("/204", 204), ("/304", 304)):
        response = await session.request("GET", f"{server.url}{path}")
        assert response.status == status and await response.read() == b""
    got = await session.request("GET", f"{server.url}/f")
    assert await got.read() == b"x" * 1000
    assert server.connections == 1


async def test_interim_1xx_answers_are_skipped(
    serve: Callable[..., Awaitable[RawServer]], session: Session
) -> None:
    server = await serve(
        lambda seen: (
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n" + answer(200, b"final")
        )
    )
    response = await session.request("GET", f"{server.url}/f")
    assert response.status == 200 and await response.read() == b"final"
    assert "Link" not in response.headers


# -- keep-alive -----------------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(
    serve: Callable[..., Awaitable[RawServer]], session: Session
) -> None:
    server = await serve(lambda seen: answer(200, seen.target.encode()))
    for n in range(5):
        response = await session.request("GET", f"{server.url}/{n}")
        assert await response.read() == f"/{n}".encode()
    assert server.connections == 1 and len(server.seen) == 5
    assert {s.connection for s in server.seen} == {0}


class CountingSession(Session):
    """A Session that counts its connections' pause_reading/resume_reading calls (each one an
    epoll_ctl on the selector loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses = 0
        self.resumes = 0
        self.transports: list[asyncio.Transport] = []

    async def __aenter__(self) -> CountingSession:
        return self

    async def _connect(
        self, target: Target, key: tuple[str, str, int], proxy: Proxy | None, within: float | None
    ) -> _Connection:
        conn = await super()._connect(target, key, proxy, within)
        transport = conn._transport
        assert transport is not None
        pause, resume = transport.pause_reading, transport.resume_reading

        def counted_pause() -> None:
            self.pauses += 1
            pause()

        def counted_resume() -> None:
            self.resumes += 1
            resume()

        transport.pause_reading = counted_pause  # type: ignore[method-assign]
        transport.resume_reading = counted_resume  # type: ignore[method-assign]
        self.transports.append(transport)
        return conn


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.01)


async def test_keep_alive_responses_do_not_pause_and_resume_reading_each(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    def respond(seen: Seen) -> bytes:
        body = seen.target.encode() * 100
        if seen.target.endswith("chunked"):
            chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            return answer(200, chunked, [("Transfer-Encoding", "chunked")], length=False)
        whole = answer(200, body)
        return whole[: -len(body)] if seen.method == "HEAD" else whole

    server = await serve(respond)
    rounds = 8
    async with CountingSession() as session:
        for n in range(rounds):
            response = await session.request("GET", f"{server.url}/{n}")  # read whole
            assert await response.read() == f"/{n}".encode() * 100
            response = await session.request("GET", f"{server.url}/{n}/chunked")
            assert await response.read() == f"/{n}/chunked".encode() * 100
            response = await session.request("GET", f"{server.url}/{n}/pulled")
            parts = [bytes(await response.read_chunk(7)) for _ in range(3)]
            parts.append(await response.read())
            assert b"".join(parts) == f"/{n}/pulled".encode() * 100
            streamed = bytearray()

            def sink(data: memoryview, into: bytearray = streamed) -> bool:
                into.extend(data)
                return True

            response = await session.request("GET", f"{server.url}/{n}/streamed")
            await response.stream(sink)
            assert bytes(streamed) == f"/{n}/streamed".encode() * 100
            response = await session.request("HEAD", f"{server.url}/{n}")
            response.release()
        assert server.connections == 1 and len(server.seen) == 5 * rounds
        # The whole of each body came with its head: holding it back from a receive that can
        # only be unasked-for bytes buys nothing, and an idle connection reads on as it waits.
        assert (session.pauses, session.resumes) == (0, 0)
        assert session.transports[0].is_reading()


async def test_a_pooled_connection_closed_by_the_server_is_noticed_and_not_reused(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    big = b"b" * (4 * MiB)  # more than the buffer holds while a view of it is kept
    server = await serve(
        lambda seen: answer(200, big if seen.target == "/big" else b"ok"),
        close_after=lambda seen: seen.target in ("/close", "/big"),
    )
    async with CountingSession() as session:
        for target in ("/close", "/big"):
            response = await session.request("GET", f"{server.url}{target}")
            first = bytes(await response.read_chunk())
            if target == "/big":
                await asyncio.sleep(0.1)  # the buffer fills up behind the view: reading pauses
            assert first + await response.read() == (big if target == "/big" else b"ok")
            assert session._idle_count == 1
            # The server closes it while it waits in the pool: noticed there, before any reuse
            # (no request is sent on it and then retried).
            await _until(lambda: session._idle_count == 0)
            seen = len(server.seen)
            response = await session.request("GET", f"{server.url}/after")
            assert await response.read() == b"ok"
            assert len(server.seen) == seen + 1
        assert server.connections == 3 and session.connections_opened == 3
        assert session.pauses == session.resumes > 0  # the big body's, each resumed
        assert session.transports[1].is_closing()


async def test_bytes_after_a_complete_body_leave_its_unread_views_intact() -> None:
    body = bytes(range(256)) * 16

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer(200, body))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"unasked-for " * 1000)  # while the reader still holds the body's views
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with CountingSession() as session:
            response = await session.request("GET", f"http://127.0.0.1:{port}/f")
            first = bytes(await response.read_chunk(100))
            await asyncio.sleep(0.3)
            rest = await response.read()
            assert first + rest == body
            assert session._idle_count == 0  # not pooled: it cannot be trusted
            assert session.pauses == 0
    finally:
        listener.close()


async def test_no_reuse_after_an_unread_body_or_connection_close(
    serve: Callable[..., Awaitable[RawServer]], session: Session
) -> None:
    big = b"z" * (4 * MiB)

    def respond(seen: Seen) -> bytes:
        if seen.target == "/close":
            return answer(200, b"bye", [("Connection", "close")])
        return answer(200, big if seen.target == "/big" else b"small")

    server = await serve(respond)
    response = await session.request("GET", f"{server.url}/big")
    assert len(await response.read_chunk(1000)) == 1000
    response.release()  # most of the body unread: the connection cannot serve another request
    assert await (await session.request("GET", f"{server.url}/s")).read() == b"small"
    assert server.connections == 2
    response = await session.request("GET", f"{server.url}/close")
    assert await response.read() == b"bye"
    assert await (await session.request("GET", f"{server.url}/s")).read() == b"small"
    assert server.connections == 3
    # A small unread body that came with the head is taken on release: the connection stays.
    response = await session.request("GET", f"{server.url}/s")
    response.release()
    assert await (await session.request("GET", f"{server.url}/s")).read() == b"small"
    assert server.connections == 3


async def test_a_stale_pooled_connection_is_replaced_once(
    serve: Callable[..., Awaitable[RawServer]], session: Session
) -> None:
    # Each connection answers one request, then drops the next without a byte (as a server
    # whose keep-alive timer ran out just as the request arrived does).
    answered: set[int] = set()

    def respond(seen: Seen) -> bytes | None:
        if seen.connection in answered:
            return None
        answered.add(seen.connection)
        return answer(200, b"ok")

    server = await serve(respond)
    for _ in range(3):
        response = await session.request("GET", f"{server.url}/f")
        assert await response.read() == b"ok"
    assert server.connections == 3 and len(server.seen) == 5  # two retried requests


async def test_a_fresh_connection_closed_without_an_answer_is_not_retried(
    serve: Callable[..., Awaitable[RawServer]], session: Session
) -> None:
    server = await serve(lambda seen: None)
    with pytest.raises(ServerDisconnectedError):
        await session.request("GET", f"{server.url}/f")
    assert server.connections == 1


async def test_two_stale_pooled_connections_cost_one_retry_on_a_fresh_one(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    answered: set[int] = set()

    def respond(seen: Seen) -> bytes | None:
        if seen.connection in answered:
            return None  # a kept-alive connection dies when it is reused
        answered.add(seen.connection)
        return answer(200, b"ok")

    server = await serve(respond)
    async with make_session() as session:
        first, second = await asyncio.gather(
            session.request("GET", f"{server.url}/a"), session.request("GET", f"{server.url}/b")
        )
        assert await first.read() == b"ok" and await second.read() == b"ok"
        assert server.connections == 2  # both pooled now, both stale on reuse
        again = await session.request("GET", f"{server.url}/c")
        assert await again.read() == b"ok"
    assert server.connections == 3 and len(server.seen) == 4  # one stale try, then a fresh one


async def test_the_pool_keeps_a_bounded_number_of_idle_connections(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await serve(lambda seen: answer(200, b"ok"))
    async with Session(max_idle_per_host=2) as session:
        responses = await asyncio.gather(
            *(session.request("GET", f"{server.url}/{n}") for n in range(5))
        )
        for response in responses:
            assert await response.read() == b"ok"
        assert server.connections == 5
        assert sum(len(pool) for pool in session._idle.values()) == 2


async def test_closing_the_session_ends_a_read_in_progress(
    serve: Callable[..., Awaitable[RawServer]],
) -> None:
    server = await serve(lambda seen: answer(200, b"x" * 1000)[:-500])  # and then nothing
    session = make_session()
    response = await session.request("GET", f"{server.url}/f")
    assert await response.read_chunk() == b"x" * 500
    reading = asyncio.ensure_future(response.read_chunk())
    await asyncio.sleep(0.05)
    await session.close()
    with pytest.raises(IncompleteBodyError):
        await asyncio.wait_for(reading, 5)
    with pytest.raises(RuntimeError, match="closed"):
        await session.request("GET", f"{server.url}/f")


async def test_a_stream_stopped_at_the_end_of_the_body_keeps_its_connection(
    serve: Callable[..., Awaitable[RawServer]], session: Session
) -> None:
    size = 3 * MiB  # more than one receive buffer holds
    server = await serve(lambda seen: answer(200, b"a" * size))

    async def take(n: int) -> int:
        got = 0

        def sink(view: memoryview) -> bool:
            nonlocal got
            got += len(view)
            return got < n  # enough: no more wanted

        response = await session.request("GET", f"{server.url}/f")
        await response.stream(sink, stall=5)
        return got

    assert await take(size) == size  # stopped exactly at the end: read whole
    assert await take(size) == size
    assert server.connections == 1
    assert await take(1000) < size  # stopped midway: the rest goes with the connection
    assert await take(size) == size
    assert server.connections == 2


# -- hostile answers ------------------------------------------------------------------------------

MALFORMED_HEADS = {
    "no-status": b"200 OK\r\n\r\n",
    "http2": b"HTTP/2 200 OK\r\n\r\n",
    "icy": b"ICY 200 OK\r\n\r\n",
    "short-status": b"HTTP/1.1 20 OK\r\n\r\n",
    "no-colon": b"HTTP/1.1 200 OK\r\nContent-Length 5\r\n\r\nhello",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
    "folded": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n continued\r\nContent-Length: 0\r\n\r\n",
    "control-char": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "negative-length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "garbage-length": b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n",
    "huge-length": b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 30 + b"\r\n\r\n",
    "conflicting-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    "gzip-transfer": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    "switching": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    "too-many-fields": b"HTTP/1.1 200 OK\r\n"
    + b"".join(b"X-%d: v\r\n" % i for i in range(MAX_FIELDS + 1))
    + b"\r\n",
    "huge-head": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 << 10) + b"\r\n\r\n",
    "endless-head": b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 20_000,
}


@pytest.mark.parametrize("head", MALFORMED_HEADS.values(), ids=MALFORMED_HEADS.keys())
async def test_a_malformed_head_is_a_protocol_error(
    serve: Callable[..., Awaitable[RawServer]], session: Session, head: bytes
) -> None:
    server = await serve(lambda seen: head)
    with pytest.raises(ProtocolError):
        async with asyncio.timeout(5):
            response = await session.request("GET", f"{server.url}/f")
            await response.read()


@pytest.mark.parametrize("lengths", [b"5\r\nContent-Length: 5", b"5, 5", b"5, 6"])
async def test_a_repeated_content_length_is_refused_even_when_equal(
    serve: Callable[..., Awaitable[RawServer]], session: Session, lengths: bytes
) -> None:
    # llhttp (like Node) refuses any repetition, where RFC 9110 allows equal ones to be merged:
    # a response that says its length twice is one a request smuggler would send.
    server = await serve(
        lambda seen: b"HTTP/1.1 200 OK\r\nContent-Length: " + lengths + b"\r\n\r\nhello"
    )
    with pytest.raises(ProtocolError, match="Content-Length"):
        await session.request("GET", f"{server.url}/f")


MALFORMED_CHUNKS = {
    "not-hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "negative": b"-5\r\nhello\r\n0\r\n\r\n",
    "empty-size": b"\r\nhello\r\n0\r\n\r\n",
    "overlong-size": b"1" + b"0" * 20 + b"\r\nhello\r\n0\r\n\r\n",
    "data-longer-than-size": b"3\r\nhello\r\n0\r\n\r\n",
    "endless-size-line": b"5;" + b"x" * 10_000,
}


@pytest.mark.parametrize("body", MALFORMED_CHUNKS.values(), ids=MALFORMED_CHUNKS.keys())
async def test_a_malformed_chunk_is_a_protocol_error(
    serve: Callable[..., Awaitable[RawServer]], session: Session, body: bytes
) -> None:
    server = await serve(
        lambda seen: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    )
    response = await session.request("GET", f"{server.url}/f")
    with pytest.raises(ProtocolError, match="chunk"):
        async with asyncio.timeout(5):
            await response.read()


@pytest.mark.parametrize(
    "raw",
    [
        answer(200, b"x" * 500)[:-250],  # Content-Length says 500
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",  # no last chunk
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nhel",  # mid-chunk
    ],
    ids=["length", "chunked", "mid-chunk"],
)
async def test_a_body_that_ends_early_is_an_error(
    serve: Callable[..., Awaitable[RawServer]], session: Session, raw: bytes
) -> None:
    server = await serve(lambda seen: raw, close_after=lambda seen: True)
    response = await session.request("GET", f"{server.url}/f")
    with pytest.raises(IncompleteBodyError) as info:
        await response.read()
    assert not info.value.reset


async def test_a_close_in_the_middle_of_the_head(
    serve: Callable[..., Awaitable[RawServer]], session: Session
) -> None:
    server = await serve(
        lambda seen: b"HTTP/1.1 200 OK\r\nContent-Le", close_after=lambda seen: True
    )
    with pytest.raises(ServerDisconnectedError):
        await session.request("GET", f"{server.url}/f")


async def test_bytes_after_the_body_make_the_connection_unusable(
    serve: Callable[..., Awaitable[RawServer]], session: Session
) -> None:
    server = await serve(lambda seen: answer(200, b"ok") + b"HTTP/1.1 200 surprise\r\n\r\n")
    for _ in range(2):
        response = await session.request("GET", f"{server.url}/f")
        assert await response.read() == b"ok"
    assert server.connections == 2


async def test_a_stalled_stream_raises_stall_error(
    serve: Callable[..., Awaitable[RawServer]], session: Session
) -> None:
    server = await serve(lambda seen: answer(200, b"x" * 100)[:-50])  # and then nothing
    response = await session.request("GET", f"{server.url}/f")
    got: list[bytes] = []

    def sink(view: memoryview) -> bool:
        got.append(bytes(view))
        return True

    with pytest.raises(StallError):
        await response.stream(sink, stall=0.3)
    assert b"".join(got) == b"x" * 50


# -- hosts and URLs -------------------------------------------------------------------------------


async def test_a_path_with_spaces_and_unicode_goes_out_percent_encoded(
    serve: Callable[..., Awaitable[RawServer]], session: Session
) -> None:
    server = await serve(lambda seen: answer(200, b"ok"))
    cases = {
        "/dir/my model ü.gguf": "/dir/my%20model%20%C3%BC.gguf",
        "/already%20encoded/x%2Fy": "/already%20encoded/x%2Fy",  # not encoded twice
        "/signed?X-Amz-Signature=ab%2Bc&e=1": "/signed?X-Amz-Signature=ab%2Bc&e=1",
        "/mixed ü%20x?q=a b": "/mixed%20%C3%BC%20x?q=a+b",  # as yarl (before us) sent it
        "": "/",
    }
    for path in cases:
        await (await session.request("GET", f"{server.url}{path}")).read()
    assert [s.target for s in server.seen] == list(cases.values())


def test_hosts_ports_and_the_host_field() -> None:
    assert Target.of("http://Example.COM/x").host_header == "example.com"
    assert Target.of("http://example.com:80/x").host_header == "example.com"
    assert Target.of("https://example.com:8443/x").host_header == "example.com:8443"
    ipv6 = Target.of("http://[::1]:8080/x")
    assert (ipv6.host, ipv6.port, ipv6.host_header) == ("::1", 8080, "[::1]:8080")
    idna = Target.of("https://bücher.example/x")
    assert idna.host == "xn--bcher-kva.example" and idna.port == 443
    for bad in ("ftp://h/x", "http:///x", "http://h:99999/x", "http://h:port/x", "/relative"):
        with pytest.raises(InvalidURLError):
            Target.of(bad)


async def test_ipv6_loopback(serve: Callable[..., Awaitable[RawServer]], session: Session) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        server = await serve(lambda seen: answer(200, b"six"), host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    response = await session.request("GET", f"{server.url}/f")
    assert await response.read() == b"six"
    assert server.seen[0].headers["host"] == server.url.removeprefix("http://")


async def test_an_unresolvable_name_is_a_resolution_error() -> None:
    async with make_session() as s:
        with pytest.raises(InvalidURLError):  # IDNA refuses it before any lookup
            await s.request("GET", "http://a..invalid/f")


# -- https ----------------------------------------------------------------------------------------


@pytest.fixture
async def tls_server(tls_cert: tuple[Path, Path]) -> AsyncIterator[RawServer]:
    cert, key = tls_cert
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = RawServer(lambda seen: answer(200, b"secret " * 50_000))
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=context)
    server.url = f"https://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    yield server
    listener.close()


async def test_https_verifies_and_trusts_the_sessions_context(
    tls_server: RawServer, tls_cert: tuple[Path, Path], tmp_path: Path
) -> None:
    async with make_session() as plain:
        with pytest.raises(ConnectError) as info:
            await plain.request("GET", f"{tls_server.url}/f")
        assert isinstance(info.value.os_error, ssl.SSLCertVerificationError)
        # Through a transfer, the failure reads as what it is.
        with pytest.raises(NetworkError, match="certificate verify failed"):
            await fetch_file(plain, TransferRequest(url=f"{tls_server.url}/f", dest=tmp_path / "f"))
    trusted = ssl.create_default_context(cafile=str(tls_cert[0]))
    async with make_session(ssl_context=trusted) as session:
        for _ in range(2):
            response = await session.request("GET", f"{tls_server.url}/f")
            assert await response.read() == b"secret " * 50_000
        assert session.connections_opened == 1  # one kept-alive TLS connection
    assert tls_server.connections == 1 and len(tls_server.seen) == 2  # failed ones never spoke


async def test_plain_http_never_makes_an_ssl_context(
    serve: Callable[..., Awaitable[RawServer]], session: Session
) -> None:
    server = await serve(lambda seen: answer(200, b"ok"))
    await (await session.request("GET", f"{server.url}/f")).read()
    assert session._ssl_context is None


# -- errors as a transfer reports them ------------------------------------------------------------


async def test_connection_failures_read_clearly_in_a_transfer(
    serve: Callable[..., Awaitable[RawServer]], session: Session, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(NetworkError, match=rf"cannot connect to 127.0.0.1:{closed_port}"):
        await fetch_file(
            session, TransferRequest(url=f"http://127.0.0.1:{closed_port}/f", dest=tmp_path / "a")
        )
    short = await serve(lambda seen: answer(200, b"x" * 1000)[:-10], close_after=lambda s: True)
    with pytest.raises(NetworkError, match="closed the connection before the whole body arrived"):
        await fetch_file(session, TransferRequest(url=f"{short.url}/f", dest=tmp_path / "b"))
    garbage = await serve(lambda seen: b"SPAM\r\n\r\n")
    with pytest.raises(NetworkError, match="sent an invalid response: invalid status line"):
        await fetch_file(session, TransferRequest(url=f"{garbage.url}/f", dest=tmp_path / "c"))
    error = NameResolutionError("x.invalid", 80, socket.gaierror(-2, "Name or service not known"))
    translated = translate_exception(error, url="http://x.invalid/f", stall=30.0)
    assert translated is not None
    assert str(translated) == "cannot resolve x.invalid: [Errno -2] Name or service not known"


async def test_a_reset_reads_as_a_reset(session: Session, tmp_path: Path) -> None:
    async def reset_midway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer(200, b"y" * 100_000)[:50_000])
        await writer.drain()
        await asyncio.sleep(0.1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN

    listener = await asyncio.start_server(reset_midway, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        response = await session.request("GET", f"http://127.0.0.1:{port}/f")
        with pytest.raises(IncompleteBodyError) as info:
            await response.read()
        assert info.value.reset
        with pytest.raises(NetworkError, match="reset the connection before the whole body"):
            await fetch_file(
                session, TransferRequest(url=f"http://127.0.0.1:{port}/f", dest=tmp_path / "r")
            )
    finally:
        listener.close()


# -- what importing costs -------------------------------------------------------------------------


def test_importing_the_transfer_layer_does_not_import_aiohttp() -> None:
    code = (
        "import sys, modelfetch.transfer; "
        "print(sorted(m for m in ('aiohttp', 'yarl', 'multidict') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# -- helpers --------------------------------------------------------------------------------------


class web_app:
    """An aiohttp app on a free loopback port, as an async context manager yielding its URL."""

    def __init__(self, routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]):
        self.app = web.Application()
        for path, handler in routes.items():
            self.app.router.add_get(path, handler)
        self.runner = web.AppRunner(self.app)

    async def __aenter__(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()
